"""Feature-noise hooks: same noise for every arm, sigma relative to the input's std, clean exit."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import denoiserep as dr
from denoiserep.robustness.feature_noise import feature_noise, target_layers
from tests.conftest import randomize_denoisers


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.act = nn.GELU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.act(self.grouped(self.act(self.stem(x))))
        return self.head(self.pool(x).flatten(1))


NAMES = ["stem", "grouped", "head"]


def all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


X = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_sigma_zero_leaves_outputs_bit_for_bit_and_counts_calls(net):
    clean = net(X)
    with feature_noise(net, 0.0, seed=3) as record:
        out = net(X)
        net(X)
    assert torch.equal(out, clean)
    assert record.layers == NAMES
    assert record.calls == {name: 2 for name in NAMES}


def test_hooks_are_removed_afterwards_also_on_errors(net):
    clean = net(X)
    with feature_noise(net, 0.2):
        assert all_hooks(net) == 3
        assert not torch.equal(net(X), clean)
    assert all_hooks(net) == 0
    assert torch.equal(net(X), clean)
    with pytest.raises(RuntimeError, match="boom"), feature_noise(net, 0.2):
        raise RuntimeError("boom")
    assert all_hooks(net) == 0


def test_two_copies_see_identical_noise_call_by_call(net):
    other = copy.deepcopy(net)
    with feature_noise(net, 0.1, seed=5) as a, feature_noise(other, 0.1, seed=5):
        first, again = net(X), net(X)
        assert torch.equal(other(X), first)
        assert torch.equal(other(X), again)
    assert a.calls["stem"] == 2
    assert not torch.equal(first, again)  # the second call draws new noise
    with feature_noise(net, 0.1, seed=5):
        assert torch.equal(net(X), first)  # a new context starts over
    with feature_noise(net, 0.1, seed=6):
        assert not torch.equal(net(X), first)


def test_noise_std_is_sigma_times_the_input_std():
    layer = nn.Linear(64, 64, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(64))
    x = 3.0 + 2.5 * torch.randn(32, 10, 64, generator=torch.Generator().manual_seed(0))
    for sigma in (0.05, 0.5):
        with feature_noise(layer, sigma):
            noise = layer(x) - x
        assert noise.mean().abs().item() < 0.02 * sigma * x.std().item() + 1e-6
        assert noise.std().item() == pytest.approx(sigma * x.std(correction=0).item(), rel=0.02)


def test_default_targets_are_the_layers_convert_would_wrap(net):
    assert list(target_layers(net)) == NAMES
    with pytest.raises(KeyError, match="stem"):
        target_layers(net, ["nope"])
    with pytest.raises(ValueError, match="sigma"):
        with feature_noise(net, -0.1):
            pass
    with feature_noise(net, 0.1, targets=["head"]) as record:
        net(X)
    assert record.calls == {"head": 1}


def test_baseline_converted_and_fused_models_get_the_same_noise(net):
    """The converted model gets the noise at its DenoiseLayers, before the reverse step: with
    the same noise, converted and fused outputs agree; the baseline sees the same noise too."""
    converted = dr.convert(copy.deepcopy(net), dr.DenoiseConfig(targets="all"), example_input=X)
    randomize_denoisers(converted, strength=0.2)
    converted.eval()
    fused = dr.fuse(converted).eval()
    names = list(dr.denoise_layers(converted))
    assert sorted(names) == sorted(NAMES)
    layers = target_layers(converted, names)
    assert all(isinstance(m, dr.DenoiseLayer) for m in layers.values())
    assert list(target_layers(converted)) == names  # default: the DenoiseRep layers
    with torch.no_grad():
        with feature_noise(converted, 0.3, seed=2, targets=names):
            noisy_converted = converted(X)
        with feature_noise(fused, 0.3, seed=2, targets=names):
            noisy_fused = fused(X)
        with feature_noise(fused, 0.3, seed=9, targets=names):
            other_noise = fused(X)
        clean = fused(X)
    torch.testing.assert_close(noisy_converted, noisy_fused, rtol=1e-5, atol=1e-5)
    assert (noisy_fused - clean).abs().max() > 100 * (noisy_converted - noisy_fused).abs().max()
    assert not torch.allclose(other_noise, noisy_fused, atol=1e-4)

    # the first layer's input (the same clean input in both) gets the same noise in the
    # baseline and in the converted model: a pre-hook registered after the noise sees it
    seen = {}
    for arm, model in (("baseline", net), ("converted", converted)):
        with feature_noise(model, 0.3, seed=2, targets=names):
            first = target_layers(model, ["stem"])["stem"]
            handle = first.register_forward_pre_hook(
                lambda m, args, arm=arm: seen.__setitem__(arm, args[0] - X)
            )
            try:
                with torch.no_grad():
                    model(X)
            finally:
                handle.remove()
    assert seen["baseline"].abs().max() > 0.1
    assert torch.equal(seen["baseline"], seen["converted"])
