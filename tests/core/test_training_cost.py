"""The training-time product W A_t and the noise-prediction loss's token budget.

* ``train_fused_weight`` is the export product (float64 ``fuse_weight``) in value and has
  autograd's gradients (gradcheck) for Linear, ConvNd, grouped and depthwise weights;
* an ungrouped weight of any kernel size takes one GEMM each way (three in all), and no
  product runs an in-place op (torch 2.11's inductor compiled those to zero gradients);
* layers that see few tokens compute W (A_t x) instead, with the same output and gradients;
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
from denoiserep.bench.flops import CountOps
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


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_ungrouped_conv_product_is_one_gemm_each_way(layout):
    # a k x k weight's W A_t is the GEMM of its (C_out * taps, C_in) rows with A_t: one addmm
    # forward and one per gradient, the scale and the added term inside; channels-last rows
    # are a view of the weight, so nothing else runs; contiguous ones take a copy in and out
    W = torch.randn(8, 6, 3, 3, requires_grad=True)
    D = torch.randn(6, 6, requires_grad=True)
    if layout == "channels_last":
        W = W.detach().to(memory_format=torch.channels_last).requires_grad_(True)
    with CountOps() as ops:
        out = train_fused_weight(W, D, 0.1, 1.2)
        out.backward(torch.randn_like(out))
    assert out.stride() == W.stride() and W.grad.stride() == W.stride()
    copies = {"clone": 5} if layout == "contiguous" else {}
    assert ops.counts == {"randn_like": 1, "addmm": 3, **copies}


@pytest.mark.parametrize(
    ("name", "layout"),
    [(n, "contiguous") for n in sorted(WEIGHTS)]
    + [(n, "channels_last") for n in sorted(WEIGHTS) if len(WEIGHTS[n][0]) in (4, 5)],
)
def test_train_product_runs_no_in_place_op(name, layout):
    """Under torch.compile, torch 2.11's inductor zeroed every gradient through an in-place
    op (a copy into ``empty_like`` included) inside the product's autograd function; the
    suite's torch compiles it correctly, so this checks the ops themselves, forward and
    backward, in float32 and in bfloat16."""
    shape, groups = WEIGHTS[name]
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(len(shape))
    for dtype in (torch.float32, torch.bfloat16):
        W = torch.randn(*shape)
        if layout == "channels_last":
            W = W.contiguous(memory_format=fmt)
        W.requires_grad_(True)
        D = torch.randn(shape[1] * groups, shape[1], requires_grad=True)
        with CountOps() as ops:
            out = train_fused_weight(W, D, 0.1, 1.2, groups, dtype)
            out.backward(torch.randn_like(out))
        in_place = sorted(op for op in ops.counts if op.endswith("_") and not op.startswith("_"))
        assert in_place == [], (name, layout, dtype)
        assert out.stride() == W.stride() and W.grad.stride() == W.stride()


@pytest.mark.parametrize("kind", ["transposed", "odd_size1_stride"])
def test_train_product_keeps_any_weight_strides(kind):
    # a transposed weight is a dense layout in another dim order: copied without an in-place
    # op; strides no dim order gives (a size-1 dim's stride, which torch ignores for layout
    # but which selects another conv kernel) take the in-place copy into empty_like
    if kind == "transposed":
        W = torch.randn(3, 6, 1, 4).permute(1, 0, 2, 3)
    else:
        W = torch.randn(72).as_strided((6, 3, 1, 4), (12, 4, 99, 1))
    W.requires_grad_(True)
    D = torch.randn(3, 3, dtype=torch.float64)
    with CountOps() as ops:
        out = train_fused_weight(W, D.float(), 0.1, 1.2)
    assert out.stride() == W.stride()
    assert ("copy_" in ops.counts) == (kind == "odd_size1_stride")
    expected = dr.fuse_weight(W.detach().double(), dr.reverse_step_matrix(D, 0.1, 1.2))
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


def _saved_bytes(fn, module: nn.Module) -> dict[str, int]:
    """Bytes of the tensors autograd saves for backward while ``fn`` runs: views of
    ``module``'s parameters (no new memory) and other tensors."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved = {"parameter": 0, "other": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        kind = "parameter" if t.untyped_storage().data_ptr() in params else "other"
        saved[kind] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return saved


@pytest.mark.parametrize("phase", ["backbone", "joint"])
@pytest.mark.parametrize("path", ["fused", "explicit"])
def test_training_forward_saves_no_product_or_reverse_matrix(phase, path):
    torch.manual_seed(0)
    # 32 tokens into 8 outputs: W A_t is cheaper; 2 tokens into 256 outputs: A_t x is
    base, tokens = (nn.Linear(64, 8), 32) if path == "fused" else (nn.Linear(64, 256), 2)
    layer = dr.DenoiseLayer(base, t=5, schedule=dr.DenoiseConfig().build_schedule())
    layer.phase = phase
    layer.D.requires_grad_(phase == "joint")
    x = torch.randn(tokens, 64)
    saved = _saved_bytes(lambda: layer.train()(x), layer)
    assert layer.explicit_is_cheaper(x) == (path == "explicit")
    assert ("A_t·x" in layer.precision) == (path == "explicit")
    # kept for backward: W and D themselves (no copies), the loss's (tokens, C) rows in joint
    # (x_t, eps, prediction) and, fused: x and W' (F.linear's backward), explicit: x (for D's
    # gradient) and A_t x; never the (C, C) A_t (16 KB here) or a product with W
    x_bytes = x.numel() * 4
    loss_rows = 3 * x_bytes if phase == "joint" else 0
    needed = x_bytes + (base.weight.numel() * 4 if path == "fused" else x_bytes)
    assert saved["other"] <= needed + loss_rows
    if path == "fused":
        assert saved["parameter"] > 0  # W and D themselves


