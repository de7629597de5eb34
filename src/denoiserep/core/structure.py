"""The denoiser's parameters for each ``DenoiseConfig.structure`` (docs: DenoiseConfig).

``full``: one ``D`` (C_in, C_in/g), the paper's method. ``diagonal``: ``d`` (C_in,),
D = diag(d). ``lowrank``: ``d`` (C_in,), ``U`` and ``V`` (C_in, r); for a grouped conv rows
``m*cg .. (m+1)*cg`` are group m's, D_m = diag(d_m) + U_m V_mᵀ
(:class:`~denoiserep.core.fusion.Factors`). Every structure starts at D = 0, as ``full``:
d = 0, U = 0 and V small and random (so that U's gradient is not zero), drawn from a
generator seeded by the layer's name (the caller's random stream is left alone).
"""

from __future__ import annotations

import math
import warnings
import zlib

import torch
from torch import nn

STRUCTURE_PARAMETERS = {"full": ("D",), "diagonal": ("d",), "lowrank": ("d", "U", "V")}


def layer_rank(structure: str, rank: int | None, c_in: int, groups: int) -> int | None:
    """The rank a layer uses: ``rank``, capped at its C_in/groups (where diag(d) + U Vᵀ of
    that rank can already be any matrix, so the cap loses nothing); None unless lowrank."""
    if structure != "lowrank" or rank is None:
        return None
    return min(rank, c_in // groups)


def warn_capped_ranks(rank: int, widths: dict[str, int]) -> None:
    """One warning naming the layers (name -> C_in/groups) narrower than ``rank``."""
    narrow = [f"{name} ({w})" for name, w in widths.items() if w < rank]
    if narrow:
        warnings.warn(
            f"denoise.rank={rank} is capped at C_in/groups on {len(narrow)} layer(s), where "
            f"that rank already gives any D: {', '.join(narrow[:8])}"
            + (", ..." if len(narrow) > 8 else ""),
            stacklevel=4,
        )


def make_denoiser(
    name: str, structure: str, rank: int | None, c_in: int, groups: int, like: torch.Tensor
) -> dict[str, nn.Parameter]:
    """The structure's parameters (name -> Parameter) in ``like``'s dtype and device, D = 0
    (``rank`` as :func:`layer_rank` gives it)."""
    kw = {"dtype": like.dtype, "device": like.device}
    cg = c_in // groups
    if structure == "full":
        return {"D": nn.Parameter(torch.zeros(c_in, cg, **kw))}
    params = {"d": nn.Parameter(torch.zeros(c_in, **kw))}
    if structure == "lowrank":
        g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        v = torch.randn(c_in, rank, generator=g, dtype=torch.float64) / math.sqrt(cg)
        params["U"] = nn.Parameter(torch.zeros(c_in, rank, **kw))
        params["V"] = nn.Parameter(v.to(**kw))
    return params


def count_parameters(structure: str, rank: int | None, c_in: int, groups: int) -> int:
    """How many denoiser parameters a layer of ``c_in`` channels and ``groups`` groups has."""
    if structure == "full":
        return c_in * (c_in // groups)
    return c_in * (1 + (2 * rank if structure == "lowrank" else 0))


def randomize(layer: nn.Module, strength: float, generator: torch.Generator) -> None:
    """Random non-trivial denoiser parameters for ``layer`` (a DenoiseLayer): its reverse step
    moves the input by about ``strength``. ``full`` draws D as the bench always has."""
    c_in, groups, k = layer.in_channels, layer.groups, layer.strength
    cg = c_in // groups
    scale = strength / (k * math.sqrt(cg))

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    with torch.no_grad():
        if layer.structure == "full":
            layer.D.copy_(draw(c_in, cg) * scale)
            return
        layer.d.copy_(draw(c_in) * (strength / k))
        if layer.structure == "lowrank":
            layer.U.copy_(draw(c_in, layer.rank) * (strength / (k * math.sqrt(layer.rank))))
            layer.V.copy_(draw(c_in, layer.rank) / math.sqrt(cg))
