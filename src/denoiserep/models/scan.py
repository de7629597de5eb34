"""Selective scan (the S6 recurrence of Mamba) in pure PyTorch.

For every channel ``d`` and state index ``n`` the scan runs the input-dependent linear recurrence

    h_t = exp(delta_t * A[d, n]) * h_{t-1} + delta_t * B_t[n] * u_t
    y_t = sum_n C_t[n] h_t + D[d] u_t

over the sequence axis, optionally gated by ``silu(z)``. Argument shapes follow mamba-ssm's
``selective_scan_fn``; on CUDA tensors the mamba-ssm kernel is used when that package is
importable. The pure path is a chunked parallel scan: a log-depth (Hillis-Steele) scan inside
chunks and a sequential carry across chunks. It only multiplies decays, never divides by them, so
large steps cannot overflow it, unlike closed forms built on ``exp(-cumsum(delta * A))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

try:  # the CUDA kernel exists only where mamba-ssm was built against a GPU toolchain
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _mamba_scan
except (ImportError, OSError):
    _mamba_scan = None

__all__ = ["selective_scan", "selective_scan_ref"]


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    chunk_size: int = 16,
) -> Tensor:
    """Selective scan with mamba-ssm's argument shapes; returns y of shape (b, d, l), u's dtype.

    Args:
        u, delta: (b, d, l) input and per-step time scale.
        A: (d, n) state matrix (diagonal per channel; negative for a decaying state).
        B, C: (b, n, l), or (b, g, n, l) with channel i using group i // (d // g).
        D: optional (d,) skip weight; z: optional (b, d, l) gate, output is multiplied by silu(z).
        delta_bias: optional (d,) added to delta before the optional softplus.
        chunk_size: sequence chunk length of the pure-PyTorch path (ignored by the CUDA kernel).
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if _mamba_scan is not None and u.is_cuda:
        return _mamba_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    delta_a, delta_bu, C, compute_dtype = _discretize(u, delta, A, B, C, delta_bias, delta_softplus)
    states = _LinearRecurrence.apply(delta_a, delta_bu, chunk_size)  # (b, g, d/g, l, n)
    y = (states * C.transpose(-1, -2).unsqueeze(2)).sum(-1).flatten(1, 2)
    return _finish(y, u, D, z, compute_dtype)


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """Reference selective scan: the plain sequential loop over time steps (slow; for tests)."""
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    delta_a, delta_bu, C, compute_dtype = _discretize(u, delta, A, B, C, delta_bias, delta_softplus)
    state = torch.zeros_like(delta_a[..., 0, :])  # (b, g, d/g, n)
    ys = []
    for t in range(u.shape[-1]):
        state = delta_a[..., t, :] * state + delta_bu[..., t, :]
        ys.append((state * C[:, :, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1).flatten(1, 2)
    return _finish(y, u, D, z, compute_dtype)


def _check_shapes(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
) -> None:
    """Raise ValueError naming the first argument whose shape does not fit u's (b, d, l)."""
    if u.dim() != 3:
        raise ValueError(f"u must have shape (b, d, l), got {tuple(u.shape)}")
    b, d, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must have shape ({d}, n), got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        grouped = t.dim() == 4 and t.shape[1] > 0 and d % t.shape[1] == 0
        if not (t.dim() == 3 or grouped) or t.shape[0] != b or t.shape[-2:] != (n, length):
            raise ValueError(
                f"{name} must have shape ({b}, {n}, {length}) or ({b}, g, {n}, {length}) with g "
                f"dividing {d}, got {tuple(t.shape)}"
            )
    for name, t, shape in (("D", D, (d,)), ("z", z, u.shape), ("delta_bias", delta_bias, (d,))):
        if t is not None and t.shape != shape:
            raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def _discretize(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    delta_bias: Tensor | None,
    delta_softplus: bool,
) -> tuple[Tensor, Tensor, Tensor, torch.dtype]:
    """Decays exp(delta A) and inputs delta B u, both (b, g, d/g, l, n); C as (b, g, n, l).

    Computation runs in at least float32 (as mamba-ssm does) so half inputs do not lose the state.
    """
    dtype = torch.promote_types(u.dtype, torch.float32)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    B, C = (t.unsqueeze(1) if t.dim() == 3 else t for t in (B, C))
    b, d, length = u.shape
    groups = B.shape[1]
    delta_g = delta.view(b, groups, d // groups, length, 1)
    delta_a = torch.exp(delta_g * A.view(groups, d // groups, 1, -1))
    delta_bu = (delta_g * u.view_as(delta_g)) * B.transpose(-1, -2).unsqueeze(2)
    return delta_a, delta_bu, C, dtype


class _LinearRecurrence(torch.autograd.Function):
    """All states of h_t = a_t * h_{t-1} + x_t (h_{-1} = 0) along dim -2 of (..., l, n) tensors.

    The backward pass is the same recurrence run backwards in time: the gradient g_t reaching
    x_t is grad_t + a_{t+1} g_{t+1}, and a_t receives g_t * h_{t-1}. Saving only a and h keeps
    memory at two state-sized tensors instead of every intermediate of the parallel scan.
    """

    @staticmethod
    def forward(ctx, a: Tensor, x: Tensor, chunk_size: int) -> Tensor:
        states = _chunked_scan(a, x, chunk_size)
        ctx.save_for_backward(a, states)
        ctx.chunk_size = chunk_size
        return states

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        a, states = ctx.saved_tensors
        a_next = F.pad(a[..., 1:, :], (0, 0, 0, 1))
        grad_x = _chunked_scan(a_next.flip(-2), grad.flip(-2), ctx.chunk_size).flip(-2)
        states_prev = F.pad(states[..., :-1, :], (0, 0, 1, 0))
        return grad_x * states_prev, grad_x, None


def _chunked_scan(a: Tensor, x: Tensor, chunk_size: int) -> Tensor:
    """Forward computation of :class:`_LinearRecurrence` (no autograd; new output tensor).

    The sequence is cut into equal chunks of at most ``chunk_size`` steps (padding with a = 1,
    x = 0, which leaves earlier states unchanged). Inside every chunk a Hillis-Steele scan composes
    the affine maps h -> a h + x in log2(chunk) parallel steps; afterwards each position holds the
    chunk-local state and the product of decays since the chunk start, so the state carried in
    from the previous chunk enters as ``local + decay * carry``, one chunk after the other.
    """
    length = a.shape[-2]
    num_chunks = math.ceil(length / chunk_size)
    chunk = math.ceil(length / num_chunks)
    pad = num_chunks * chunk - length
    a = F.pad(a, (0, 0, 0, pad), value=1.0).unflatten(-2, (num_chunks, chunk))
    x = F.pad(x, (0, 0, 0, pad)).unflatten(-2, (num_chunks, chunk))
    step = 1
    while step < chunk:
        x[..., step:, :] += a[..., step:, :] * x[..., :-step, :]
        a[..., step:, :] = a[..., step:, :] * a[..., :-step, :]
        step *= 2
    for c in range(1, num_chunks):
        x[..., c, :, :] += a[..., c, :, :] * x[..., c - 1, -1:, :]
    return x.flatten(-3, -2)[..., :length, :]


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, dtype: torch.dtype) -> Tensor:
    """Add the D skip, apply the silu(z) gate and cast back to u's dtype."""
    if D is not None:
        y = y + u.to(dtype) * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype)
