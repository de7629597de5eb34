"""The denoisers' own optimizer (``denoiser_optimizer: adafactor``) and the optimizer chain."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import denoiserep as dr
from denoiserep.bench.memory import optimizer_tensors, tensor_bytes
from denoiserep.engine.optim import (
    OptimizerChain,
    build_optimizer,
    cosine_with_warmup,
    load_optimizer_state,
)
from denoiserep.engine.trainer import TrainConfig


def mlp() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 10))
    return dr.convert(net, dr.DenoiseConfig(loss_tokens=16), torch.randn(2, 32))


def run_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    scheduler = cosine_with_warmup(optimizer, 10, 2)
    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        optimizer.zero_grad()
        (model(x).pow(2).mean() + dr.denoise_loss(model)).backward()
        optimizer.step()
        scheduler.step()


def test_denoisers_get_a_factored_optimizer_and_the_backbone_keeps_adamw():
    model = mlp()
    chain = build_optimizer(model, "adamw", 1e-2, 0.05, denoiser_optimizer="adafactor")
    assert isinstance(chain, OptimizerChain)
    backbone, denoisers = chain.optimizers
    assert isinstance(backbone, torch.optim.AdamW)
    d = {id(p) for p in dr.denoiser_parameters(model)}
    in_backbone = {id(p) for g in backbone.param_groups for p in g["params"]}
    in_denoisers = {id(p) for g in denoisers.param_groups for p in g["params"]}
    assert in_denoisers == d and not in_backbone & d
    assert in_backbone | in_denoisers == {id(p) for p in model.parameters()}
    run_steps(model, chain)
    # the scheduler drives every group of both optimizers
    assert len({g["lr"] for g in chain.param_groups}) == 1
    assert chain.param_groups[-1]["lr"] < 1e-2
    for p in dr.denoiser_parameters(model):  # D is C_in x C_in: a row and a column moment
        state = chain.state[p]
        assert state["exp_avg_sq_row"].shape == state["exp_avg_sq_col"].shape == (p.shape[0],)
        assert "exp_avg" not in state and p.abs().max() > 0  # D left zero and moved


def test_factored_state_is_a_fraction_of_adamws_moments():
    sizes = {}
    for name in ("same", "adafactor"):
        model = mlp()
        optimizer = build_optimizer(model, "adamw", 1e-3, 0.05, denoiser_optimizer=name)
        run_steps(model, optimizer, 1)
        sizes[name] = tensor_bytes(optimizer_tensors(optimizer))
    d_bytes = tensor_bytes(dr.denoiser_parameters(mlp()))  # (32² + 64²) floats
    # AdamW: two moments of D; Adafactor: a row and a column moment, 2 (32 + 64) floats
    # (both keep a scalar or two per D: step counts, Adafactor's RMS)
    assert sizes["same"] - sizes["adafactor"] == pytest.approx(2 * d_bytes - 2 * 4 * 96, abs=16)


def test_sgd_backbone_with_factored_denoisers():
    model = mlp()
    chain = build_optimizer(model, "sgd", 1e-2, 0.0, denoiser_optimizer="adafactor")
    assert isinstance(chain.optimizers[0], torch.optim.SGD)
    run_steps(model, chain)


def test_plain_model_or_same_gives_one_optimizer():
    assert isinstance(build_optimizer(nn.Linear(4, 2), "adamw", 1e-3, 0.0, 0.9, "adafactor"),
                      torch.optim.AdamW)  # fmt: skip
    assert isinstance(build_optimizer(mlp(), "adamw", 1e-3, 0.0), torch.optim.AdamW)


def test_bad_names_are_errors():
    with pytest.raises(ValueError, match="denoiser_optimizer must be one of"):
        build_optimizer(mlp(), "adamw", 1e-3, 0.0, denoiser_optimizer="lion")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer(mlp(), "lion", 1e-3, 0.0)
    with pytest.raises(ValueError, match="denoiser_optimizer must be one of"):
        TrainConfig(denoiser_optimizer="adam")


def test_state_dict_round_trip_and_mismatch_errors():
    model = mlp()
    chain = build_optimizer(model, "adamw", 1e-2, 0.05, denoiser_optimizer="adafactor")
    run_steps(model, chain)
    saved = chain.state_dict()
    fresh = build_optimizer(model, "adamw", 1e-2, 0.05, denoiser_optimizer="adafactor")
    load_optimizer_state(fresh, saved)
    assert fresh.param_groups[-1] is fresh.optimizers[1].param_groups[-1]  # what schedulers set
    for p in model.parameters():
        for k, v in chain.state[p].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(fresh.state[p][k])), k
    plain = build_optimizer(model, "adamw", 1e-2, 0.05)
    with pytest.raises(ValueError, match="resume with the train.denoiser_optimizer"):
        load_optimizer_state(plain, saved)
    with pytest.raises(ValueError, match="denoiser_optimizer=same"):
        load_optimizer_state(fresh, plain.state_dict())
    other = OptimizerChain(torch.optim.SGD(model.parameters(), lr=1.0))
    with pytest.raises(ValueError, match="AdamW \\+ Adafactor"):
        other.load_state_dict(saved)


def test_factored_denoisers_learn_the_noise_regression_as_well_as_adamw():
    """Label-free training of D alone to convergence (cosine schedule): Adafactor's loss ends
    within 2 % of AdamW's. (At a fixed learning rate either can end ahead: 1.05 vs 0.97 at
    1e-2, 1.20 vs 1.44 at 3e-3, 300 steps.)"""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g) @ torch.randn(8, 48, generator=g)  # 8 of 48 dims
    losses = {}
    for name in ("same", "adafactor"):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 4))
        model = dr.convert(net, dr.DenoiseConfig(timesteps=10, beta_start=0.05, beta_end=0.05), x)
        dr.set_phase(model, "denoiser")
        optimizer = build_optimizer(model, "adamw", 1e-2, 0.0, denoiser_optimizer=name)
        scheduler = cosine_with_warmup(optimizer, 1000, 0)
        torch.manual_seed(1)
        trace = []
        for _ in range(1000):
            dr.train_frozen_backbone(model)
            optimizer.zero_grad()
            model(x)
            loss = dr.denoise_loss(model)
            loss.backward()
            optimizer.step()
            scheduler.step()
            trace.append(loss.item())
        losses[name] = sum(trace[-50:]) / 50
        assert losses[name] < 0.5 * sum(trace[:10]) / 10  # it learned
    assert losses["adafactor"] < 1.02 * losses["same"], losses


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_fused_kernel_equals_the_unfused_one_up_to_rounding(name):
    models, optimizers = [], []
    for fused in (True, False):
        model = mlp()
        optimizer = build_optimizer(model, name, 1e-2, 0.05, fused=fused)
        assert all(g["fused"] is (True if fused else None) for g in optimizer.param_groups)
        run_steps(model, optimizer, steps=5)
        models.append(model)
        optimizers.append(optimizer)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert a.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # a checkpoint of one implementation resumes in the other
    optimizers[1].load_state_dict(optimizers[0].state_dict())
    run_steps(models[1], optimizers[1], steps=1)
    # where a parameter is not on a CPU / CUDA device, torch's default kernel
    meta = build_optimizer(mlp().to("meta"), name, 1e-2, 0.0, fused=True)
    assert meta.param_groups[0]["fused"] is None
    assert build_optimizer(mlp(), name, 1e-2, 0.0).param_groups[0]["fused"] is None  # default
    assert not TrainConfig().fused_optimizer and TrainConfig(fused_optimizer="true").fused_optimizer
