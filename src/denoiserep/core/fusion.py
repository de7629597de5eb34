"""The mathematics of DenoiseRep's fusion, as pure tensor functions (docs/method.md).

A denoiser ``D`` of a layer with ``C_in`` input channels and ``g`` groups is stored compactly with
shape ``(C_in, C_in // g)``: rows ``m*cg .. (m+1)*cg`` hold group m's ``cg x cg`` block, and
entry ``[j, i]`` maps input channel i to predicted noise on channel j. Every matrix acting on
channels here (D and the reverse step A_t) uses that layout.
"""

from __future__ import annotations

import torch


def reverse_step_matrix(D: torch.Tensor, k_t: float, inv_sqrt_alpha: float) -> torch.Tensor:
    """A_t = (I - k_t D) / sqrt(alpha_t), in D's compact grouped layout.

    It is the posterior-mean step x' = (x - k_t D x) / sqrt(alpha_t) of DDPM with z = 0, where
    k_t = beta_t / sqrt(1 - abar_t).
    """
    c_in, cg = D.shape
    A = D * (-k_t * inv_sqrt_alpha)
    A.view(c_in // cg, cg, cg).diagonal(dim1=1, dim2=2).add_(inv_sqrt_alpha)
    return A


def fuse_weight(weight: torch.Tensor, A: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """W'[o, i, ...] = sum_j W[o, j, ...] A[j, i], within each group.

    ``weight`` is a Linear weight ``(C_out, C_in)`` or a ConvNd weight ``(C_out, C_in / g, *k)``;
    ``A`` is ``(C_in, C_in / g)``. Because A acts pointwise and linearly on channels, the layer
    with weight W' applied to x equals the original layer applied to A x, for any kernel size,
    stride, dilation and padding mode.
    """
    c_out, cg = weight.shape[:2]
    if A.shape != (cg * groups, cg):
        raise ValueError(f"A has shape {tuple(A.shape)}, expected {(cg * groups, cg)}")
    w = weight.reshape(groups, c_out // groups, cg, -1)
    a = A.reshape(groups, cg, cg)
    fused = torch.einsum("gojk,gji->goik", w, a).reshape(weight.shape)
    # exactly the weight's strides (size-1 dims included): other strides select other kernels
    out = torch.empty_like(weight, dtype=fused.dtype, memory_format=torch.preserve_format)
    return out.copy_(fused)


def apply_channel_map(x: torch.Tensor, M: torch.Tensor, channel_dim: int = -1) -> torch.Tensor:
    """y_j = sum_i M[j, i] x_i along ``channel_dim``, at every token / pixel, block-diagonally.

    ``M`` is in the compact grouped layout ``(C, C / g)``; used for the denoiser's noise
    prediction (M = D) and for the explicit reverse step (M = A_t).
    """
    c, cg = M.shape
    x = x.movedim(channel_dim, -1)
    if cg == c:
        y = torch.nn.functional.linear(x, M)
    else:
        g = c // cg
        y = torch.einsum("...gi,gji->...gj", x.unflatten(-1, (g, cg)), M.reshape(g, cg, cg))
        y = y.flatten(-2)
    return y.movedim(-1, channel_dim)
