"""Activation checkpointing (torch.utils.checkpoint, as timm's and transformers' gradient
checkpointing use it) must train D as an ordinary step does.

A reentrant checkpoint runs the block under ``no_grad`` and recomputes it in backward; a
noise-prediction loss scored in that first forward would never reach D (before the fix, the
denoisers inside the block silently got no gradient from their loss). A non-reentrant
checkpoint replays the block in backward, which must not overwrite the step's losses.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import denoiserep as dr
from tests.conftest import randomize_denoisers


class Checkpointed(nn.Module):
    """Runs ``inner`` under torch.utils.checkpoint in training (``reentrant`` None: plainly)."""

    def __init__(self, inner: nn.Module, reentrant: bool | None) -> None:
        super().__init__()
        self.inner = inner
        self.reentrant = reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reentrant is None or not self.training:
            return self.inner(x)
        return checkpoint(self.inner, x, use_reentrant=self.reentrant)


def _model(reentrant: bool | None, phase: str, batch_loss: bool, device: str = "cpu") -> nn.Module:
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8), nn.GELU())
    model = nn.Sequential(nn.Linear(6, 8), Checkpointed(block, reentrant), nn.Linear(8, 3))
    config = dr.DenoiseConfig(batch_loss=batch_loss)
    dr.convert(model, config, example_input=torch.randn(2, 6))
    randomize_denoisers(model, 0.05)
    dr.set_phase(model, phase)
    return model.to(device).train()


def _step(
    model: nn.Module, phase: str, bf16: bool = False
) -> tuple[dict[str, torch.Tensor], float, float]:
    """One step (under bf16 autocast with ``bf16``); the D gradients, the loss before backward
    and the loss read after it."""
    device = next(model.parameters()).device
    torch.manual_seed(1)
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1])
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        task = nn.functional.cross_entropy(model(x.to(device)), y.to(device))
        ploss = dr.denoise_loss(model)
    ((task if phase == "joint" else 0) + ploss).backward(retain_graph=True)
    grads = {n: layer.D.grad for n, layer in dr.denoise_layers(model).items()}
    return grads, ploss.item(), dr.denoise_loss(model).item()


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
@pytest.mark.parametrize("phase", ["denoiser", "joint"])
@pytest.mark.parametrize("reentrant", [True, False])
@pytest.mark.parametrize("batch_loss", [True, False])
def test_checkpointed_blocks_train_their_denoisers(reentrant, phase, batch_loss):
    reference, ref_loss, _ = _step(_model(None, phase, batch_loss), phase)
    model = _model(reentrant, phase, batch_loss)
    grads, loss, after = _step(model, phase)
    assert after == loss  # the recomputation in backward keeps the step's losses
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), grads
    # the same noise draws as the plain step: the same loss and gradients
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(g, reference[name], rtol=1e-5, atol=1e-7)


def check_bf16_checkpointed_step(device: str, batch_loss: bool) -> None:
    """Under bf16 autocast (``loss_dtype="autocast"``: D·x_t in bf16 too) a re-entrant
    checkpointed joint step gives the plain step's loss and D gradients: the deferred loss is
    scored in the dtype the forward ran in. Run on CUDA by ``tests/core/test_cuda.py``."""
    results = []
    for reentrant in (None, True):
        model = _model(reentrant, "joint", batch_loss, device)
        for layer in dr.denoise_layers(model).values():
            layer.loss_dtype = "autocast"
        results.append(_step(model, "joint", bf16=True))
        layers = dr.denoise_layers(model).values()
        assert {m.precision["D·x_t"] for m in layers} == {torch.bfloat16}
    (reference, ref_loss, _), (grads, loss, after) = results
    assert after == loss and math.isfinite(loss)
    assert loss == pytest.approx(ref_loss, rel=1e-3)
    for name, g in grads.items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(g, reference[name], rtol=2e-2, atol=1e-4)


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
@pytest.mark.parametrize("batch_loss", [True, False])
def test_bf16_checkpointed_step(batch_loss):
    check_bf16_checkpointed_step("cpu", batch_loss)


def test_a_no_grad_training_forward_leaves_a_trainable_loss():
    """Under no_grad with D trainable the loss is scored when read, with gradients; with D
    frozen it is scored at once, without."""
    model = _model(None, "denoiser", batch_loss=False)
    with torch.no_grad():
        model(torch.randn(4, 6))
    loss = dr.denoise_loss(model)
    assert loss.requires_grad
    loss.backward()
    assert all(layer.D.grad is not None for layer in dr.denoise_layers(model).values())

    for layer in dr.denoise_layers(model).values():
        layer.D.requires_grad_(False)
    with torch.no_grad():
        model(torch.randn(4, 6))
    assert all(layer._deferred is None for layer in dr.denoise_layers(model).values())
    assert not dr.denoise_loss(model).requires_grad


@pytest.mark.parametrize("loss_dtype", ["float32", "autocast"])
def test_a_deferred_loss_keeps_the_draws_and_the_autocast_dtype(loss_dtype):
    """Scored after the forward (and outside autocast), the deferred loss equals the one
    scored in the forward: the same draws, D·x_t in the dtype autocast gave it then."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 3))
    dr.convert(model, dr.DenoiseConfig(loss_dtype=loss_dtype), example_input=torch.randn(2, 6))
    randomize_denoisers(model, 0.05)
    dr.set_phase(model, "denoiser")
    x = torch.randn(5, 6)
    values, precisions = [], []
    for grad in (True, False):
        torch.manual_seed(1)
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)
        values.append(dr.denoise_loss(model))
        precisions.append([m.precision["D·x_t"] for m in dr.denoise_layers(model).values()])
    assert values[1].requires_grad
    assert values[1].item() == values[0].item()
    low = torch.bfloat16 if loss_dtype == "autocast" else torch.float32
    assert precisions[0] == precisions[1] == [low, low]
