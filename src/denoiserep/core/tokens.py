"""The tokens a denoiser sees: a layer's input as a (tokens, C_in) matrix, and the uniform
subsample of them the noise-prediction loss scores (``loss_fraction``, ``loss_tokens``)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def token_count(n: int, fraction: float, cap: int) -> int:
    """How many of ``n`` tokens / pixels the loss uses: the ``fraction`` of them, at most
    ``cap`` (0: no cap), at least one."""
    m = n if fraction >= 1.0 else max(1, round(fraction * n))
    return min(m, cap) if cap else m


def all_tokens(x: torch.Tensor, c_in: int, linear: bool, weight_dim: int) -> torch.Tensor:
    """All of the input's tokens: a Linear's rows, a conv's channel vector at every pixel of
    every image (what D acts on). ``weight_dim``: the conv weight's dims (unbatched input)."""
    if linear:
        return x.reshape(-1, c_in)
    if x.dim() == weight_dim - 1:  # unbatched conv input
        x = x.unsqueeze(0)
    return x.movedim(1, -1).reshape(-1, c_in)


def sample_tokens(
    x: torch.Tensor,
    c_in: int,
    linear: bool,
    weight_dim: int,
    count: Callable[[int], int],
    randint: Callable[[int, int, torch.device], torch.Tensor],
) -> torch.Tensor:
    """``count(n)`` of the input's ``n`` tokens, drawn uniformly with replacement by
    ``randint(high, m, device)`` (all of them, in order, when ``count(n) == n``)."""
    if linear:
        flat = x.reshape(-1, c_in)
        m = count(flat.shape[0])
        return flat if m == flat.shape[0] else flat[randint(flat.shape[0], m, x.device)]
    if x.dim() == weight_dim - 1:  # unbatched conv input
        x = x.unsqueeze(0)
    flat = x.reshape(x.shape[0], c_in, -1)  # (N, C, pixels)
    n = flat.shape[0] * flat.shape[2]
    m = count(n)
    if m == n:
        return flat.transpose(1, 2).reshape(-1, c_in)
    # a uniform (image, pixel) pair is a uniform pixel of the batch: two draws, no div / mod
    image = randint(flat.shape[0], m, x.device)
    pixel = randint(flat.shape[2], m, x.device)
    return flat[image, :, pixel]
