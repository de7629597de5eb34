"""Quantized features: each target layer's input rounded per sample, the same for every arm."""

from __future__ import annotations

import copy

import pytest
import torch

import denoiserep as dr
from denoiserep.robustness.feature_noise import (
    calibrate_ranges,
    feature_quantization,
    quantize_per_sample,
    quantize_static,
    target_layers,
)
from tests.conftest import randomize_denoisers
from tests.robustness.test_feature_noise import NAMES, Net, X, all_hooks


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


@pytest.mark.parametrize("bits", [2, 3, 8])
def test_each_sample_takes_at_most_2_to_the_bits_values_on_its_own_range(bits):
    x = torch.randn(5, 3, 7, 7, generator=torch.Generator().manual_seed(0)) * torch.tensor(
        [0.1, 1.0, 10.0, 3.0, 0.5]
    ).view(5, 1, 1, 1)
    q = quantize_per_sample(x, bits)
    assert q.shape == x.shape and q.dtype == x.dtype
    for i in range(5):
        lo, hi = x[i].min(), x[i].max()
        step = (hi - lo) / (2**bits - 1)
        assert q[i].unique().numel() <= 2**bits
        assert q[i].min() >= lo - 1e-5 and q[i].max() <= hi + 1e-5
        assert (q[i] - x[i]).abs().max() <= step / 2 + 1e-5  # rounding, not truncation
        assert torch.allclose(q[i].min(), lo) and torch.allclose(q[i].max(), hi)
    # per sample: a batch is quantized as each of its samples alone
    alone = torch.cat([quantize_per_sample(x[i : i + 1], bits) for i in range(5)])
    assert torch.equal(q, alone)


