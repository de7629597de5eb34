"""The final-feature denoiser (paper Figure 1(b)): T..1 reverse steps, input left unchanged."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from denoiserep.bench.final_feature import FinalFeatureDenoiser
from denoiserep.core.schedule import linear_schedule

BETAS = (1e-2, 5e-2)  # large betas over T = 6 steps make every step count


def _denoiser(steps=None, dim=4, T=6):
    schedule = linear_schedule(T, *BETAS)
    model = FinalFeatureDenoiser(torch.nn.Identity(), torch.nn.Identity(), dim, schedule, steps)
    model.double()
    with torch.no_grad():
        model.predictor.weight.copy_(torch.randn(dim, dim, dtype=torch.float64) * 0.5)
    return model


def _hand_loop(z, P, ts, T=6):
    """DDPM posterior mean (z = 0) written from the formulas, one step per t in ``ts``."""
    betas = [BETAS[0] + (BETAS[1] - BETAS[0]) * i / (T - 1) for i in range(T)]
    for t in ts:
        beta = betas[t - 1]
        abar = math.prod(1 - b for b in betas[:t])
        k = beta / math.sqrt(1 - abar)
        z = (z - k * z @ P.T) / math.sqrt(1 - beta)
    return z


def test_steps_run_from_T_down_to_1_and_leave_the_input_alone():
    model = _denoiser()
    seen = []
    step = model.step
    model.step = lambda z, t: (seen.append(t), step(z, t))[1]
    feature = torch.randn(3, 4, dtype=torch.float64)
    before = feature.clone()
    out = model.denoise(feature)
    assert seen == [6, 5, 4, 3, 2, 1]
    assert model.timesteps() == [6, 5, 4, 3, 2, 1]
    assert torch.equal(feature, before)
    assert out.data_ptr() != feature.data_ptr()


def test_matches_a_hand_written_loop_and_not_the_authors_repeated_step():
    model = _denoiser()
    P = model.predictor.weight.detach()
    feature = torch.randn(3, 4, dtype=torch.float64)
    out = model.denoise(feature)
    torch.testing.assert_close(out, _hand_loop(feature, P, range(6, 0, -1)), rtol=1e-12, atol=0)
    repeated_t = _hand_loop(feature, P, [6] * 6)  # the released code never decrements t
    assert (out - repeated_t).abs().max() > 1e-3


def test_fewer_steps_use_the_first_timesteps_of_the_schedule():
    model = _denoiser(steps=3)
    feature = torch.randn(2, 4, dtype=torch.float64)
    P = model.predictor.weight.detach()
    assert model.timesteps() == [3, 2, 1]
    torch.testing.assert_close(model.denoise(feature), _hand_loop(feature, P, [3, 2, 1]))


@pytest.mark.parametrize("steps", [0, 7])
def test_steps_outside_the_schedule_are_rejected(steps):
    with pytest.raises(ValueError, match=r"steps must be in 1\.\.6"):
        _denoiser(steps=steps)


def test_from_timm_denoises_the_pooled_feature_before_the_head():
    timm_model = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=32,
        patch_size=8,
        embed_dim=64,
        depth=1,
        num_heads=2,
        num_classes=5,
    ).eval()
    schedule = linear_schedule(1000, 1e-4, 2e-3)
    model = FinalFeatureDenoiser.from_timm(timm_model, schedule, steps=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feature = timm_model.forward_head(timm_model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(model.backbone(x), feature)
        # a zero noise predictor leaves only the 1/sqrt(alpha_t) scales: z / sqrt(abar_3)
        abar3 = math.prod(1 - b for b in schedule.betas[:3].tolist())
        expected = timm_model.get_classifier()(feature / math.sqrt(abar3))
        torch.testing.assert_close(model(x), expected)
    extra = sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for p in timm_model.parameters()
    )
    assert extra == 64 * 64
