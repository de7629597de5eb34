"""A structured layer's training forward rebuilds W·A_t in backward instead of keeping it
(core/fusion.structured_layer_train), and the squared-error loss keeps only its residual."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import denoiserep as dr
from denoiserep.core.fusion import Factors, structured_layer_train, structured_train_weight
from denoiserep.core.objective import score

LAYERS = {
    "linear": (lambda b: nn.Linear(6, 5, bias=b), (2, 3, 6), None),
    "conv1d": (lambda b: nn.Conv1d(6, 4, 3, stride=2, padding=1, dilation=2, bias=b), (2, 6, 9), 1),
    "conv2d": (
        lambda b: nn.Conv2d(6, 4, (3, 2), stride=(1, 2), padding=(1, 0), bias=b),
        (2, 6, 5, 6),
        2,
    ),
    "conv3d": (lambda b: nn.Conv3d(6, 3, 2, padding="valid", bias=b), (1, 6, 3, 4, 4), 3),
}


def _factors(rank: int | None, c: int = 6) -> Factors:
    g = torch.Generator().manual_seed(rank or 0)
    d = torch.randn(c, dtype=torch.float64, generator=g).requires_grad_()
    if rank is None:
        return Factors(d, None, None, 1)
    u = torch.randn(c, rank, dtype=torch.float64, generator=g).requires_grad_()
    v = torch.randn(c, rank, dtype=torch.float64, generator=g).requires_grad_()
    return Factors(d, u, v, 1)


def _conv_args(layer: nn.Module) -> tuple | None:
    if isinstance(layer, nn.Linear):
        return None
    padding = (0,) * len(layer.stride) if layer.padding == "valid" else layer.padding
    return (layer.stride, padding, layer.dilation)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("rank", [None, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_output_and_gradients_equal_the_kept_weight_product(name, rank, bias):
    make, shape, _ = LAYERS[name]
    layer = make(bias).double()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    f, k, s = _factors(rank), 0.3, 1.1
    inputs = [
        x,
        layer.weight,
        *([layer.bias] if bias else []),
        *(t for t in f[:3] if t is not None),
    ]
    got = structured_layer_train(x, layer.weight, layer.bias, f, k, s, _conv_args(layer))
    want = (
        layer._conv_forward(x, structured_train_weight(layer.weight, f, k, s), layer.bias)
        if not isinstance(layer, nn.Linear)
        else F.linear(x, structured_train_weight(layer.weight, f, k, s), layer.bias)
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(got)
    for a, b in zip(
        torch.autograd.grad(got, inputs, g), torch.autograd.grad(want, inputs, g), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(
        lambda *t: structured_layer_train(t[0], t[1], layer.bias, f, k, s, _conv_args(layer)),
        (x, layer.weight),
    )


def _saved(fn) -> list[torch.Tensor]:  # noqa: ANN001
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return saved


@pytest.mark.parametrize("name", ["linear", "conv2d"])
def test_training_forward_keeps_no_weight_sized_product(name):
    make, shape, _ = LAYERS[name]
    model = nn.Sequential(make(True))
    x = torch.randn(*shape)
    cfg = dr.DenoiseConfig(structure="lowrank", rank=2, timesteps=10)
    dr.convert(model, cfg, example_input=x)
    layer = dr.denoise_layers(model)["0"]
    dr.set_phase(model, "joint")
    model.train()
    layer.explicit_is_cheaper = lambda x: False  # the W·A_t path whatever the token count
    w = layer.base_layer.weight
    x.requires_grad_()  # as every layer's input past the first: W·A_t is needed for x's grad
    saved = _saved(lambda: model(x))
    weight_sized = [t for t in saved if t.shape in (w.shape, w.T.shape)]  # F.linear saves W'ᵀ
    assert weight_sized and all(t.data_ptr() == w.data_ptr() for t in weight_sized)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Conv2d(6, 4, 3, padding="same"),
        lambda: nn.Conv2d(6, 4, 3, padding=1, padding_mode="reflect"),
    ],
    ids=["same", "reflect"],
)
def test_paddings_it_does_not_take_keep_the_weight_product_path(make):
    model = nn.Sequential(make())
    x = torch.randn(2, 6, 5, 5)
    dr.convert(model, dr.DenoiseConfig(structure="lowrank", rank=2, timesteps=10), example_input=x)
    layer = dr.denoise_layers(model)["0"]
    with torch.no_grad():
        layer.U.normal_()
        layer.d.normal_()
    dr.set_phase(model, "joint")
    model.train()
    want = layer.base_layer(layer.train_denoise_input(x))
    torch.testing.assert_close(
        layer._base_forward(x, layer.train_weight()), want, rtol=1e-5, atol=1e-5
    )
    assert layer._recomputing_forward(x) is None


def test_autocast_runs_in_bfloat16_with_float32_gradients():
    layer = nn.Linear(6, 5)
    f = Factors(*(t.float().detach().requires_grad_() for t in _factors(2)[:3]), 1)
    x = torch.randn(4, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = structured_layer_train(x.bfloat16(), layer.weight, layer.bias, f, 0.3, 1.1)
        ref = F.linear(
            x, structured_train_weight(layer.weight, f, 0.3, 1.1, torch.bfloat16), layer.bias
        )
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and f.U.grad.dtype == torch.float32


def test_squared_error_keeps_only_the_residual():
    pred = torch.randn(7, 5, requires_grad=True)
    eps = torch.randn(7, 5)
    saved = _saved(lambda: score(pred, eps, "mse"))
    assert len(saved) == 1
    torch.testing.assert_close(score(pred, eps, "mse"), F.mse_loss(pred, eps))
    torch.testing.assert_close(score(pred, eps, "mse", dim=(1,)), ((pred - eps) ** 2).mean(1))


def test_grouped_input_is_refused():
    f = Factors(torch.zeros(6), None, None, 2)
    with pytest.raises(ValueError, match="ungrouped"):
        structured_layer_train(torch.randn(2, 6), torch.randn(4, 6), None, f, 0.1, 1.0)


def test_activation_checkpointing_gives_the_same_gradients():
    from torch.utils.checkpoint import checkpoint

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.c, self.b = (
                nn.Linear(8, 16),
                nn.Conv1d(16, 8, 3, padding=1),
                nn.Linear(8, 4),
            )

        def forward(self, x: torch.Tensor, ckpt: bool = False) -> torch.Tensor:
            def block(x: torch.Tensor) -> torch.Tensor:
                return self.c(torch.relu(self.a(x)).transpose(1, 2)).transpose(1, 2)

            return self.b(checkpoint(block, x, use_reentrant=False) if ckpt else block(x))

    x = torch.randn(4, 40, 8)
    model = Net()
    dr.convert(model, dr.DenoiseConfig(structure="lowrank", rank=3, timesteps=10), example_input=x)
    for layer in dr.denoise_layers(model).values():
        with torch.no_grad():
            layer.U.normal_()
            layer.d.normal_()
    dr.set_phase(model, "joint")
    model.train()
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        torch.manual_seed(1)
        (model(x, ckpt).square().mean() + dr.denoise_loss(model)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("rank", [None, 3])
def test_eager_regression_equals_autograd_and_keeps_parameter_sized_gradients(rank):
    from denoiserep.core.objective import predict_noise, regression_loss

    f = Factors(
        *(None if t is None else t.float().detach().requires_grad_() for t in _factors(rank)[:3]), 1
    )
    xt, eps = torch.randn(50, 6), torch.randn(50, 6)
    saved = _saved(lambda: regression_loss(xt, eps, f, "mse", False))
    assert sum(t.numel() for t in saved) == 6 * (1 + 2 * (rank or 0))  # not 2 x 50 x 6
    loss, dtype = regression_loss(xt, eps, f, "mse", False)
    want = score(predict_noise(xt, f, False), eps, "mse")
    assert dtype == torch.float32 and torch.equal(loss, want)
    params = [t for t in f[:3] if t is not None]
    for a, b in zip(
        torch.autograd.grad(3 * loss, params), torch.autograd.grad(3 * want, params), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
