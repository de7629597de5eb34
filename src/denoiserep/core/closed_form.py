"""The label-free phase in closed form: each D set to the minimiser of its expected loss.

For a layer whose input tokens x (C_in vectors: a Linear's rows, a conv's pixels) have the
uncentred second moment M = E[x xᵀ], the noise-prediction regression with x_t = a x + b ε,
ε ~ N(0, I) independent of x, has the expected (MSE) risk, per token,

    R(D) = tr(D S Dᵀ) − 2 b tr(D) + C,   S = a² M + b² I,

minimised by D* = b S⁻¹ (tests/core/test_objective.py derives it), with the minimum
R(D*) / C = 1 − b² tr(S⁻¹) / C as a mean over elements (what ``dr.denoise_loss`` averages).
``fit_denoisers`` computes M over the data in one pass, with the layers' inputs those of the
label-free phase (the baseline's: the forward runs the original weights), and sets D = D*,
block by block for grouped convs. It is what label-free training converges to when it
converges, at the cost of one forward pass over the data.

Structured denoisers (``DenoiseConfig.structure``) get the optimum of their family or of a
sub-family, per group (:func:`structured_optimum`): ``diagonal`` the per-coordinate optimum
d_j = b / S_jj; ``lowrank`` D = c·I + Σ_{i∈R} δ_i q_i q_iᵀ over eigenvectors q_i of S
(eigenvalues s_i), exact along the r directions R that reduce the loss most
(δ_i = b/s_i − c) and the best scalar c = b (n − r) / Σ_{j∉R} s_j on the rest, stored as
d = c·1, U = Q_R diag(δ), V = Q_R. Its risk is n − b² Σ_R 1/s_i − b² (n − r)² / Σ_{∉R} s_j;
for fixed c direction j gains (c s_j − b)² / s_j, so R is the k largest and r − k smallest
eigenvalues for some k: every k is tried and the best kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from denoiserep.util.forward import run_batches

from .convert import denoise_layers, unwrap
from .diagnostics import layer_inputs
from .layer import DenoiseLayer


class SecondMoment:
    """Running float64 sum of x xᵀ per channel group over the tokens of one layer's input."""

    def __init__(self, layer: DenoiseLayer) -> None:
        self.layer, self.tokens = layer, 0
        cg = layer.in_channels // layer.groups
        self.groups, self.width = layer.groups, cg
        device = layer.base_layer.weight.device
        self.sum = torch.zeros(self.groups, cg, cg, dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor) -> None:
        tokens = self.layer.input_tokens(x.detach()).to(torch.float64)
        tokens = tokens.reshape(-1, self.groups, self.width)
        self.sum += torch.einsum("ngi,ngj->gij", tokens, tokens)
        self.tokens += tokens.shape[0]


