"""The mathematics of DenoiseRep's fusion, as pure tensor functions (docs/method.md).

A denoiser ``D`` of a layer with ``C_in`` input channels and ``g`` groups is stored compactly with
shape ``(C_in, C_in // g)``: rows ``m*cg .. (m+1)*cg`` hold group m's ``cg x cg`` block, and
entry ``[j, i]`` maps input channel i to predicted noise on channel j. Every matrix acting on
channels here (D and the reverse step A_t) uses that layout.

Two products of W and A_t: :func:`fuse_weight` (the export, float64, exact) and
:func:`train_fused_weight` (training: differentiable, in the autocast dtype, no saved copies).
"""

from __future__ import annotations

import math
from typing import NamedTuple

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
    cg = weight.shape[1]
    if A.shape != (cg * groups, cg):
        raise ValueError(f"A has shape {tuple(A.shape)}, expected {(cg * groups, cg)}")
    return _in_weight_layout(channel_product(weight, A, groups), weight)


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


def _rows(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` (C_out, C_in, *k) in ``dtype`` as the (C_out * taps, C_in) matrix W_r with one
    row per output channel and kernel tap, so that W A_t is the GEMM W_r A_t: a view of Linear,
    1x1 and channels-last weights in their own dtype, else one copy (layout and cast together)."""
    moved = weight.movedim(1, -1)
    if moved.dtype != dtype:  # the cast's copy lays the rows out
        moved = moved.to(dtype, memory_format=torch.contiguous_format)
    return moved.contiguous().reshape(-1, weight.shape[1])


def _unrows(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_rows`, in ``weight``'s layout (:func:`_in_weight_layout`)."""
    taps = weight.shape[2:]
    if math.prod(taps) == 1:
        out = rows.reshape(weight.shape)
    else:
        out = rows.reshape(weight.shape[0], *taps, weight.shape[1]).movedim(-1, 1)
    return _in_weight_layout(out, weight)


def _in_weight_layout(out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``out`` with exactly ``weight``'s strides (size-1 dims included), copied only if they
    differ: other strides select other convolution kernels. The copy is ``contiguous`` in the
    weight's dim order, not ``empty_like(...).copy_``: an in-place copy inside the training
    product is not safe under every torch.compile backend (tests/engine/test_compile.py checks
    the gradients; CHANGELOG.md has the history); only strides no dim order gives still copy
    in place."""
    if out.stride() == weight.stride():
        return out
    order = sorted(range(weight.dim()), key=lambda d: -weight.stride(d))  # outermost first
    copy = out.permute(order).contiguous().permute([order.index(d) for d in range(weight.dim())])
    if copy.stride() == weight.stride():
        return copy
    return torch.empty_like(weight, dtype=out.dtype).copy_(out)


def channel_product(weight: torch.Tensor, M: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """P[o, i, ...] = sum_j W[o, j, ...] M[j, i] within each group (contiguous, W's shape):
    any weight kind and groups; training's ungrouped weights take one ``addmm`` instead
    (_TrainFusedWeight)."""
    c_out, cg = weight.shape[:2]
    w = weight.reshape(groups, c_out // groups, cg, -1)
    return torch.einsum("gojk,gji->goik", w, M.reshape(groups, cg, cg)).reshape(weight.shape)


def _weight_gram(weight: torch.Tensor, grad: torch.Tensor, groups: int) -> torch.Tensor:
    """R[j, i] = sum_{o, k} W[o, j, k] G[o, i, k] within each group: the gradient of
    :func:`channel_product` with respect to M, in M's compact layout."""
    c_out, cg = weight.shape[:2]
    w = weight.reshape(groups, c_out // groups, cg, -1)
    g = grad.reshape(groups, c_out // groups, cg, -1)
    return torch.einsum("gojk,goik->gji", w, g).reshape(cg * groups, cg)


class _TrainFusedWeight(torch.autograd.Function):
    """W' = s W - s k (W D); backward from W and D alone (no A_t or product kept alive).

    An ungrouped weight of any kernel size is one GEMM on its (C_out * taps, C_in) rows
    (:func:`_rows`), the scale and the added term riding in it (``addmm``'s beta and alpha):
    for Linear, 1x1 and channels-last weights one kernel each way, else with a copy in and
    out. Grouped weights take the per-group einsum. No in-place updates (copies included) and
    no ``add(..., alpha=)``: both are not computed correctly by every torch.compile backend
    inside a custom autograd function (test_compile.py and test_training_cost.py check it;
    CHANGELOG.md has the history).
    """

    @staticmethod
    def forward(ctx, weight, D, k_t, inv_sqrt_alpha, groups, dtype):  # noqa: ANN001, ANN205
        ctx.save_for_backward(weight, D)
        ctx.coeffs = (k_t, inv_sqrt_alpha, groups)
        d, s = D.to(dtype), inv_sqrt_alpha
        if groups == 1:
            w2 = _rows(weight, dtype)
            return _unrows(torch.addmm(w2, w2, d, beta=s, alpha=-k_t * s), weight)
        w = weight.to(dtype)  # `w` first: the result takes its layout
        return _in_weight_layout((w - channel_product(w, d, groups) * k_t) * s, weight)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        weight, D = ctx.saved_tensors
        k_t, s, groups = ctx.coeffs
        d = D.to(grad.dtype)
        grad_w = grad_d = None
        if groups == 1:
            g2 = _rows(grad, grad.dtype)
            if ctx.needs_input_grad[0]:  # s G - s k (G D^T)
                grad_w = _unrows(torch.addmm(g2, g2, d.T, beta=s, alpha=-k_t * s), weight)
            if ctx.needs_input_grad[1]:  # -s k (W^T G); beta=0: d only gives the shape
                grad_d = torch.addmm(d, _rows(weight, grad.dtype).T, g2, beta=0, alpha=-k_t * s)
            return grad_w, grad_d, None, None, None, None
        w = weight.to(grad.dtype)
        if ctx.needs_input_grad[0]:  # s G - s k (G D^T), per group
            d_t = d.reshape(groups, -1, d.shape[1]).transpose(1, 2).reshape(d.shape)
            grad_w = (grad - channel_product(grad, d_t, groups) * k_t) * s
        if ctx.needs_input_grad[1]:  # -s k (W^T G), per group
            grad_d = _weight_gram(w, grad, groups) * (-k_t * s)
        return grad_w, grad_d, None, None, None, None


def train_fused_weight(
    weight: torch.Tensor,
    D: torch.Tensor,
    k_t: float,
    inv_sqrt_alpha: float,
    groups: int = 1,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """W A_t = (W - k_t W D) / sqrt(alpha_t) for training, differentiable in W and D.

    Computed in ``dtype`` (default: the weight's; bfloat16 under autocast, whose matmuls
    accumulate in float32) and returned in it, with the weight's strides. Backward computes
    grad_W = G A_t^T and grad_D = -k_t/sqrt(alpha_t) W^T G from the saved parameters, so
    autograd keeps no A_t, no cast copies and no intermediate product alive.
    """
    dtype = dtype or weight.dtype
    with torch.autocast(weight.device.type, enabled=False):
        return _TrainFusedWeight.apply(weight, D, float(k_t), float(inv_sqrt_alpha), groups, dtype)


# -- structured denoisers (DenoiseConfig.structure "diagonal" / "lowrank") ----------------------
class Factors(NamedTuple):
    """A structured denoiser: per channel group m, D_m = diag(d_m) + U_m V_mᵀ, where d_m, U_m and
    V_m are rows ``m*cg .. (m+1)*cg`` of ``d`` (C,), ``U`` and ``V`` (C, r); U = V = None for a
    diagonal D. Products with it cost O(C·r), never O(C²)."""

    d: torch.Tensor
    U: torch.Tensor | None
    V: torch.Tensor | None
    groups: int

    def to(self, dtype: torch.dtype) -> Factors:
        """The factors in ``dtype`` (differentiable casts)."""
        cast = [None if t is None else t.to(dtype) for t in (self.d, self.U, self.V)]
        return Factors(*cast, self.groups)

    def _grouped(self) -> tuple[torch.Tensor, torch.Tensor]:
        """U and V as (g, cg, r)."""
        g = self.groups
        return self.U.unflatten(0, (g, -1)), self.V.unflatten(0, (g, -1))

    def dense(self) -> torch.Tensor:
        """D in the compact grouped layout (C, C/g), materialised and differentiable."""
        g = self.groups
        D = torch.diag_embed(self.d.unflatten(0, (g, -1)))
        if self.U is not None:
            u, v = self._grouped()
            D = D + u @ v.transpose(1, 2)
        return D.flatten(0, 1)

    def low_rank_term(self, x: torch.Tensor) -> torch.Tensor:
        """(x V) Uᵀ per group, on the last dimension of ``x``."""
        if self.groups == 1:
            return (x @ self.V) @ self.U.T
        u, v = self._grouped()
        xg = x.unflatten(-1, (self.groups, -1))
        xv = torch.einsum("...gi,gir->...gr", xg, v)
        return torch.einsum("...gr,gjr->...gj", xv, u).flatten(-2)

    def apply(self, x: torch.Tensor, channel_dim: int = -1) -> torch.Tensor:
        """D·x = d ⊙ x + (x V) Uᵀ along ``channel_dim`` (the noise prediction)."""
        x = x.movedim(channel_dim, -1)
        y = x * self.d
        if self.U is not None:
            y = y + self.low_rank_term(x)
        return y.movedim(-1, channel_dim)

    def reverse_step(
        self, x: torch.Tensor, k_t: float, inv_sqrt_alpha: float, channel_dim: int = -1
    ) -> torch.Tensor:
        """A_t·x = s (x − k (d ⊙ x + (x V) Uᵀ)) along ``channel_dim``, s = 1/sqrt(alpha_t)."""
        x = x.movedim(channel_dim, -1)
        y = x * ((1.0 - k_t * self.d) * inv_sqrt_alpha)
        if self.U is not None:
            y = y - self.low_rank_term(x) * (k_t * inv_sqrt_alpha)
        return y.movedim(-1, channel_dim)


def _structured_rows(weight, d, U, V, k_t: float, s: float, dtype):  # noqa: ANN001, ANN202
    """W A_t on the ungrouped weight's (C_out·taps, C_in) rows, in ``dtype``."""
    w2 = _rows(weight, dtype)
    out = w2 * ((1.0 - k_t * d.to(dtype)) * s)
    if U is not None:
        out = torch.addmm(out, w2 @ U.to(dtype), V.to(dtype).T, alpha=-k_t * s)
    return out


def _structured_grads(g2, weight, d, U, V, k_t: float, s: float, needs):  # noqa: ANN001, ANN202
    """Gradients of :func:`_structured_rows` for its rows' gradient ``g2``: (W as rows, d, U, V),
    each None where ``needs`` (four flags) says no; the factors' in their own dtypes."""
    dt = g2.dtype
    w2 = _rows(weight, dt)
    u, v = (None, None) if U is None else (U.to(dt), V.to(dt))
    grad_w = grad_d = grad_u = grad_v = None
    if needs[0]:  # G diag(s (1 − k d)) − s k (G V) Uᵀ
        grad_w = g2 * ((1.0 - k_t * d.to(dt)) * s)
        if U is not None:
            grad_w = torch.addmm(grad_w, g2 @ v, u.T, alpha=-k_t * s)
    if needs[1]:  # −s k Σ_rows G ⊙ W
        grad_d = ((g2 * w2).sum(0) * (-k_t * s)).to(d.dtype)
    if U is not None and needs[2]:  # −s k Wᵀ (G V)
        grad_u = ((w2.T @ (g2 @ v)) * (-k_t * s)).to(U.dtype)
    if U is not None and needs[3]:  # −s k Gᵀ (W U)
        grad_v = ((g2.T @ (w2 @ u)) * (-k_t * s)).to(V.dtype)
    return grad_w, grad_d, grad_u, grad_v


class _StructuredFusedWeight(torch.autograd.Function):
    """W' = W·diag(s (1 − k d)) − s k (W U) Vᵀ for an ungrouped weight, on its (C_out·taps, C_in)
    rows; backward from W and the factors alone (W U recomputed), so that autograd keeps no
    product alive, as :class:`_TrainFusedWeight` does for a full D. No in-place updates."""

    @staticmethod
    def forward(ctx, weight, d, U, V, k_t, s, dtype):  # noqa: ANN001, ANN205
        ctx.save_for_backward(weight, d, U, V)
        ctx.coeffs = (k_t, s)
        return _unrows(_structured_rows(weight, d, U, V, k_t, s, dtype), weight)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        weight, d, U, V = ctx.saved_tensors
        g2 = _rows(grad, grad.dtype)
        needs = ctx.needs_input_grad[:4]
        grad_w, *rest = _structured_grads(g2, weight, d, U, V, *ctx.coeffs, needs)
        return None if grad_w is None else _unrows(grad_w, weight), *rest, None, None, None


class _StructuredLayerOp(torch.autograd.Function):
    """y = x (W A_t)ᵀ + b (a Linear) or the ungrouped convolution with weight W A_t, keeping
    only x, W and the factors: backward rebuilds W A_t (C_out·taps·C_in·r) instead of autograd
    keeping a weight-sized product per layer. ``conv``: None or (stride, padding, dilation)."""

    @staticmethod
    def forward(ctx, x, weight, bias, d, U, V, k_t, s, conv):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x, weight, d, U, V)
        ctx.setup = (k_t, s, conv, bias is not None)
        fused = _unrows(_structured_rows(weight, d, U, V, k_t, s, x.dtype), weight)
        if conv is None:
            return torch.nn.functional.linear(x, fused, bias)
        return torch.ops.aten.convolution(x, fused, bias, *conv, False, [0] * len(conv[0]), 1)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, weight, d, U, V = ctx.saved_tensors
        k_t, s, conv, has_bias = ctx.setup
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        fused = _unrows(_structured_rows(weight, d, U, V, k_t, s, x.dtype), weight)
        if conv is None:
            g = grad.reshape(-1, grad.shape[-1])
            grad_x = (grad @ fused) if need_x else None
            grad_fused = g.T @ x.reshape(-1, x.shape[-1])
            grad_b = g.sum(0) if need_b else None
        else:
            bias_sizes = [weight.shape[0]] if has_bias else None
            grad_x, grad_fused, grad_b = torch.ops.aten.convolution_backward(
                grad,
                x,
                fused,
                bias_sizes,
                *conv,
                False,
                [0] * len(conv[0]),
                1,
                [need_x, True, need_b and has_bias],
            )
        needs = (need_w, *ctx.needs_input_grad[3:6])
        g2 = _rows(grad_fused, grad_fused.dtype)
        grad_w, *rest = _structured_grads(g2, weight, d, U, V, k_t, s, needs)
        grad_w = None if grad_w is None else _unrows(grad_w, weight).to(weight.dtype)
        grad_x = None if grad_x is None else grad_x.to(x.dtype)
        return grad_x, grad_w, grad_b, *rest, None, None, None


def structured_layer_train(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    factors: Factors,
    k_t: float,
    inv_sqrt_alpha: float,
    conv: tuple | None = None,
) -> torch.Tensor:
    """The training output of a Linear (``conv=None``) or an ungrouped conv with zero padding
    (``conv=(stride, padding, dilation)``, tuples of ints) whose weight is W A_t, for a
    structured D: computed in ``x``'s dtype, differentiable in x, W, the bias and the factors,
    with W A_t rebuilt in backward instead of kept (one weight-sized tensor less per layer)."""
    if factors.groups != 1:
        raise ValueError("structured_layer_train takes ungrouped layers only")
    with torch.autocast(x.device.type, enabled=False):
        return _StructuredLayerOp.apply(
            x,
            weight,
            None if bias is None else bias.to(x.dtype),
            factors.d,
            factors.U,
            factors.V,
            float(k_t),
            float(inv_sqrt_alpha),
            conv,
        )


def structured_train_weight(
    weight: torch.Tensor,
    factors: Factors,
    k_t: float,
    inv_sqrt_alpha: float,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """W A_t = s (W − k (W·diag(d) + (W U) Vᵀ)) per group, differentiable in W and the
    factors, computed in ``dtype`` (default: the weight's) with the weight's strides: the
    structured counterpart of :func:`train_fused_weight`, costing C_out·taps·C_in·r instead of
    C_out·taps·C_in²."""
    dtype = dtype or weight.dtype
    s, k = float(inv_sqrt_alpha), float(k_t)
    with torch.autocast(weight.device.type, enabled=False):
        f = factors.to(dtype)
        scale = (1.0 - k * f.d) * s  # (C,)
        if f.groups == 1:
            return _StructuredFusedWeight.apply(
                weight, factors.d, factors.U, factors.V, k, s, dtype
            )
        g = f.groups
        c_out, cg = weight.shape[:2]
        w = weight.to(dtype).reshape(g, c_out // g, cg, -1)
        out = w * scale.reshape(g, 1, cg, 1)
        if f.U is not None:
            u, v = f._grouped()
            wu = torch.einsum("gojk,gjr->gork", w, u)
            out = out - torch.einsum("gork,gir->goik", wu, v) * (k * s)
        return _in_weight_layout(out.reshape(weight.shape), weight)
