"""recalibrate_batchnorm: label-free BatchNorm statistics of the (fused) model."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import denoiserep as dr
from denoiserep.util.batchnorm import batchnorm_layers


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Conv2d(8, 6, 1),
        nn.BatchNorm2d(6),
        nn.Flatten(),
        nn.Linear(6 * 16, 4),
    )


def images(n: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


def bn_input_stats(model: nn.Module, x: torch.Tensor, index: int) -> tuple[torch.Tensor, ...]:
    """Mean and unbiased variance per channel of what BatchNorm ``index`` sees in the pass:
    dropout off, earlier BatchNorm layers normalising by the batch's statistics (as training
    does)."""
    h = x
    with torch.no_grad():
        for m in model[:index]:
            if isinstance(m, nn.BatchNorm2d):
                h = nn.functional.batch_norm(h, None, None, m.weight, m.bias, training=True)
            else:
                h = m.eval()(h)
    flat = h.transpose(0, 1).reshape(h.shape[1], -1)
    return flat.mean(1), flat.var(1)


def test_statistics_are_the_average_over_batches_with_dropout_off():
    model, x = net(), images()
    model.train()
    momenta = [bn.momentum for bn in batchnorm_layers(model)]
    n = dr.recalibrate_batchnorm(model, DataLoader(x, batch_size=8))
    assert n == 2
    assert model.training and all(m.training for m in model.modules())  # modes restored
    assert [bn.momentum for bn in batchnorm_layers(model)] == momenta
    for index in (1, 5):
        bn = model[index]
        assert int(bn.num_batches_tracked) == 4
        means, variances = zip(*(bn_input_stats(model, b, index) for b in x.split(8)), strict=True)
        # equal batches: the mean of batch means is the data's mean (dropout off: eval inputs)
        torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0))
        torch.testing.assert_close(bn.running_var, torch.stack(variances).mean(0))
    torch.testing.assert_close(model[1].running_mean, bn_input_stats(model, x, 1)[0])


def test_a_converted_model_gets_the_statistics_of_its_fused_export():
    torch.manual_seed(0)
    model = net()
    converted = dr.convert(model, dr.DenoiseConfig(targets="all", beta_end=0.2), images(2))
    dr.fit_denoisers(converted, images(64, seed=2))  # strong D: the fused layers' outputs move
    fused = dr.fuse(converted)
    stale = model[1].running_mean.clone()
    dr.recalibrate_batchnorm(converted, images(64, seed=3))
    dr.recalibrate_batchnorm(fused, images(64, seed=3))
    after = dr.unwrap(converted)
    for index in (1, 5):
        torch.testing.assert_close(after[index].running_mean, fused[index].running_mean)
        torch.testing.assert_close(after[index].running_var, fused[index].running_var)
    assert not torch.allclose(fused[1].running_mean, stale)
    assert all(layer.phase == "joint" for layer in dr.denoise_layers(converted).values())


def test_max_batches_and_custom_forward():
    model, x = net(), images()
    seen = []

    def forward(m: nn.Module, batch: dict) -> torch.Tensor:
        seen.append(len(batch["pixels"]))
        return m(batch["pixels"])

    dr.recalibrate_batchnorm(
        model, [{"pixels": b} for b in x.split(8)], forward=forward, max_batches=2
    )
    assert seen == [8, 8] and int(model[1].num_batches_tracked) == 2
    torch.testing.assert_close(model[1].running_mean, bn_input_stats(model, x[:16], 1)[0])


def test_labels_are_not_needed_and_tuples_are_read_as_inputs_first():
    model, x = net(), images()
    labelled = DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=32)
    dr.recalibrate_batchnorm(model, labelled)
    torch.testing.assert_close(model[1].running_mean, bn_input_stats(model, x, 1)[0])


def test_no_batchnorm_leaves_the_model_alone():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert dr.recalibrate_batchnorm(model, torch.randn(4, 3)) == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    frozen = nn.BatchNorm2d(3, track_running_stats=False)
    assert batchnorm_layers(frozen) == []


def test_a_layer_off_the_path_keeps_its_statistics():
    unused = nn.BatchNorm1d(5)
    unused.running_mean.fill_(3.0)
    holder = nn.ModuleDict({"net": net(), "unused": unused})
    n = dr.recalibrate_batchnorm(holder, images(), forward=lambda m, x: m["net"](x))
    assert n == 2
    assert torch.all(unused.running_mean == 3.0) and int(unused.num_batches_tracked) == 0


def test_nothing_reached_or_a_failing_pass_restores_every_statistic():
    model = net()
    model[1].running_mean.fill_(0.25)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="no batch reached the BatchNorm layers"):
        dr.recalibrate_batchnorm(model, [])

    def broken(m: nn.Module, x: torch.Tensor) -> None:
        m(x)
        raise RuntimeError("loader died")

    with pytest.raises(RuntimeError, match="loader died"):
        dr.recalibrate_batchnorm(model, [images()], forward=broken)
    for k, v in before.items():
        assert torch.equal(v, model.state_dict()[k]), k
    assert model[1].momentum == 0.1


def test_equals_torch_update_bn_where_no_dropout_precedes_a_batchnorm():
    from torch.optim.swa_utils import update_bn

    ours, theirs = net(), net()
    ours[3].p = theirs[3].p = 0.0  # update_bn runs dropout in train mode; ours runs it in eval
    loader = DataLoader(images(40), batch_size=16)  # a short last batch: weighted alike
    dr.recalibrate_batchnorm(ours, loader)
    update_bn(loader, theirs)
    for a, b in zip(batchnorm_layers(ours), batchnorm_layers(theirs), strict=True):
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=0, atol=0)
        torch.testing.assert_close(a.running_var, b.running_var, rtol=0, atol=0)


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = net()
    dr.recalibrate_batchnorm(model, list(images().split(8))[rank::world])  # 2 of the 4 batches
    torch.save({k: v for k, v in model.state_dict().items() if "running" in k}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_two_processes_average_their_statistics(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "stats")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    single = net()
    dr.recalibrate_batchnorm(single, list(images().split(8)))
    for rank in (0, 1):
        got = torch.load(f"{out}.{rank}")
        assert got.keys() == {"1.running_mean", "1.running_var", "5.running_mean", "5.running_var"}
        for k, v in got.items():
            torch.testing.assert_close(v, single.state_dict()[k], msg=f"rank {rank} {k}")


def test_update_bn_differs_where_train_mode_changes_the_forward():
    """Why we keep our own pass: ``update_bn`` puts the whole model in train mode."""
    import copy

    from torch.optim.swa_utils import update_bn

    ours, theirs, x = net(), net(), images()  # dropout (p=0.5) between the two BatchNorms
    dr.recalibrate_batchnorm(ours, x)
    update_bn([x], theirs)
    assert torch.equal(ours[1].running_var, theirs[1].running_var)  # before the dropout
    assert not torch.allclose(ours[5].running_var, theirs[5].running_var)  # after it

    # a converted model in phase "denoiser" trains D beside the original layer: update_bn
    # takes the statistics of the original weights, ours those of the fused export
    torch.manual_seed(0)
    model = net()
    model[3].p = 0.0
    converted = dr.convert(model, dr.DenoiseConfig(targets="all", beta_end=0.2), images(2))
    dr.fit_denoisers(converted, images(64, seed=2))
    dr.set_phase(converted, "denoiser")
    twin, fused, original = copy.deepcopy(converted), dr.fuse(copy.deepcopy(converted)), net()
    original[3].p = 0.0  # net() is seeded: the weights before conversion
    data = images(64, seed=3)
    dr.recalibrate_batchnorm(converted, data)
    dr.recalibrate_batchnorm(fused, data)
    update_bn([data], twin)
    update_bn([data], original)
    for a, b in zip(batchnorm_layers(converted), batchnorm_layers(fused), strict=True):
        torch.testing.assert_close(a.running_mean, b.running_mean)
        torch.testing.assert_close(a.running_var, b.running_var)
    for a, b in zip(batchnorm_layers(twin), batchnorm_layers(original), strict=True):
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=0, atol=0)
    assert not torch.equal(converted[1].running_mean, twin[1].running_mean)


def test_update_bn_agrees_to_rounding_on_a_converted_model_in_phase_joint():
    """Train mode in phase "joint" runs the differentiable fused weight (W A_t computed as in
    training), ours the exact fused weight: the same statistics up to float rounding."""
    import copy

    from torch.optim.swa_utils import update_bn

    torch.manual_seed(0)
    model = net()
    model[3].p = 0.0
    converted = dr.convert(model, dr.DenoiseConfig(targets="all", beta_end=0.2), images(2))
    dr.fit_denoisers(converted, images(64, seed=2))
    twin, data = copy.deepcopy(converted), images(64, seed=3)
    dr.recalibrate_batchnorm(converted, data)
    update_bn([data], twin)
    for a, b in zip(batchnorm_layers(converted), batchnorm_layers(twin), strict=True):
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.running_var, b.running_var, rtol=1e-5, atol=1e-6)
