"""Shared test helpers: an independent reference for the DenoiseRep reverse step."""

from __future__ import annotations

import contextlib
import math
import os

import pytest
import torch
from torch import nn


def reference_reverse_matrix(layer, dtype=torch.float64) -> torch.Tensor:
    """Dense A_t = (I - k_t D) / sqrt(alpha_t), built from docs/method.md directly."""
    betas = layer.schedule.betas.to("cpu", torch.float64)
    t = layer.t
    beta = betas[t - 1].item()
    abar = torch.prod(1 - betas[:t]).item()
    k = beta / math.sqrt(1 - abar)
    c_in, cg = layer.D.shape
    D = layer.D.detach().to("cpu", torch.float64)
    blocks = [D[m * cg : (m + 1) * cg] for m in range(c_in // cg)]
    D = torch.block_diag(*blocks)
    return ((torch.eye(c_in, dtype=torch.float64) - k * D) / math.sqrt(1 - beta)).to(dtype)


def add_reference_hooks(original: nn.Module, converted: nn.Module) -> list:
    """Pre-hooks on the original model's target layers that apply x -> A_t x on the channel dim."""
    import denoiserep as dr

    modules = dict(original.named_modules())
    handles = []
    for name, layer in dr.denoise_layers(converted).items():
        A = reference_reverse_matrix(layer)
        channel_dim = -1 if isinstance(modules[name], nn.Linear) else 1

        def hook(module, args, A=A, channel_dim=channel_dim):
            (x,) = args
            A = A.to(x.device, x.dtype)
            y = torch.einsum("ji,...i->...j", A, x.movedim(channel_dim, -1))
            return (y.movedim(-1, channel_dim),)

        handles.append(modules[name].register_forward_pre_hook(hook))
    return handles


@contextlib.contextmanager
def reference_step(original: nn.Module, converted: nn.Module):
    """Within the block, ``original`` applies the explicit reverse step of ``converted``'s
    denoisers before each target layer (:func:`add_reference_hooks`); the hooks go after."""
    handles = add_reference_hooks(original, converted)
    try:
        yield original
    finally:
        for handle in handles:
            handle.remove()


def randomize_denoisers(model: nn.Module, strength: float = 0.1, seed: int = 0) -> None:
    """Non-trivial denoisers: each reverse step moves its input by about ``strength``."""
    import denoiserep as dr

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in dr.denoise_layers(model).values():
            c_in, cg = layer.D.shape
            noise = torch.randn(c_in, cg, generator=g, dtype=torch.float64)
            layer.D.copy_(noise * strength / (layer.strength * math.sqrt(cg)))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per xdist worker: two workers with two threads each on two cores run torch
    # CPU ops many times slower (oversubscription)
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def check_fused_against_reference(original, converted, fused, x, tol: float) -> dict:
    """The exactness check every architecture's test makes: with its denoisers randomised,
    ``fused`` (a plain model of ``original``'s class, same keys and parameter count) equals
    ``original`` run with the explicit reverse step before each target layer, to ``tol``
    relative, and the denoisers change the output clearly. Returns the outputs (``baseline``,
    ``reference``, ``fused``, ``converted``: the converted model in eval mode)."""
    with torch.no_grad():
        baseline = original(x)
        with reference_step(original, converted):
            reference = original(x)
        out_fused = fused(x)
        out_converted = converted.eval()(x)
    assert type(fused) is type(original)
    assert rel_err(reference, baseline) > 1e-2, "denoisers must change the output clearly"
    assert rel_err(out_fused, reference) < tol
    assert fused.state_dict().keys() == original.state_dict().keys()
    count = sum(p.numel() for p in original.parameters())
    assert sum(p.numel() for p in fused.parameters()) == count
    outputs = {"baseline": baseline, "reference": reference}
    return outputs | {"fused": out_fused, "converted": out_converted}
