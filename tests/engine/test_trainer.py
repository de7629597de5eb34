"""The shared training loop: resume equality, divergence, config parsing, run folders."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import denoiserep as dr
from denoiserep.classification.step import ClassificationStep
from denoiserep.engine.config import apply_overrides, from_dict
from denoiserep.engine.phases import phase_for_epoch
from denoiserep.engine.runs import RunFolderConflict, prepare_run_folder
from denoiserep.engine.trainer import TrainConfig, TrainingDiverged, fit


def tiny_data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.randn(48, 1, 4, 4, generator=g), torch.randint(0, 3, (48,), generator=g)
    )


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    model = dr.convert(net, dr.DenoiseConfig(loss_weight=0.1), torch.randn(1, 1, 4, 4))
    return model


CFG = TrainConfig(
    epochs=3, batch_size=8, lr=1e-2, phases="alternating", denoiser_epochs=1, ckpt_every=4
)


class CrashAt(ClassificationStep):
    def __init__(self, at: int) -> None:
        super().__init__(pad=1, flip=True)
        self.calls, self.at = 0, at

    def forward(self, model, batch):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt("simulated crash")
        return super().forward(model, batch)


@pytest.mark.parametrize(
    "denoiser_optimizer, denoiser_init",
    [("same", "zero"), ("adafactor", "zero"), ("same", "closed_form")],
)
def test_resume_mid_epoch_reproduces_uninterrupted_run(tmp_path, denoiser_optimizer, denoiser_init):
    cfg = dataclasses.replace(
        CFG, denoiser_optimizer=denoiser_optimizer, denoiser_init=denoiser_init
    )
    task = ClassificationStep(pad=1, flip=True)
    full = tiny_model()
    fit(full, tiny_data(), cfg, task, tmp_path / "a", progress=False)
    crashed = tiny_model()
    with pytest.raises(KeyboardInterrupt):
        fit(crashed, tiny_data(), cfg, CrashAt(11), tmp_path / "b", progress=False)
    resumed = tiny_model()
    history = fit(resumed, tiny_data(), cfg, task, tmp_path / "b", progress=False)
    assert [h["phase"] for h in history] == ["denoiser", "denoiser", "backbone"]
    a, b = full.state_dict(), resumed.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert (tmp_path / "b" / "checkpoints" / "latest").is_file()


class NaNTask(ClassificationStep):
    def loss(self, output, batch):
        loss, logs = super().loss(output, batch)
        return loss * float("nan"), logs


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path):
    model = tiny_model()
    cfg = TrainConfig(epochs=2, batch_size=8, phases="alternating")
    with pytest.raises(
        TrainingDiverged, match=r"loss is nan at epoch 2, step 1; last good checkpoint"
    ):
        fit(model, tiny_data(), cfg, NaNTask(), tmp_path, progress=False)
    assert (tmp_path / "checkpoints" / "step-00000006" / "model.safetensors").is_file()


def test_denoiser_phase_reads_no_labels(tmp_path):
    class NoLabels(ClassificationStep):
        def loss(self, output, batch):
            raise AssertionError("labels read in the label-free phase")

    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=8, phases="denoiser")
    fit(model, tiny_data(), cfg, NoLabels(), tmp_path, progress=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"0.D", "3.D"}


def test_phase_schedule():
    assert [phase_for_epoch("alternating", e, 2, 2) for e in range(7)] == [
        "denoiser",
        "denoiser",
        "denoiser",
        "denoiser",
        "backbone",
        "backbone",
        "denoiser",
    ]
    assert phase_for_epoch("joint", 0) == "joint" and phase_for_epoch("none", 3) is None
    with pytest.raises(ValueError, match="phase schedule must be one of"):
        phase_for_epoch("teacher", 0)


def test_plain_model_rejects_phases(tmp_path):
    with pytest.raises(ValueError, match="needs a model converted"):
        fit(nn.Linear(16, 3), tiny_data(), CFG, ClassificationStep(), tmp_path, progress=False)


def test_config_errors_name_key_and_valid_keys():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) lrr; valid keys: epochs"):
        from_dict(TrainConfig, {"lrr": 1})
    assert from_dict(TrainConfig, {"lr": "1e-3"}).lr == 1e-3
    with pytest.raises(ValueError, match="expected a number"):
        from_dict(TrainConfig, {"lr": "fast"})
    assert apply_overrides({}, ["a.b=3", "c=[1, 2]"]) == {"a": {"b": 3}, "c": [1, 2]}
    with pytest.raises(ValueError, match="key.sub=value"):
        apply_overrides({}, ["novalue"])


def test_run_folder_refuses_a_different_run(tmp_path):
    prepare_run_folder(tmp_path / "run", {"lr": 1})
    (tmp_path / "run" / "keep.txt").write_text("x")
    prepare_run_folder(tmp_path / "run", {"lr": 1})  # same run: resume
    with pytest.raises(RunFolderConflict, match=r"holds a different run \(config differs in: lr\)"):
        prepare_run_folder(tmp_path / "run", {"lr": 2})
    assert (tmp_path / "run" / "keep.txt").read_text() == "x"
    prepare_run_folder(tmp_path / "run", {"lr": 2}, overwrite=True)
    assert not (tmp_path / "run" / "keep.txt").exists()


def test_closed_form_init_fits_D_on_the_training_set_before_any_epoch(tmp_path):
    from torch.utils.data import DataLoader

    from denoiserep.core.closed_form import fit_denoisers

    model = tiny_model()
    cfg = TrainConfig(epochs=0, batch_size=8, phases="denoiser", denoiser_init="closed_form")
    fit(model, tiny_data(), cfg, ClassificationStep(), tmp_path, progress=False)
    expected = tiny_model()
    fit_denoisers(expected, DataLoader(tiny_data(), batch_size=16))  # every item, any order
    for name, layer in dr.denoise_layers(expected).items():
        got = dr.denoise_layers(model)[name].D
        assert got.abs().max() > 0
        torch.testing.assert_close(got, layer.D, rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="denoiser_init must be 'zero' or 'closed_form'"):
        TrainConfig(denoiser_init="pca")


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
    )
    config = dr.DenoiseConfig(loss_weight=0.1, beta_end=0.2)
    return dr.convert(net, config, torch.randn(1, 1, 4, 4))


def test_recalibrate_bn_recomputes_statistics_after_the_label_free_phase(tmp_path, capsys):
    """On the training images augmented as in training, in epoch 0's order: what the layers
    after each BatchNorm were trained to see."""
    from torch.utils.data import DataLoader, DistributedSampler

    from denoiserep.core.closed_form import fit_denoisers
    from denoiserep.engine.trainer import _mix

    task = ClassificationStep(pad=1, flip=True)
    cfg = TrainConfig(epochs=0, batch_size=8, phases="denoiser", denoiser_init="closed_form")
    stale = bn_model()
    fit(stale, tiny_data(), cfg, task, tmp_path / "a", progress=False)
    assert "BatchNorm statistics are still the baseline's" in capsys.readouterr().out
    assert int(dr.unwrap(stale)[1].num_batches_tracked) == 0

    model = bn_model()
    recal = dataclasses.replace(cfg, recalibrate_bn=True)
    fit(model, tiny_data(), recal, task, tmp_path / "b", progress=False)
    assert "BatchNorm statistics of 1 layers recomputed" in capsys.readouterr().out
    expected, clean = bn_model(), bn_model()
    fit_denoisers(expected, DataLoader(tiny_data(), batch_size=16))
    fit_denoisers(clean, DataLoader(tiny_data(), batch_size=16))
    order = DistributedSampler(tiny_data(), num_replicas=1, rank=0, seed=0)  # fit's epoch 0
    batches = list(DataLoader(tiny_data(), batch_size=8, sampler=order))
    generator = torch.Generator().manual_seed(_mix(0, 0, 1 << 21))
    augmented = [task.augment(b, generator)[0] for b in batches]
    dr.recalibrate_batchnorm(expected, augmented)
    dr.recalibrate_batchnorm(clean, batches)
    got, want = dr.unwrap(model)[1], dr.unwrap(expected)[1]
    assert int(got.num_batches_tracked) == 6 and got.momentum == 0.1
    torch.testing.assert_close(got.running_mean, want.running_mean)
    torch.testing.assert_close(got.running_var, want.running_var)
    assert not torch.allclose(got.running_var, dr.unwrap(clean)[1].running_var)
    assert not torch.allclose(got.running_mean, dr.unwrap(stale)[1].running_mean)
    with pytest.raises(ValueError, match="recalibrate_bn"):
        TrainConfig(recalibrate_bn="sometimes")


def test_recalibrate_bn_without_batchnorm_says_so(tmp_path, capsys):
    cfg = TrainConfig(epochs=1, batch_size=8, phases="joint", recalibrate_bn=True)
    fit(tiny_model(), tiny_data(), cfg, ClassificationStep(), tmp_path, progress=False)
    assert "recalibrate_bn: the model has no BatchNorm statistics" in capsys.readouterr().out
