"""The training-time product W A_t and the noise-prediction loss's token budget.

* ``train_fused_weight`` is the export product (float64 ``fuse_weight``) in value and has
  autograd's gradients (gradcheck) for Linear, ConvNd, grouped and depthwise weights;
* a training forward keeps no A_t, no product and no cast copy alive for backward;
* under bfloat16 autocast W A_t runs in bfloat16 within bf16 rounding of the float32 path,
  while the noise regression D x_t stays float32, and each layer records both dtypes;
* ``loss_tokens`` caps the tokens / pixels per layer and step.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import denoiserep as dr
from denoiserep.core.fusion import train_fused_weight
from tests.conftest import randomize_denoisers, rel_err

WEIGHTS = {  # shape, groups
    "linear": ((5, 4), 1),
    "conv1d": ((6, 3, 5), 1),
    "conv2d_1x1": ((6, 4, 1, 1), 1),
    "conv2d_3x3": ((6, 4, 3, 3), 1),
    "conv2d_grouped": ((6, 2, 3, 3), 2),
    "conv2d_depthwise": ((4, 1, 3, 3), 4),
    "conv3d": ((3, 2, 2, 2, 2), 1),
}


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_train_product_is_the_export_product_with_exact_gradients(name):
    shape, groups = WEIGHTS[name]
    g = torch.Generator().manual_seed(0)
    W = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    D = torch.randn(shape[1] * groups, shape[1], generator=g, dtype=torch.float64)
    D.requires_grad_(True)
    k, s = 0.3, 1.2
    export = dr.fuse_weight(W.detach(), dr.reverse_step_matrix(D.detach(), k, s), groups)
    torch.testing.assert_close(train_fused_weight(W, D, k, s, groups), export, rtol=0, atol=1e-14)
    assert torch.autograd.gradcheck(lambda w, d: train_fused_weight(w, d, k, s, groups), (W, D))


def test_train_product_keeps_the_weights_memory_layout():
    W = torch.randn(6, 4, 3, 3).to(memory_format=torch.channels_last)
    out = train_fused_weight(W, torch.randn(4, 4), 0.1, 1.0)
    assert out.stride() == W.stride()


def _saved_bytes(fn) -> dict[str, int]:
    """Bytes of the tensors autograd saves for backward while ``fn`` runs, by kind."""
    saved: dict[str, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        kind = "parameter" if isinstance(t, nn.Parameter) else "other"
        saved[kind] = saved.get(kind, 0) + t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return saved


@pytest.mark.parametrize("phase", ["backbone", "joint"])
def test_training_forward_saves_no_product_or_reverse_matrix(phase):
    torch.manual_seed(0)
    base = nn.Linear(64, 8)
    layer = dr.DenoiseLayer(base, t=5, schedule=dr.DenoiseConfig().build_schedule())
    layer.phase = phase
    layer.D.requires_grad_(phase == "joint")
    x = torch.randn(2, 64)
    saved = _saved_bytes(lambda: layer.train()(x))
    # kept for backward: W and D themselves (no copies), the input x and W' (both needed by
    # F.linear's backward) and, in joint, the loss's (tokens, C) rows; never the (C, C) A_t
    # or the product W D, which would each add C * C floats
    fused = 8 * 64 * 4
    loss_rows = 3 * x.numel() * 4 if phase == "joint" else 0  # x_t, eps, prediction
    assert saved["other"] <= x.numel() * 4 + fused + loss_rows
    assert saved["parameter"] > 0


def _converted_convnet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 5),
    )
    x = torch.randn(4, 3, 6, 6)
    model = dr.convert(net, dr.DenoiseConfig(), x)
    randomize_denoisers(model, 0.1)
    dr.set_phase(model, "joint")
    return model.train(), x


def _grads(model: nn.Module, x: torch.Tensor, bf16: bool) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same noise draws in both precisions
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(x)
        loss = out.float().square().mean() + 0.1 * dr.denoise_loss(model)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_bf16_products_match_float32_within_bf16_rounding():
    model, x = _converted_convnet()
    g32 = _grads(model, x, bf16=False)
    layers = dr.denoise_layers(model)
    assert {str(m.precision["W·A_t"]) for m in layers.values()} == {"torch.float32"}
    g16 = _grads(model, x, bf16=True)
    for m in layers.values():
        assert m.precision == {"W·A_t": torch.bfloat16, "D·x_t": torch.float32}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            w16 = m.train_weight()
        assert w16.dtype == torch.bfloat16
        # one bf16 rounding of W A_t (2^-8 relative), not more
        assert rel_err(w16.float(), m.train_weight().detach()) < 2**-8
    for name, grad in g16.items():
        assert grad.dtype == torch.float32, name
        # bf16 activations and products: a few bf16 roundings deep (measured: <= 1.3e-2)
        assert rel_err(grad, g32[name]) < 0.05, name


def test_noise_regression_stays_float32_under_autocast():
    model, x = _converted_convnet()
    layer = next(iter(dr.denoise_layers(model).values()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    assert layer.last_loss.dtype == torch.float32
    torch.manual_seed(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_loss = layer.noise_prediction_loss(x)
    torch.manual_seed(2)
    assert bf16_loss.item() == layer.noise_prediction_loss(x).item()  # same draws, same value


@pytest.mark.parametrize(
    ("fraction", "tokens", "n", "expected"),
    [(1.0, 0, 40, 40), (1.0, 16, 40, 16), (0.25, 16, 40, 10), (0.5, 16, 40, 16), (1.0, 64, 40, 40)],
)
def test_loss_tokens_caps_the_sample(fraction, tokens, n, expected):
    base = nn.Linear(4, 3)
    schedule = dr.DenoiseConfig().build_schedule()
    layer = dr.DenoiseLayer(base, 3, schedule, loss_fraction=fraction, loss_tokens=tokens)
    assert layer.loss_token_count(n) == expected
    assert layer._tokens(torch.randn(n, 4)).shape == (expected, 4)
    conv = dr.DenoiseLayer(
        nn.Conv2d(4, 3, 1), 3, schedule, loss_fraction=fraction, loss_tokens=tokens
    )
    pixels = torch.randn(n // 4, 4, 2, 2)  # n pixel vectors
    assert conv._tokens(pixels).shape == (expected, 4)


def test_loss_tokens_reaches_layers_and_config_round_trip():
    cfg = dr.DenoiseConfig(loss_tokens="256")
    assert cfg.loss_tokens == 256
    assert dr.DenoiseConfig.from_yaml(cfg.to_yaml()) == cfg
    model = dr.convert(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), cfg, torch.randn(2, 4))
    assert {m.loss_tokens for m in dr.denoise_layers(model).values()} == {256}
    with pytest.raises(ValueError, match="loss_tokens must be >= 0"):
        dr.DenoiseConfig(loss_tokens=-1)


def test_token_budget_estimates_the_same_loss():
    # the loss is a mean over tokens: a capped sample is an unbiased estimate of it
    base = nn.Linear(8, 3)
    schedule = dr.DenoiseConfig().build_schedule()
    full = dr.DenoiseLayer(base, 20, schedule)
    capped = dr.DenoiseLayer(base, 20, schedule, loss_tokens=32)
    with torch.no_grad():
        full.D.copy_(torch.randn(8, 8) / math.sqrt(8))
        capped.D.copy_(full.D)
    x = torch.randn(4096, 8)
    torch.manual_seed(0)
    exact = torch.stack([full.noise_prediction_loss(x) for _ in range(20)]).mean()
    sampled = torch.stack([capped.noise_prediction_loss(x) for _ in range(2000)]).mean()
    assert sampled.item() == pytest.approx(exact.item(), rel=0.02)
