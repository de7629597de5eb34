"""``DenoiseConfig.loss_dtype``: the noise regression's product D·x_t in the autocast dtype.

* the option is validated, round-trips through YAML and reaches every layer;
* under bf16 autocast, ``"autocast"`` runs D·x_t in bf16 (each layer records it), the losses
  and D's gradients stay float32 and are within bf16 rounding of the float32 product's, in the
  per-layer and the grouped (``batch_loss``) path; without autocast it changes nothing;
* trained with Adam, a denoiser ends where the float32 product's ends.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import denoiserep as dr
from tests.conftest import randomize_denoisers, rel_err


def test_loss_dtype_is_validated_and_round_trips():
    with pytest.raises(ValueError, match="loss_dtype must be one of .*'autocast'.*got 'bf16'"):
        dr.DenoiseConfig(loss_dtype="bf16")
    cfg = dr.DenoiseConfig(loss_dtype="autocast")
    assert dr.DenoiseConfig.from_yaml(cfg.to_yaml()) == cfg
    assert dr.DenoiseConfig().loss_dtype == "float32"
    model = dr.convert(nn.Sequential(nn.Linear(4, 4)), cfg, example_input=torch.randn(2, 4))
    assert {m.loss_dtype for m in dr.denoise_layers(model).values()} == {"autocast"}


def _model(loss_dtype: str, batch_loss: bool, device: str = "cpu") -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=4),  # a grouped D: an einsum, not a GEMM
        nn.Flatten(),
        nn.Linear(16 * 36, 32),
        nn.ReLU(),
        nn.Linear(32, 8),
    )
    cfg = dr.DenoiseConfig(loss_tokens=64, batch_loss=batch_loss, loss_dtype=loss_dtype)
    model = dr.convert(net, cfg, example_input=torch.randn(2, 3, 6, 6))
    randomize_denoisers(model, 0.1)
    dr.set_phase(model, "denoiser")
    return model.to(device).train()


def _losses_and_grads(model: nn.Module, x: torch.Tensor, bf16: bool) -> tuple[dict, dict]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same token samples and noise for every setting
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        model(x)
        losses = dr.denoise_losses(model)
        total = sum(losses.values())
    total.backward()
    grads = {name: m.D.grad for name, m in dr.denoise_layers(model).items()}
    return losses, grads


def check_autocast_product(device: str, batch_loss: bool) -> None:
    """D·x_t in bf16 under autocast with ``loss_dtype="autocast"``, close to float32; the same
    as float32 without autocast (also run on CUDA by tests/core/test_cuda.py)."""
    x = torch.randn(8, 3, 6, 6, device=device)
    ref, auto = _model("float32", batch_loss, device), _model("autocast", batch_loss, device)
    loss32, grad32 = _losses_and_grads(ref, x, bf16=True)
    loss16, grad16 = _losses_and_grads(auto, x, bf16=True)
    layers = dr.denoise_layers(auto)
    assert {n: str(m.precision["D·x_t"]) for n, m in layers.items()} == {
        "0": "torch.bfloat16",
        "2": "torch.bfloat16",
        "4": "torch.bfloat16",
        "6": "torch.bfloat16",
    }
    assert {m.precision["D·x_t"] for m in dr.denoise_layers(ref).values()} == {torch.float32}
    for name in loss32:
        assert loss16[name].dtype == torch.float32 and grad16[name].dtype == torch.float32
        # bf16 operands, float32 accumulation: measured <= 2.3e-3 (loss), <= 4.5e-3 (gradient)
        assert loss16[name].item() == pytest.approx(loss32[name].item(), rel=1e-2), name
        assert 0 < rel_err(grad16[name], grad32[name]) < 0.05, name
    # without autocast the setting changes nothing, bit for bit
    plain32, plain_grad32 = _losses_and_grads(ref, x, bf16=False)
    plain16, plain_grad16 = _losses_and_grads(auto, x, bf16=False)
    assert {m.precision["D·x_t"] for m in layers.values()} == {torch.float32}
    for name in plain32:
        assert torch.equal(plain16[name], plain32[name]), name
        assert torch.equal(plain_grad16[name], plain_grad32[name]), name


@pytest.mark.parametrize("batch_loss", [False, True])
def test_autocast_product_is_bf16_within_bf16_rounding_of_float32(batch_loss):
    check_autocast_product("cpu", batch_loss)


def test_adam_trained_denoiser_ends_where_the_float32_one_does():
    """A synthetic layer input with a mean and variances 9 .. 9e-3 has the optimum
    D* = b (a² M + b² I)⁻¹ (M its second moment); 300 Adam steps on 256 tokens under bf16
    autocast reach the same excess risk with either product."""
    c, schedule = 16, dr.NoiseSchedule(torch.tensor([0.05, 0.1], dtype=torch.float64))
    a2 = float(schedule.alphas_cumprod[1])
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(c, c, generator=g, dtype=torch.float64))
    chol = q @ torch.diag(torch.logspace(0, -1, c, dtype=torch.float64)) * 3
    mean = torch.randn(c, generator=g, dtype=torch.float64)
    m2 = chol @ chol.T + torch.outer(mean, mean)
    s = a2 * m2 + (1 - a2) * torch.eye(c, dtype=torch.float64)
    d_star = math.sqrt(1 - a2) * torch.linalg.inv(s)

    def excess(d: torch.Tensor) -> float:
        e = d.detach().double() - d_star
        return float(torch.trace(e @ s @ e.T) / torch.trace(d_star @ s @ d_star.T))

    risks = {}
    for loss_dtype in ("float32", "autocast"):
        torch.manual_seed(1)
        layer = dr.DenoiseLayer(nn.Linear(c, 4), 2, schedule, loss_dtype=loss_dtype)
        layer.phase = "denoiser"
        opt = torch.optim.Adam([layer.D], lr=1e-2)
        for _ in range(300):
            x = (torch.randn(256, c, dtype=torch.float64) @ chol.T + mean).float()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                layer(x)
            opt.zero_grad()
            layer.last_loss.backward()
            opt.step()
        risks[loss_dtype] = excess(layer.D)
    assert risks["float32"] < 0.2  # it learned: D = 0 has excess risk 1
    assert risks["autocast"] == pytest.approx(risks["float32"], abs=0.005), risks
