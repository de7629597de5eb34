"""The mechanism, measured: what each learned reverse step does to its layer's input.

For every target layer of a converted model (execution order, first executed layer first):

* the eigenvalues of the learned step ``k_t D`` (the amount of each eigen-direction the step
  removes before the 1 / sqrt(alpha_t) rescale). ``D`` is block-diagonal over the layer's groups,
  so the eigenvalues are those of the ``g`` blocks ``k_t D_m`` (``cg x cg`` each), concatenated;
  a depthwise layer's blocks are 1 x 1 and its eigenvalues are ``k_t`` times D's diagonal. A step
  that is the identity up to scale has all eigenvalues 0; eigenvalue 1 would remove a direction.
* on data, with ``x`` the layer's input (every token / pixel a C_in vector, collected through a
  forward pre-hook in eval mode) and ``A_t = (I - k_t D) / sqrt(alpha_t)`` the fused step:

  - ``relative_change = ||A_t x - x|| / ||x||`` (Frobenius norms over all tokens),
  - ``variance_removed = 1 - tr Cov(A_t x) / tr Cov(x)`` (covariance over tokens; negative when
    the step adds variance, as the 1 / sqrt(alpha_t) rescale alone does by beta_t / alpha_t),
  - ``denoiser_relative_change = ||k_t D x|| / ||x||`` and
    ``denoiser_variance_removed = 1 - tr Cov((I - k_t D) x) / tr Cov(x)``: the same without the
    rescale, i.e. what the learned denoiser alone changes.

Statistics are accumulated in float64 over any number of batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from denoiserep.util.forward import run_batches

from .convert import denoise_layers
from .diagnostics import layer_inputs
from .fusion import apply_channel_map
from .layer import DenoiseLayer


def step_eigenvalues(layer: DenoiseLayer) -> torch.Tensor:
    """Complex eigenvalues of ``k_t D``, block by block (groups), in float64: shape (C_in,)."""
    c_in, cg = layer.D.shape
    blocks = layer.D.detach().to("cpu", torch.float64).reshape(c_in // cg, cg, cg)
    return torch.linalg.eigvals(layer.strength * blocks).reshape(-1)


def alpha_of(layer: DenoiseLayer) -> float:
    """alpha_t = 1 - beta_t of the layer's timestep."""
    return 1.0 - float(layer.schedule.betas[layer.t - 1])


