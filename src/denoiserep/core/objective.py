"""The noise-prediction objective: D·x_t and its loss, per layer or for groups of layers.

:class:`~denoiserep.core.layer.DenoiseLayer` draws x_t = a·x_0 + b·eps from its input and
scores D·x_t against eps here; :func:`compute_pending_losses` scores the layers that left their
input pending (``batch_loss``, or a forward without gradients), as ``dr.denoise_loss`` does.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Protocol

import torch
import torch.nn.functional as F

from .fusion import Factors, apply_channel_map


class PendingLayer(Protocol):
    """What :func:`compute_pending_losses` reads and sets on a layer
    (:class:`~denoiserep.core.layer.DenoiseLayer` is one)."""

    denoiser: torch.Tensor | Factors
    loss: str
    loss_dtype: str
    last_loss: torch.Tensor | None
    precision: dict[str, torch.dtype]
    shared_draws: dict[tuple, torch.Tensor] | None
    noise_coefficients: tuple[float, float]

    @property
    def pending_input(self) -> torch.Tensor | None: ...

    def release_pending(self) -> None: ...

    def score_deferred(self) -> None: ...

    def in_autocast_dtype(self, device: torch.device) -> bool: ...


def score(
    pred: torch.Tensor, eps: torch.Tensor, kind: str, dim: tuple | None = None
) -> torch.Tensor:
    """The noise-prediction loss ``kind``: a mean over all entries, or over ``dim``. The squared
    error is (pred − eps)², whose backward keeps only the residual (``F.mse_loss`` keeps both
    of its inputs: one tensor of every layer's sampled tokens more)."""

    def mean(loss: torch.Tensor) -> torch.Tensor:
        return loss.mean() if dim is None else loss.mean(dim)

    if kind == "mse":
        return mean((pred - eps).square())
    if kind == "l1":
        return mean(F.l1_loss(pred, eps, reduction="none"))
    return mean(F.l1_loss(pred, eps, reduction="none")) + mean((pred - eps).square())


@functools.lru_cache(maxsize=256)
def _noise_coefficients(
    noise: tuple[tuple[float, float], ...], device: torch.device
) -> torch.Tensor:
    """(a, b) of each layer of a group as a ``(2, L, 1, 1)`` float32 tensor on ``device``, made
    once: a fresh host-to-GPU copy every step would wait for the GPU to catch up."""
    return torch.tensor(noise, dtype=torch.float32, device=device).T.reshape(2, -1, 1, 1)


def compute_pending_losses(layers: Iterable[PendingLayer]) -> None:
    """Score the inputs that the last forward of ``batch_loss`` layers left pending.

    Layers whose sampled inputs have equal shapes (and equal loss kinds and dtypes) form a
    group, scored together: one noise draw, one x_t and one loss reduction per group, with one
    D·x_t product per layer, instead of about ten small operators per layer (on a GPU, each one
    a kernel launch). Each layer's ``last_loss`` is its own mean, as in the per-layer path; only the
    draws differ. Groups are scored in the order of ``layers`` (execution order, as
    ``denoise_layers`` gives them), so a seed fixes the draws. The token-index draws the
    layers shared in that forward (:attr:`DenoiseLayer.shared_draws`) are released. A loss
    left by a forward without gradients (``DenoiseLayer.score_deferred``) is scored too.
    """
    groups: dict[tuple, list[PendingLayer]] = {}
    for layer in layers:
        layer.score_deferred()
        if layer.shared_draws:
            layer.shared_draws.clear()  # the next forward draws anew
        x0 = layer.pending_input
        if x0 is not None:
            key = (tuple(x0.shape), x0.device, layer.loss, layer.loss_dtype)
            groups.setdefault(key, []).append(layer)
    for (_, device, kind, _), group in groups.items():
        low = group[0].in_autocast_dtype(device)
        with torch.autocast(device.type, enabled=False):
            xt = torch.stack([layer.pending_input for layer in group]).float()  # a fresh copy
            for layer in group:
                layer.release_pending()  # freed as soon as stacked
            eps = torch.randn_like(xt)
            a, b = _noise_coefficients(tuple(layer.noise_coefficients for layer in group), device)
            xt.mul_(a).addcmul_(b, eps)  # x_t = a x_0 + b eps, in place: no group-sized temporaries
        # D·x_t per layer: stacking the D's for one bmm would copy them and their gradients
        maps = zip(xt.unbind(), group, strict=True)
        pred = torch.stack([predict_noise(x, m.denoiser, low) for x, m in maps])
        with torch.autocast(device.type, enabled=False):
            losses = score(pred.float(), eps, kind, dim=(1, 2))
        for layer, loss in zip(group, losses.unbind(), strict=True):
            layer.last_loss = loss
            layer.precision["D·x_t"] = pred.dtype


def predict_noise(xt: torch.Tensor, D: torch.Tensor | Factors, low: bool) -> torch.Tensor:
    """D·x_t on the last dimension of ``xt``: with ``low`` a GEMM in the current autocast
    dtype (called under autocast; float32 accumulation), else in float32 with autocast off.
    The result is in the dtype the product ran in. A structured D (:class:`Factors`) computes
    d ⊙ x_t + (x_t V) Uᵀ, never the dense matrix."""
    if isinstance(D, Factors):
        if low:
            dtype = torch.get_autocast_dtype(xt.device.type)
            with torch.autocast(xt.device.type, enabled=False):
                return D.to(dtype).apply(xt.to(dtype))
        with torch.autocast(xt.device.type, enabled=False):
            return D.to(torch.float32).apply(xt.float())
    if low:
        return apply_channel_map(xt, D)
    with torch.autocast(xt.device.type, enabled=False):
        return apply_channel_map(xt, D.float())


class _EagerFactorRegression(torch.autograd.Function):
    """mean((d ⊙ x_t + (x_t V) Uᵀ − eps)²), the same operations as :func:`predict_noise` and
    :func:`score`, with its gradients in d, U and V computed in forward: autograd then keeps
    C·(1 + 2r) numbers per layer instead of x_t and the residual (2 · tokens · C)."""

    @staticmethod
    def forward(ctx, d, U, V, xt, eps):  # noqa: ANN001, ANN205
        y = xt * d
        xv = None if U is None else xt @ V
        if U is not None:
            y = y + xv @ U.T
        residual = y - eps
        loss = residual.square().mean()
        g = residual.mul_(2.0 / residual.numel())  # d loss / d prediction
        grads = [(g * xt).sum(0)] + ([] if U is None else [g.T @ xv, xt.T @ (g @ U)])
        ctx.save_for_backward(*grads)
        return loss

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        grads = [grad * t for t in ctx.saved_tensors]
        return *grads, *[None] * (5 - len(grads))


def regression_loss(
    xt: torch.Tensor, eps: torch.Tensor, D: torch.Tensor | Factors, kind: str, low: bool
) -> tuple[torch.Tensor, torch.dtype]:
    """A layer's noise-prediction loss on (x_t, eps), and the dtype D·x_t ran in: a float32
    squared error of an ungrouped (or diagonal) structured D training on (tokens, C) inputs
    takes :class:`_EagerFactorRegression` (same values, less memory), anything else autograd."""
    eager = kind == "mse" and not low and xt.dim() == 2 and isinstance(D, Factors)
    if eager and (D.U is None or D.groups == 1) and torch.is_grad_enabled() and D.d.requires_grad:
        with torch.autocast(xt.device.type, enabled=False):
            f = D.to(torch.float32)
            return _EagerFactorRegression.apply(f.d, f.U, f.V, xt.float(), eps), torch.float32
    pred = predict_noise(xt, D, low)
    with torch.autocast(xt.device.type, enabled=False):
        return score(pred.float(), eps, kind), pred.dtype