@torch.no_grad()
def fit_denoisers(
    model: nn.Module,
    data: torch.Tensor | Iterable[Any],
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    max_batches: int | None = None,
) -> dict[str, dict[str, float]]:
    """Set every denoiser's D to b (a² M + b² I)⁻¹ (see the module docstring); return, per
    layer, the tokens seen and the minimum loss reached (``min_loss``, a mean over elements).

    ``data``, ``forward`` and ``max_batches`` as :func:`diagnostics.run_batches` reads them
    (one batch or an iterable of batches; a custom forward for other models). Modes, phases and
    the random state are restored. Under ``torch.distributed`` the moments of all processes
    are summed, so every process sets the same D. Only the MSE loss has this optimum. Memory:
    one float64 sum the size of D per layer (twice D's float32 bytes; 1.1 GB for ViT-B/16).
    """
    layers = denoise_layers(model)
    kinds = {layer.loss for layer in layers.values()}
    if kinds != {"mse"}:
        raise ValueError(f"fit_denoisers: the closed form needs loss 'mse', got {sorted(kinds)}")
    root = unwrap(model)
    moments = {name: SecondMoment(layer) for name, layer in layers.items()}
    phases = {name: layer.phase for name, layer in layers.items()}
    devices = [d for d in {p.device for p in root.parameters()} if d.type == "cuda"]
    try:
        # the label-free phase's forward: original weights, BatchNorm / dropout in eval; it
        # also draws noise for the loss, which fork_rng keeps out of the caller's stream
        with (
            layer_inputs(root, lambda name, x: moments[name].add(x)),
            torch.random.fork_rng(devices=devices),
        ):
            root.eval()
            for layer in layers.values():
                layer.phase = "denoiser"
                layer.train()
            run_batches(root, data, forward, max_batches)
    finally:
        for name, layer in layers.items():
            layer.phase = phases[name]
            layer.clear_losses()
            if layer.shared_draws is not None:
                layer.shared_draws.clear()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for acc in moments.values():
            count = torch.tensor([float(acc.tokens)], dtype=torch.float64, device=acc.sum.device)
            torch.distributed.all_reduce(acc.sum)
            torch.distributed.all_reduce(count)
            acc.tokens = int(count.item())
    report = {}
    for name, layer in layers.items():
        acc = moments[name]
        if acc.tokens == 0:
            raise ValueError(f"fit_denoisers: layer {name} saw no input (is it on the path?)")
        a, b = layer.noise_coefficients
        eye = torch.eye(acc.width, dtype=torch.float64, device=acc.sum.device)
        s = a * a * acc.sum / acc.tokens + b * b * eye
        if layer.structure == "full":
            s_inv = torch.cholesky_inverse(torch.linalg.cholesky(s))
            layer.D.copy_((b * s_inv).reshape_as(layer.D).to(layer.D.dtype))
            c = layer.in_channels
            min_loss = 1.0 - b * b * float(s_inv.diagonal(dim1=-2, dim2=-1).sum()) / c
        else:
            rank = layer.rank if layer.structure == "lowrank" else 0
            factors, min_loss = structured_optimum(s, b, rank)
            for p, value in zip(layer.denoiser_parameters(), factors, strict=True):
                p.copy_(value.reshape_as(p).to(p.dtype))
        report[name] = {"tokens": acc.tokens, "min_loss": min_loss}
    return report


def structured_optimum(s: torch.Tensor, b: float, rank: int) -> tuple[list[torch.Tensor], float]:
    """The closed-form structured D for S (g, n, n) per group: ``rank`` 0 the diagonal
    optimum (factors ``[d]``), else the low-rank sub-family's optimum (``[d, U, V]``, rows
    group by group), and the risk it reaches as a mean over elements (module docstring).
    """
    g, n, _ = s.shape
    if rank == 0:
        diag = s.diagonal(dim1=-2, dim2=-1)
        risk = n - b * b * (1.0 / diag).sum(-1)
        return [(b / diag).reshape(-1)], float((risk / n).mean())
    evals, evecs = torch.linalg.eigh(s)  # ascending
    ds, us, vs, total = [], [], [], 0.0
    for m in range(g):
        risk, chosen, c = _best_directions(evals[m], b, rank)
        q = evecs[m][:, chosen]
        delta = b / evals[m][chosen] - c
        ds.append(torch.full((n,), c, dtype=s.dtype, device=s.device))
        us.append(q * delta)
        vs.append(q)
        total += risk / n
    return [torch.cat(ds), torch.cat(us), torch.cat(vs)], total / g


def _best_directions(evals: torch.Tensor, b: float, rank: int) -> tuple[float, list[int], float]:
    """(risk, R, c): the r eigen-directions (ascending ``evals``) whose exact correction lowers
    the risk most, the k largest and r − k smallest for the best k, and the scalar c."""
    n = evals.numel()
    inv = (1.0 / evals).tolist()
    vals = evals.tolist()
    best: tuple[float, list[int], float] | None = None
    for k in range(rank + 1):
        chosen = list(range(rank - k)) + list(range(n - k, n))
        rest = sum(vals) - sum(vals[i] for i in chosen)
        c = b * (n - rank) / rest if n > rank else 0.0
        risk = n - b * b * sum(inv[i] for i in chosen) - (c * b * (n - rank))
        if best is None or risk < best[0]:
            best = (risk, chosen, c)
    assert best is not None
    return best
