"""``DenoiseConfig.batch_loss``: the noise-prediction losses, scored in groups at ``denoise_loss``.

* with the same noise, each layer's loss and every gradient equal the per-layer path's, for
  Linear, 3x3, grouped and depthwise convs and each loss kind, in the denoiser and joint phases;
* one noise draw per group of layers with equal sampled-input shapes, not one per layer;
* one token-index draw per sample size in a step, shared by the layers, new in every step;
* the losses are computed once per forward; phases and eval mode that have none leave none;
* under bf16 autocast the regression stays float32; the option round-trips through YAML.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import denoiserep as dr
from tests.conftest import randomize_denoisers, rel_err


def net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),  # these four: one group (8 input channels)
        nn.Conv2d(8, 8, 1),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),  # grouped D (8, 4)
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise D (8, 1)
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.Linear(16, 5),  # same input width as the previous Linear
    )


@pytest.fixture
def fixed_noise(monkeypatch):
    """randn_like returns the same pattern for every (tokens, C) slice and counts its calls, so
    the per-layer and the grouped path see equal noise."""
    calls = []

    def fake(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        m, c = x.shape[-2:]
        pattern = torch.linspace(-3, 3, m * c, dtype=x.dtype).reshape(m, c).sin() * 1.7
        return pattern.expand_as(x).clone()

    monkeypatch.setattr(torch, "randn_like", fake)
    return calls


def converted(batch_loss: bool, loss: str = "mse", x: torch.Tensor | None = None) -> nn.Module:
    torch.manual_seed(0)
    cfg = dr.DenoiseConfig(loss=loss, loss_tokens=24, batch_loss=batch_loss, loss_weight=0.1)
    model = dr.convert(net(), cfg, torch.randn(2, 3, 6, 6) if x is None else x)
    randomize_denoisers(model, 0.1)
    if not batch_loss:  # share the token-index draws as batch_loss does: equal samples
        shared: dict = {}
        for layer in dr.denoise_layers(model).values():
            layer.shared_draws = shared
    return model


def step(model: nn.Module, phase: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    dr.set_phase(model, phase)
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)  # the token subsample draws the same indices in both paths
    out = model(x)
    losses = dr.denoise_losses(model)
    total = dr.denoise_loss(model)
    if phase == "joint":
        total = total + out.square().mean()
    total.backward()
    return losses


@pytest.mark.parametrize("loss", ["mse", "l1", "l1+l2"])
@pytest.mark.parametrize("phase", ["denoiser", "joint"])
def test_grouped_losses_and_gradients_equal_the_per_layer_ones(fixed_noise, loss, phase):
    x = torch.randn(4, 3, 6, 6)
    per_layer, grouped = converted(False, loss), converted(True, loss)
    expected, got = step(per_layer, phase, x), step(grouped, phase, x)
    assert got.keys() == expected.keys() and len(got) == 8
    for name, value in expected.items():
        assert got[name].item() == pytest.approx(value.item(), rel=1e-5), name
    grads = {n: p.grad for n, p in per_layer.named_parameters() if p.grad is not None}
    assert any(n.endswith(".D") for n in grads) and (phase == "joint") == (len(grads) > 8)
    for name, p in grouped.named_parameters():
        assert (p.grad is None) == (name not in grads), name
        if p.grad is not None:
            assert rel_err(p.grad, grads[name]) < 1e-5, name


def test_one_noise_draw_per_group(fixed_noise):
    x = torch.randn(4, 3, 6, 6)
    step(converted(False), "denoiser", x)
    assert len(fixed_noise) == 8  # one per layer
    fixed_noise.clear()
    step(converted(True), "denoiser", x)
    # (layers, tokens, C_in): the convs sample 24 of their pixels, the Linears see 4 tokens;
    # the four convs with 8 input channels share a draw whatever their groups and kernels
    assert sorted(fixed_noise) == sorted([(1, 24, 3), (4, 24, 8), (1, 4, 32), (2, 4, 16)])


def test_losses_are_scored_once_per_forward():
    model, x = converted(True), torch.randn(4, 3, 6, 6)
    dr.set_phase(model, "denoiser")
    model.train()
    model(x)
    layers = dr.denoise_layers(model).values()
    assert all(m.last_loss is None and m._pending is not None for m in layers)
    first = dr.denoise_losses(model)
    assert all(m._pending is None for m in layers)
    second = dr.denoise_losses(model)
    assert all(second[n] is first[n] for n in first)  # no second draw
    assert dr.denoise_loss(model).item() == pytest.approx(sum(v.item() for v in first.values()))
    model(x)  # a new forward replaces the unscored losses of the last one
    assert all(m.last_loss is None for m in layers)
    dr.set_phase(model, "backbone")
    model(x)
    assert dr.denoise_losses(model) == {} and dr.denoise_loss(model).item() == 0.0
    dr.set_phase(model, "joint")
    model.eval()
    model(x)
    assert dr.denoise_losses(model) == {}
    assert copy.deepcopy(model) is not None  # nothing pending blocks a copy


def test_pending_inputs_are_dropped_by_copies():
    model = converted(True)
    model.train()
    model(torch.randn(4, 3, 6, 6))
    clone = copy.deepcopy(model)
    assert all(m._pending is None for m in dr.denoise_layers(clone).values())
    assert len(dr.denoise_losses(model)) == 8


def test_bf16_autocast_keeps_the_regression_in_float32():
    model, x = converted(True), torch.randn(4, 3, 6, 6)
    dr.set_phase(model, "joint")
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
        losses = dr.denoise_losses(model)
    assert {v.dtype for v in losses.values()} == {torch.float32}
    layers = dr.denoise_layers(model).values()
    assert {m.precision["D·x_t"] for m in layers} == {torch.float32}
    dr.denoise_loss(model).backward()
    assert all(m.D.grad is not None and m.D.grad.abs().sum() > 0 for m in layers)


def test_batch_loss_reaches_layers_and_round_trips():
    cfg = dr.DenoiseConfig(batch_loss="true", loss_tokens=64)
    assert cfg.batch_loss is True
    assert dr.DenoiseConfig.from_yaml(cfg.to_yaml()) == cfg
    model = dr.convert(nn.Sequential(nn.Linear(4, 4)), cfg, torch.randn(2, 4))
    assert all(m.batch_loss for m in dr.denoise_layers(model).values())
    with pytest.raises(ValueError, match="batch_loss: expected true or false"):
        dr.DenoiseConfig(batch_loss="maybe")


def _count_randint(monkeypatch) -> list[tuple]:
    calls: list[tuple] = []
    real = torch.randint

    def counting(high, size, **kwargs):  # noqa: ANN001, ANN202
        calls.append((high, tuple(size)))
        return real(high, size, **kwargs)

    monkeypatch.setattr(torch, "randint", counting)
    return calls


def test_layers_share_one_index_draw_per_sample_size_and_step(monkeypatch):
    calls = _count_randint(monkeypatch)
    model, x = converted(True), torch.randn(4, 3, 6, 6)
    dr.set_phase(model, "denoiser")
    model.train()
    model(x)
    # six convs sample 24 of 4 x 36 pixels: one image draw and one pixel draw for all six;
    # the Linears see 4 tokens, fewer than 24: no draw
    assert sorted(calls) == [(4, (24,)), (36, (24,))]
    layers = list(dr.denoise_layers(model).values())
    draws = layers[0].shared_draws
    assert all(m.shared_draws is draws for m in layers) and len(draws) == 2
    first = {k: v.clone() for k, v in draws.items()}
    dr.denoise_loss(model)
    assert draws == {}  # released with the losses
    model(x)
    assert len(calls) == 4 and any(not torch.equal(first[k], draws[k]) for k in first)
    model(x)  # the last forward's losses were never scored: it draws anew, layer by layer
    assert len(calls) > 6
    assert copy.deepcopy(model) is not None


def test_only_batch_loss_shares_draws():
    model = dr.convert(net(), dr.DenoiseConfig(loss_tokens=24), torch.randn(2, 3, 6, 6))
    assert all(m.shared_draws is None for m in dr.denoise_layers(model).values())
    clone = copy.deepcopy(converted(True))
    layers = list(dr.denoise_layers(clone).values())
    assert all(m.shared_draws is layers[0].shared_draws is not None for m in layers)