LAYERS = {  # layer, input: each sees fewer tokens than C_out x k / g, so A_t x is cheaper
    "linear_head": (lambda: nn.Linear(16, 40), (3, 16)),
    "conv2d_3x3": (lambda: nn.Conv2d(6, 8, 3, padding=1), (1, 6, 2, 3)),
    "conv2d_strided": (lambda: nn.Conv2d(6, 12, 3, stride=2, padding=1), (1, 6, 3, 3)),
    "conv2d_grouped": (lambda: nn.Conv2d(6, 12, 3, padding=1, groups=3), (1, 6, 1, 2)),
    "conv1d_reflect": (lambda: nn.Conv1d(4, 8, 3, padding=1, padding_mode="reflect"), (2, 4, 2)),
    "conv3d": (lambda: nn.Conv3d(4, 8, 2), (1, 4, 2, 2, 2)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_explicit_training_path_equals_the_fused_one(name):
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = dr.DenoiseLayer(make().double(), t=7, schedule=dr.DenoiseConfig().build_schedule())
    layer.phase = "backbone"  # no noise draw: both paths see the same forward
    layer.D.requires_grad_(True)
    with torch.no_grad():
        layer.D.copy_(torch.randn_like(layer.D) * 30)  # k_t D ~ 0.1: a clear change
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert layer.explicit_is_cheaper(x)
    outputs = {}
    for path in ("explicit", "fused"):
        layer.train()
        y = layer(x) if path == "explicit" else layer._base_forward(x, layer.train_weight())
        params = [x, layer.D, layer.base_layer.weight, layer.base_layer.bias]
        outputs[path] = (y, *torch.autograd.grad(y.square().sum(), params))
    assert "A_t·x" in layer.precision
    for got, expected in zip(outputs["explicit"], outputs["fused"], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    baseline = layer.base_layer(x)
    assert rel_err(outputs["explicit"][0], baseline) > 1e-3  # the denoising did something


def test_cheaper_path_rule():
    schedule = dr.DenoiseConfig().build_schedule()
    head = dr.DenoiseLayer(nn.Linear(384, 1000), 1, schedule)
    assert head.explicit_is_cheaper(torch.randn(16, 384))  # 16 tokens < 1000 outputs
    assert not head.explicit_is_cheaper(torch.randn(2000, 384))
    conv = dr.DenoiseLayer(nn.Conv2d(512, 512, 3, padding=1), 1, schedule)
    assert conv.explicit_is_cheaper(torch.randn(16, 512, 7, 7))  # 784 < 512 x 9
    assert not conv.explicit_is_cheaper(torch.randn(16, 512, 56, 56))
    depthwise = dr.DenoiseLayer(nn.Conv2d(64, 64, 3, padding=1, groups=64), 1, schedule)
    # depthwise: W A_t costs 64 x 9 MACs, A_t x 64 per pixel
    assert depthwise.explicit_is_cheaper(torch.randn(1, 64, 2, 2))
    assert not depthwise.explicit_is_cheaper(torch.randn(1, 64, 4, 4))


def _converted_convnet(device: str = "cpu") -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 5),
    )
    x = torch.randn(4, 3, 6, 6, device=device)
    model = dr.convert(net.to(device), dr.DenoiseConfig(), x)
    randomize_denoisers(model, 0.1)
    dr.set_phase(model, "joint")
    return model.train(), x


def _grads(model: nn.Module, x: torch.Tensor, bf16: bool) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same noise draws in both precisions
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(x)
        loss = out.float().square().mean() + 0.1 * dr.denoise_loss(model)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def check_bf16_products(device: str) -> None:
    """W A_t in bf16 under autocast, D x_t in float32; bf16 grads close to float32 ones."""
    model, x = _converted_convnet(device)
    g32 = _grads(model, x, bf16=False)
    layers = dr.denoise_layers(model)
    assert {str(m.precision["D·x_t"]) for m in layers.values()} == {"torch.float32"}
    g16 = _grads(model, x, bf16=True)
    for m in layers.values():
        # D x_t in float32; W A_t (or, for the head, A_t x) in bf16
        assert m.precision.pop("D·x_t") == torch.float32
        assert list(m.precision.values()) == [torch.bfloat16]
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            w16 = m.train_weight()
        assert w16.dtype == torch.bfloat16
        # one bf16 rounding of W A_t (2^-8 relative), not more
        assert rel_err(w16.float(), m.train_weight().detach()) < 2**-8
    for name, grad in g16.items():
        assert grad.dtype == torch.float32, name
        # bf16 activations and products: a few bf16 roundings deep (measured: <= 1.3e-2)
        assert rel_err(grad, g32[name]) < 0.05, name


def test_bf16_products_match_float32_within_bf16_rounding():
    check_bf16_products("cpu")


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
