"""VMamba backbone: cross-scan helpers, SS2D geometry, timm interface, one call per layer."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import timm
import torch
from torch import nn

import denoiserep as dr
from denoiserep.models.vmamba import SS2D, VMamba, cross_merge, cross_scan
from tests.conftest import check_fused_against_reference, randomize_denoisers, rel_err


def micro(**kwargs) -> VMamba:
    return timm.create_model("vmamba_micro", num_classes=10, in_chans=1, img_size=28, **kwargs)


def test_cross_scan_orders_a_grid_in_four_directions():
    grid = torch.arange(6.0).view(1, 2, 3, 1)  # [[0, 1, 2], [3, 4, 5]]
    seqs = cross_scan(grid)[0, :, :, 0]
    expected = [
        [0, 1, 2, 3, 4, 5],  # row-major
        [0, 3, 1, 4, 2, 5],  # column-major
        [5, 4, 3, 2, 1, 0],  # row-major reversed
        [5, 2, 4, 1, 3, 0],  # column-major reversed
    ]
    assert seqs.tolist() == expected


def test_cross_merge_puts_every_direction_back_in_grid_order():
    grid = torch.randn(2, 3, 5, 4)
    seqs = cross_scan(grid)
    for k in range(4):
        only_k = torch.zeros_like(seqs)
        only_k[:, k] = seqs[:, k]
        torch.testing.assert_close(cross_merge(only_k, 3, 5), grid, rtol=0, atol=0)
    torch.testing.assert_close(cross_merge(seqs, 3, 5), 4 * grid)


def test_cross_merge_rejects_wrong_length():
    with pytest.raises(ValueError, match=r"\(b, 4, 15, c\)"):
        cross_merge(torch.zeros(1, 4, 14, 2), 3, 5)


def _permuted(op: SS2D, perm: list[int], kernel_map) -> SS2D:
    """Copy of ``op`` whose direction k uses the parameters of ``op``'s direction perm[k]."""
    new = copy.deepcopy(op)
    n = op.d_state
    with torch.no_grad():
        new.conv2d.weight.copy_(kernel_map(op.conv2d.weight))
        for k, j in enumerate(perm):
            new.x_proj[k].weight.copy_(op.x_proj[j].weight)
            new.dt_proj[k].weight.copy_(op.dt_proj[j].weight)
        new.A_logs.copy_(op.A_logs.view(4, -1, n)[perm].flatten(0, 1))
        new.Ds.copy_(op.Ds.view(4, -1)[perm].flatten())
        new.dt_bias.copy_(op.dt_bias[perm])
    return new


@pytest.mark.parametrize(
    "perm,grid_map,kernel_map",
    [
        # transposing the grid swaps row- and column-major scans
        ([1, 0, 3, 2], lambda x: x.transpose(1, 2), lambda w: w.transpose(-1, -2)),
        # rotating by 180 degrees reverses both scans
        ([2, 3, 0, 1], lambda x: x.flip(1, 2), lambda w: w.flip(-1, -2)),
    ],
    ids=["transpose", "rotate180"],
)
def test_ss2d_is_equivariant_when_directions_are_permuted(perm, grid_map, kernel_map):
    torch.manual_seed(0)
    op = SS2D(8, d_state=3).double().eval()
    with torch.no_grad():  # directions differ; no D skip (it is the same for every direction)
        op.A_logs.add_(torch.rand_like(op.A_logs))
        op.dt_bias.normal_(1.0, 0.5)
        op.Ds.zero_()
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    expected = grid_map(op(x))
    actual = _permuted(op, perm, kernel_map)(grid_map(x))
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    assert rel_err(_permuted(op, [0, 1, 2, 3], kernel_map)(grid_map(x)), expected) > 1e-2


