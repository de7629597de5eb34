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
        c, cg = layer.D.shape
        self.groups, self.width = c // cg, cg
        self.sum = torch.zeros(self.groups, cg, cg, dtype=torch.float64, device=layer.D.device)

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
        s_inv = torch.cholesky_inverse(torch.linalg.cholesky(s))
        layer.D.copy_((b * s_inv).reshape_as(layer.D).to(layer.D.dtype))
        c = layer.D.shape[0]
        min_loss = 1.0 - b * b * float(s_inv.diagonal(dim1=-2, dim2=-1).sum()) / c
        report[name] = {"tokens": acc.tokens, "min_loss": min_loss}
    return report
