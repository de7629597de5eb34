"""Diagnostics of a converted model: explicit switch, fused-vs-unfused, change from baseline."""

from __future__ import annotations

import copy

import torch
from torch import nn

import denoiserep as dr
from tests.conftest import randomize_denoisers


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def test_explicit_denoising_switches_and_restores():
    model = dr.convert(_mlp(), dr.DenoiseConfig(targets="all"), example_input=torch.randn(2, 6))
    randomize_denoisers(model, 0.2)
    model.eval()
    x = torch.randn(4, 6)
    fused_out = model(x)
    with dr.explicit_denoising(model):
        assert all(layer.explicit for layer in dr.denoise_layers(model).values())
        explicit_out = model(x)
    assert not any(layer.explicit for layer in dr.denoise_layers(model).values())
    assert not torch.equal(fused_out, explicit_out)  # two computations ...
    torch.testing.assert_close(fused_out, explicit_out, rtol=1e-5, atol=1e-6)  # ... one function
    try:
        with dr.explicit_denoising(model):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert not any(layer.explicit for layer in dr.denoise_layers(model).values())


def test_fused_vs_unfused_restores_modes_and_detects_a_wrong_fusion():
    model = dr.convert(_mlp(), dr.DenoiseConfig(targets="all"), example_input=torch.randn(2, 6))
    randomize_denoisers(model, 0.2)
    fused = dr.fuse(model)
    model.train()
    x = torch.randn(5, 6)
    assert dr.fused_vs_unfused(model, fused, x) < 1e-5
    assert model.training and fused.training
    wrong = copy.deepcopy(fused)
    with torch.no_grad():
        wrong[0].weight.mul_(1.01)
    assert dr.fused_vs_unfused(model, wrong, x) > 1e-4


def test_change_from_baseline_is_zero_label_free_and_positive_joint():
    baseline = _mlp()
    model = dr.convert(copy.deepcopy(baseline), dr.DenoiseConfig(), example_input=torch.randn(2, 6))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dr.set_phase(model, "denoiser")
    for _ in range(3):
        model(torch.randn(8, 6))
        opt.zero_grad()
        dr.denoise_loss(model).backward()
        opt.step()
    assert dr.change_from_baseline(model, baseline) == 0.0
    assert any(layer.D.abs().sum() > 0 for layer in dr.denoise_layers(model).values())
    dr.set_phase(model, "joint")
    model(torch.randn(8, 6)).sum().backward()
    opt.step()
    assert dr.change_from_baseline(model, baseline) > 0.0


def test_denoising_strength_rows_in_execution_order():
    model = dr.convert(_mlp(), dr.DenoiseConfig(), example_input=torch.randn(2, 6))
    rows = dr.denoising_strength(model)
    assert [r["layer"] for r in rows] == ["0", "2"]
    assert [r["t"] for r in rows] == [2, 1]
    assert all(r["strength"] == 0.0 for r in rows)  # zero-initialised D: identity step
    randomize_denoisers(model, 0.1)
    assert all(r["strength"] > 0 for r in dr.denoising_strength(model))