def test_micro_forward_backward_and_timm_interface():
    model = micro()
    assert isinstance(model, VMamba)
    x = torch.randn(2, 1, 28, 28)
    out = model(x)
    assert out.shape == (2, 10)
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.head.weight.grad.abs().sum() > 0
    assert model.layers[0].blocks[0].op.A_logs.grad.abs().sum() > 0

    features = model.forward_features(x)  # 28 / 4 = 7 -> 4 -> 2 -> 1 tokens per side
    assert features.shape == (2, 1, 1, 256) and model.num_features == 256
    assert model.forward_head(features, pre_logits=True).shape == (2, 256)
    assert model.pretrained_cfg["input_size"] == (1, 28, 28)
    assert model.default_cfg["url"] == "" and model.pretrained_cfg["classifier"] == "head"
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.num_classes == 5
    model.reset_classifier(0)
    assert model(x).shape == (2, 256)
    with pytest.raises(ValueError, match="global_pool='avg'"):
        model.reset_classifier(3, global_pool="max")


def test_odd_grids_and_rgb_inputs():
    model = timm.create_model("vmamba_micro", num_classes=3, patch_size=2).eval()
    assert model(torch.randn(1, 3, 18, 22)).shape == (1, 3)  # 9x11 tokens, padded when merged


def test_drop_path_rises_to_drop_path_rate_and_is_off_in_eval():
    model = micro(drop_path_rate=0.3)
    blocks = [b for stage in model.layers for b in stage.blocks]
    assert isinstance(blocks[0].drop_path, nn.Identity)
    assert blocks[-1].drop_path.drop_prob == pytest.approx(0.3)
    x = torch.randn(2, 1, 28, 28)
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_pretrained_weights_are_refused():
    with pytest.raises(ValueError, match="no pretrained weights exist for vmamba_micro"):
        timm.create_model("vmamba_micro", pretrained=True)


def test_paper_sized_parameter_counts():
    # VMamba v0 (paper Table 1 / official README): T 22.9M, S 44.4M, B 76.3M at 1000 classes.
    with torch.device("meta"):
        counts = {
            name: sum(p.numel() for p in timm.create_model(name).parameters()) / 1e6
            for name in ("vmamba_tiny", "vmamba_small", "vmamba_base")
        }
    assert counts["vmamba_tiny"] == pytest.approx(22.9, abs=0.1)
    assert counts["vmamba_small"] == pytest.approx(44.4, abs=0.1)
    assert counts["vmamba_base"] == pytest.approx(76.3, abs=0.1)


def test_no_weight_decay_names_the_ssm_parameters():
    names = micro().no_weight_decay()
    assert len(names) == 2 * 5  # A_logs and Ds in each of the 5 blocks
    assert all(n.endswith(("op.A_logs", "op.Ds")) for n in names)


@pytest.mark.parametrize("mlp_ratio", [0.0, 2.0])
def test_every_linear_and_conv_runs_once_per_forward(mlp_ratio):
    model = micro(mlp_ratio=mlp_ratio)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    calls = Counter()
    for name, module in layers.items():
        module.register_forward_hook(lambda *_, name=name: calls.update([name]))
    model(torch.randn(2, 1, 28, 28))
    assert calls == Counter(dict.fromkeys(layers, 1))
    assert len(layers) == 1 + 5 * (11 + (2 if mlp_ratio else 0)) + 3 + 1
    # every other parameter is a norm or one of SS2D's non-embedding SSM parameters
    owned = {f"{n}.{p}" for n, m in layers.items() for p, _ in m.named_parameters()}
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            owned |= {f"{name}.weight", f"{name}.bias"}
    rest = {n for n, _ in model.named_parameters()} - owned
    assert rest and all(n.rsplit(".", 1)[1] in ("A_logs", "Ds", "dt_bias") for n in rest)


def test_denoiserep_fusion_is_exact():
    # float32 only: float64 depthwise convolutions take tens of seconds on CPU
    original = micro().eval()
    x = torch.randn(2, 1, 28, 28)
    converted = dr.convert(copy.deepcopy(original), dr.DenoiseConfig(targets="all"), x)
    layers = dr.denoise_layers(converted)
    assert len(layers) == 1 + 5 * 11 + 3 + 1
    assert sorted(layer.t for layer in layers.values()) == list(range(1, len(layers) + 1))
    randomize_denoisers(converted, strength=0.1)
    fused = dr.fuse(converted).eval()
    check_fused_against_reference(original, converted, fused, x, 1e-5)
    assert type(fused) is VMamba