def layer_spectrum(layer: DenoiseLayer, keep_eigenvalues: bool = True) -> dict[str, Any]:
    """The data-free part of a layer's row: timestep, k_t and the eigenvalues of k_t D."""
    eig = step_eigenvalues(layer)
    real, imag = eig.real, eig.imag
    row: dict[str, Any] = {
        "name": layer.name,
        "t": int(layer.t),
        "k_t": float(layer.strength),
        "alpha_t": alpha_of(layer),
        "channels": int(layer.D.shape[0]),
        "groups": int(layer.D.shape[0] // layer.D.shape[1]),
        "eig_min": float(real.min()),
        "eig_max": float(real.max()),
        "eig_mean_real": float(real.mean()),
        "eig_abs_max": float(eig.abs().max()),
        "eig_imag_abs_max": float(imag.abs().max()),
    }
    if keep_eigenvalues:
        row["eig_real"] = real.tolist()
        row["eig_imag"] = imag.tolist()
    return row


class _Accumulator:
    """Running float64 sums for one layer's input statistics."""

    def __init__(self, layer: DenoiseLayer) -> None:
        self.layer = layer
        self.tokens = 0
        self.x_sum: torch.Tensor | None = None  # sum of x over tokens (C,)
        self.y_sum: torch.Tensor | None = None  # sum of A_t x
        self.x_sq = 0.0  # sum of ||x||^2
        self.y_sq = 0.0  # sum of ||A_t x||^2
        self.diff_sq = 0.0  # sum of ||A_t x - x||^2
        self.den_sq = 0.0  # sum of ||k_t D x||^2

    def add(self, x: torch.Tensor) -> None:
        layer = self.layer
        c = layer.D.shape[0]
        tokens = layer.input_tokens(x.detach()).to(torch.float64)
        D = layer.D.detach().to(tokens.device, torch.float64)
        kdx = layer.strength * apply_channel_map(tokens, D)
        y = (tokens - kdx) / math.sqrt(alpha_of(layer))
        if self.x_sum is None:
            self.x_sum = torch.zeros(c, dtype=torch.float64, device=tokens.device)
            self.y_sum = torch.zeros_like(self.x_sum)
        self.tokens += tokens.shape[0]
        self.x_sum += tokens.sum(0)
        self.y_sum += y.sum(0)
        self.x_sq += float((tokens * tokens).sum())
        self.y_sq += float((y * y).sum())
        self.diff_sq += float(((y - tokens) ** 2).sum())
        self.den_sq += float((kdx * kdx).sum())

    def stats(self) -> dict[str, Any]:
        if self.tokens == 0 or self.x_sum is None or self.y_sum is None:
            return dict.fromkeys(
                (
                    "variance_removed",
                    "relative_change",
                    "denoiser_variance_removed",
                    "denoiser_relative_change",
                ),
                None,
            ) | {"tokens": 0}
        n = self.tokens
        tr_x = self.x_sq / n - float((self.x_sum / n).square().sum())
        tr_y = self.y_sq / n - float((self.y_sum / n).square().sum())
        alpha = alpha_of(self.layer)

        def ratio(a: float, b: float) -> float | None:
            return a / b if b > 0 else None

        vr = ratio(tr_y, tr_x)
        return {
            "tokens": n,
            "variance_removed": None if vr is None else 1.0 - vr,
            "relative_change": _sqrt(ratio(self.diff_sq, self.x_sq)),
            "denoiser_variance_removed": None if vr is None else 1.0 - alpha * vr,
            "denoiser_relative_change": _sqrt(ratio(self.den_sq, self.x_sq)),
        }


def _sqrt(value: float | None) -> float | None:
    return None if value is None else math.sqrt(value)


def denoiser_spectrum(
    model: nn.Module,
    data: torch.Tensor | Iterable[Any] | None = None,
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    max_batches: int | None = None,
    keep_eigenvalues: bool = True,
) -> list[dict[str, Any]]:
    """One row per DenoiseRep layer of ``model``, in execution order (see the module docstring).

    ``data``: None (eigenvalues only; the data fields are None), one input batch (a tensor),
    or an iterable of batches such as a DataLoader (a tuple / list batch is read as
    ``(inputs, labels, ...)``). ``forward(model, batch)`` runs the model on a batch for models
    that take other inputs. The model runs in eval mode without gradients (modes restored).

    Each row: ``name``, ``depth`` (0 = first executed), ``t``, ``k_t``, ``alpha_t``,
    ``channels``, ``groups``, ``eig_min`` / ``eig_max`` / ``eig_mean_real`` (real parts of the
    eigenvalues of k_t D), ``eig_abs_max``, ``eig_imag_abs_max``, ``eig_real`` / ``eig_imag``
    (with ``keep_eigenvalues``), ``tokens``, ``variance_removed``, ``relative_change``,
    ``denoiser_variance_removed``, ``denoiser_relative_change``.
    """
    layers = denoise_layers(model)
    rows = []
    for depth, layer in enumerate(layers.values()):
        rows.append({"depth": depth} | layer_spectrum(layer, keep_eigenvalues))
    accumulators = {name: _Accumulator(layer) for name, layer in layers.items()}
    if data is not None:
        with layer_inputs(model, lambda name, x: accumulators[name].add(x)) as root:
            root.eval()
            run_batches(root, data, forward, max_batches)
    for row in rows:
        row.update(accumulators[row["name"]].stats())
    return rows