def test_error_shrinks_with_more_bits_and_constant_samples_stay_exact():
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    errors = [(quantize_per_sample(x, b) - x).abs().max().item() for b in (2, 4, 8, 16)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-4
    const = torch.full((2, 3, 4), 0.7)
    assert torch.equal(quantize_per_sample(const, 3), const)
    one_dim = torch.linspace(-1, 1, 9)
    assert quantize_per_sample(one_dim, 2).unique().numel() == 4
    half = x.to(torch.bfloat16)
    assert quantize_per_sample(half, 4).dtype == torch.bfloat16


def test_context_quantizes_every_target_input_and_cleans_up(net):
    clean = net(X)
    seen = {}
    with feature_quantization(net, 3) as record:
        assert all_hooks(net) == 3
        handle = net.head.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
        out = net(X)
        handle.remove()
    assert record.layers == NAMES and record.bits == 3
    assert record.calls == {name: 1 for name in NAMES}
    assert not torch.equal(out, clean)
    assert all(row.unique().numel() <= 8 for row in seen["x"])
    assert all_hooks(net) == 0 and torch.equal(net(X), clean)
    with pytest.raises(RuntimeError, match="boom"), feature_quantization(net, 4):
        raise RuntimeError("boom")
    assert all_hooks(net) == 0
    with feature_quantization(net, 16):
        torch.testing.assert_close(net(X), clean, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("bits", [1, 17, 4.0, True, "8"])
def test_bad_bits_are_refused(net, bits):
    with pytest.raises(ValueError, match="bits must be an integer in 2..16"):
        with feature_quantization(net, bits):
            pass


@pytest.mark.parametrize("static", [False, True])
def test_converted_model_quantizes_before_its_reverse_step_as_the_fused_one_does(net, static):
    converted = dr.convert(copy.deepcopy(net), dr.DenoiseConfig(targets="all"), example_input=X)
    randomize_denoisers(converted, strength=0.2)
    converted.eval()
    fused = dr.fuse(converted).eval()
    names = list(dr.denoise_layers(converted))
    assert all(isinstance(m, dr.DenoiseLayer) for m in target_layers(converted, names).values())
    ranges = None
    if static:  # both see the same inputs: the hook sits before the reverse step
        ranges = calibrate_ranges(converted, X, targets=names)
        fused_ranges = calibrate_ranges(fused, X, targets=names)
        for name in names:
            torch.testing.assert_close(torch.tensor(ranges[name]), torch.tensor(fused_ranges[name]))
    with torch.no_grad():
        with feature_quantization(converted, 4, targets=names, ranges=ranges):
            q_converted = converted(X)
        with feature_quantization(fused, 4, targets=names, ranges=ranges):
            q_fused = fused(X)
        clean = fused(X)
    torch.testing.assert_close(q_converted, q_fused, rtol=1e-5, atol=1e-5)
    assert (q_fused - clean).abs().max() > 100 * (q_converted - q_fused).abs().max()


def test_static_quantization_clips_to_its_range_and_rounds_on_a_fixed_grid():
    x = torch.randn(5, 3, 7, 7, generator=torch.Generator().manual_seed(2)) * 2
    lo, hi, bits = -1.5, 2.5, 3
    q = quantize_static(x, lo, hi, bits)
    step = (hi - lo) / 7
    assert q.shape == x.shape and q.dtype == x.dtype
    grid = lo + step * torch.arange(8)
    distance = (q.unsqueeze(-1) - grid).abs().amin(-1)  # every entry on the fixed grid
    assert distance.max() < 1e-6
    inside = (x >= lo) & (x <= hi)
    assert (q - x)[inside].abs().max() <= step / 2 + 1e-6
    assert torch.equal(q[x < lo], torch.full_like(q[x < lo], lo))
    assert torch.allclose(q[x > hi], torch.full_like(q[x > hi], hi))
    # one grid for the whole tensor: a batch is quantized as each sample alone
    assert torch.equal(
        q, torch.cat([quantize_static(x[i : i + 1], lo, hi, bits) for i in range(5)])
    )
    assert torch.equal(quantize_static(x, 0.5, 0.5, 4), torch.full_like(x, 0.5))
    with pytest.raises(ValueError, match="finite lo <= hi"):
        quantize_static(x, 1.0, -1.0, 4)
    with pytest.raises(ValueError, match="finite lo <= hi"):
        quantize_static(x, float("nan"), 1.0, 4)


def test_calibrated_ranges_are_each_inputs_min_and_max_over_all_batches(net):
    batches = [X[:2], X[2:4], X[4:]]
    net.train()
    seen = {}
    handles = [
        getattr(net, n).register_forward_pre_hook(lambda m, a, n=n: seen.__setitem__(n, a[0]))
        for n in NAMES
    ]
    net.eval()
    net(X)
    for h in handles:
        h.remove()
    net.train()
    ranges = calibrate_ranges(net, batches)
    assert net.training and all(m.training for m in net.modules())  # mode restored
    assert all_hooks(net) == 0
    assert list(ranges) == NAMES
    for name in NAMES:
        torch.testing.assert_close(
            torch.tensor(ranges[name]), torch.stack([seen[name].min(), seen[name].max()])
        )
    one = calibrate_ranges(net, batches, max_batches=1, targets=["head"])
    assert list(one) == ["head"] and one["head"][1] <= ranges["head"][1]


def test_static_context_uses_the_calibrated_ranges_and_refuses_missing_ones(net):
    ranges = calibrate_ranges(net, X)
    clean = net(X)
    seen = {}
    with feature_quantization(net, 2, ranges=ranges) as record:
        handle = net.head.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
        out = net(X)
        handle.remove()
    assert record.static and record.calls == {name: 1 for name in NAMES}
    assert not torch.equal(out, clean) and all_hooks(net) == 0
    lo, hi = ranges["head"]
    assert seen["x"].unique().numel() <= 4  # one grid across the whole batch
    # calibrated on this very batch: its extremes land on the grid's ends
    torch.testing.assert_close(seen["x"].min(), torch.tensor(lo))
    torch.testing.assert_close(seen["x"].max(), torch.tensor(hi))
    # static and dynamic differ: the grid is the layer's, not each sample's
    with feature_quantization(net, 2) as dynamic:
        assert not dynamic.static
        assert not torch.equal(net(X), out)
    with pytest.raises(KeyError, match="no calibrated range for grouped"):
        with feature_quantization(net, 4, ranges={"stem": (0.0, 1.0), "head": (0.0, 1.0)}):
            pass
    with pytest.raises(ValueError, match="never reached head"):
        calibrate_ranges(net, [], targets=["head"])
