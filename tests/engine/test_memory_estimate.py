"""The per-GPU memory estimate (engine.memory, `denoiserep memory`) against counted tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import denoiserep as dr
from denoiserep.bench.memory_estimate import MemoryConfig, estimate_rows, markdown_table
from denoiserep.engine.memory import (
    activation_elements,
    denoiser_elements,
    estimate_memory,
    meta_model,
)


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))


def numel(tensors) -> int:
    return sum(t.numel() for t in tensors)


def test_estimate_equals_the_tensors_of_a_real_training_step():
    net, x = tiny(), torch.randn(5, 1, 4, 4)
    est = estimate_memory(net, x, denoise=True)
    params = numel(net.parameters())
    model = dr.convert(net, dr.DenoiseConfig(targets="all"), x[:1])
    denoisers = numel(dr.denoiser_parameters(model))
    assert (params, denoisers) == (36 + 4 + 192 + 3, 1 * 1 + 64 * 64)
    assert est.params == 4 * params and est.denoisers == 4 * denoisers
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model(x).square().mean() + dr.denoise_loss(model)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert est.gradients == 4 * numel(grads) == 4 * (params + denoisers)
    opt.step()
    moments = [v for s in opt.state.values() for k, v in s.items() if k != "step"]
    assert est.optimizer == 4 * numel(moments) == 8 * (params + denoisers)
    # leaf outputs: conv 5*4*4*4, relu, flatten (same size), linear 5*3; the denoised
    # layers' inputs (conv 5*16, linear 5*64) twice: noised input and D's prediction
    assert activation_elements(tiny(), x, denoise=True) == (3 * 320 + 15, 80 + 320)
    assert est.activations == 4 * (975 + 2 * 400)
    assert est.gathered == 0
    assert est.total == est.params + est.denoisers + est.gradients + est.optimizer + (
        est.activations
    )


def test_sharding_splits_the_state_not_the_activations():
    net, x = tiny(), torch.randn(5, 1, 4, 4)
    one = estimate_memory(net, x, denoise=True, dtype=torch.bfloat16)
    two = estimate_memory(net, x, denoise=True, dtype=torch.bfloat16, shards=2)
    assert one.activations == 2 * (975 + 800)  # bfloat16: 2 bytes an element
    assert two.activations == one.activations
    assert two.params == 4 * 118 and two.denoisers == 4 * 2049  # 235 / 2, 4097 / 2, rounded up
    assert two.gradients == 4 * 2166 and two.optimizer == 8 * 2166  # (235 + 4097) / 2
    assert two.gathered == 2 * (195 + 4096) * 2  # two linear units (the largest), bfloat16
    plain = estimate_memory(net, x, denoise=False)
    assert plain.denoisers == 0 and plain.activations == 4 * 975
    with pytest.raises(ValueError, match="shards must be >= 1"):
        estimate_memory(net, x, shards=0)


def test_meta_model_counts_like_the_real_one_and_vit_s_denoisers_match_the_issue():
    kwargs = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2)
    meta = meta_model("vit_tiny_patch16_224", **kwargs)
    assert next(meta.parameters()).device.type == "meta"
    import timm

    real = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    assert numel(meta.parameters()) == numel(real.parameters())
    assert denoiser_elements(meta) == denoiser_elements(real)
    x = torch.randn(2, 3, 32, 32)
    counted = activation_elements(real, x, denoise=True)
    assert activation_elements(meta, x.to("meta"), denoise=True) == counted
    converted = dr.convert(real, dr.DenoiseConfig(targets="all"), x[:1])
    assert denoiser_elements(meta) == numel(dr.denoiser_parameters(converted))
    vit_s = meta_model("vit_small_patch16_224")  # the issue: 33.8 M denoiser parameters
    assert denoiser_elements(vit_s) / 1e6 == pytest.approx(33.8, abs=0.05)


def test_the_command_reports_every_model_arm_and_shard_count():
    cfg = MemoryConfig(models=["vit_tiny_patch16_224"], batch_size=2, shards=[1, 4])
    rows = estimate_rows(cfg)
    assert [(r["denoiserep"], r["shards"]) for r in rows] == [
        (False, 1),
        (False, 4),
        (True, 1),
        (True, 4),
    ]
    assert rows[2]["total"] > rows[0]["total"] > rows[1]["total"]
    table = markdown_table({"config": vars(cfg), "rows": rows})
    assert "| vit_tiny_patch16_224 | yes | 4 (fsdp) |" in table
    with pytest.raises(ValueError, match="dtype must be one of"):
        MemoryConfig(dtype="int8")
