"""``train.grad_checkpointing``: the model library's switch turned on, training unchanged."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest
import timm
import torch
from timm.layers import set_reentrant_ckpt, use_reentrant_ckpt
from torch import nn
from torch.utils.data import TensorDataset

import denoiserep as dr
from denoiserep.classification.step import ClassificationStep
from denoiserep.engine.trainer import TrainConfig, fit
from denoiserep.models.grad_checkpointing import (
    disable_grad_checkpointing,
    enable_grad_checkpointing,
)
from tests.engine.test_arms import TINY

pytestmark = pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")

CFG = TrainConfig(epochs=2, batch_size=8, lr=1e-2, phases="joint", denoiser_epochs=1)


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    net = timm.create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1, embed_dim=32,
        depth=2, num_heads=2, num_classes=3,
    )  # fmt: skip
    return dr.convert(net, dr.DenoiseConfig(loss_weight=0.1), torch.randn(1, 1, 16, 16))


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.randn(24, 1, 16, 16, generator=g), torch.randint(0, 3, (24,), generator=g)
    )


@pytest.fixture(params=[False, True], ids=["non-reentrant", "reentrant"])
def reentrant(request):
    before = use_reentrant_ckpt()
    set_reentrant_ckpt(request.param)
    yield request.param
    set_reentrant_ckpt(before)


def test_checkpointed_training_equals_plain_training(tmp_path, reentrant):
    """Both phases train the same weights with and without checkpointing: timm's default
    non-reentrant checkpoint, and the re-entrant one, under which a loss scored in the first
    forward would have left the blocks' D untrained."""
    plain, checkpointed = tiny_vit(), tiny_vit()
    task = ClassificationStep()
    fit(plain, data(), CFG, task, tmp_path / "plain", progress=False)
    cfg = dataclasses.replace(CFG, grad_checkpointing=True)
    history = fit(checkpointed, data(), cfg, task, tmp_path / "ckpt", progress=False)
    assert checkpointed.grad_checkpointing  # timm's flag: the blocks ran under checkpoint
    assert [h["phase"] for h in history] == ["denoiser", "joint"]
    a, b, start = plain.state_dict(), checkpointed.state_dict(), tiny_vit().state_dict()
    moved = [k for k in a if k.endswith(".D") and not torch.equal(a[k], start[k])]
    assert len(moved) == len(dr.denoise_layers(plain))  # every D trained
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


def test_models_without_a_switch_are_refused():
    with pytest.raises(ValueError, match="no submodule with timm's set_grad_checkpointing"):
        enable_grad_checkpointing(nn.Sequential(nn.Linear(2, 2)))


def test_a_model_whose_switch_refuses_is_refused_clearly():
    """timm's legacy SE-ResNet has ``set_grad_checkpointing`` only to assert it stays off."""
    net = timm.create_model("legacy_seresnet18", num_classes=3)
    with pytest.raises(ValueError, match="SENet refuses it .*gradient checkpointing not supported"):
        enable_grad_checkpointing(net)


def test_outermost_switches_only():
    wrapper = nn.Sequential(tiny_vit(), nn.Linear(3, 3))
    assert enable_grad_checkpointing(wrapper) == ["0"]
    assert wrapper[0].grad_checkpointing


def test_hugging_face_models_checkpoint_and_train_their_denoisers():
    """transformers' switch is found; checkpointing re-entrantly (transformers 4's default),
    D's gradients equal the plain step's, in the label-free phase too (where no input of a
    block requires a gradient)."""
    transformers = pytest.importorskip("transformers")
    from denoiserep.models.hf import HFImageClassifier

    def model() -> nn.Module:
        torch.manual_seed(0)
        config = transformers.ViTConfig(
            image_size=16, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=64, num_labels=3,
        )  # fmt: skip
        net = HFImageClassifier(transformers.ViTForImageClassification(config))
        return dr.convert(net, dr.DenoiseConfig(), torch.randn(1, 1, 16, 16))

    grads = []
    for checkpointed in (False, True):
        net = model()
        if checkpointed:
            assert enable_grad_checkpointing(net) == ["model"]
            net.model.activation_checkpointing_enable({"use_reentrant": True})
            assert net.model.is_activation_checkpointing
        dr.set_phase(net, "denoiser")
        dr.train_frozen_backbone(net)
        torch.manual_seed(1)
        net(data().tensors[0][:4])
        dr.denoise_loss(net).backward()
        grads.append({n: m.D.grad for n, m in dr.denoise_layers(net).items()})
    assert all(g is not None and g.abs().sum() > 0 for g in grads[1].values())
    for name, g in grads[1].items():
        torch.testing.assert_close(g, grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


TINY_RUN = ["--no-progress", *TINY, "seeds=[0]"]


@pytest.mark.parametrize("finetune", [True, False])
def test_the_pipeline_checkpoints_the_arms_it_is_set_for(tmp_path, monkeypatch, finetune):
    """Through the CLI every arm trains and fuses, each checkpointed as its own setting says:
    the fine-tuned arms, copies of the checkpointed baseline, have it off unless asked."""
    from denoiserep.cli import main
    from denoiserep.engine import arms

    seen, real_fit = [], arms.fit

    def spy(model, *args, **kwargs):
        history = real_fit(model, *args, **kwargs)
        seen.append(dr.unwrap(model).grad_checkpointing)  # timm's flag: as the arm trained
        return history

    monkeypatch.setattr(arms, "fit", spy)

    out = tmp_path / "run"
    argv = ["demo", "--output", str(out), *TINY_RUN, "baseline.grad_checkpointing=true"]
    assert main([*argv, f"finetune.grad_checkpointing={str(finetune).lower()}"]) == 0
    per_seed = json.loads((out / "results.json").read_text())["per_seed"]["0"]
    assert {"baseline", "control", "denoiserep"} <= set(per_seed)
    assert seen == [True, finetune, finetune]  # baseline, control, DenoiseRep


def test_fit_turns_off_only_the_checkpointing_it_turned_on():
    net = tiny_vit()
    net.set_grad_checkpointing(True)  # the user's own
    assert disable_grad_checkpointing(net) == [] and net.grad_checkpointing
    net.set_grad_checkpointing(False)
    assert enable_grad_checkpointing(net) == [""] and net.grad_checkpointing
    copy = pickle.loads(pickle.dumps(net))
    assert disable_grad_checkpointing(copy) == [""] and not copy.grad_checkpointing
    assert disable_grad_checkpointing(copy) == []


def test_a_model_without_a_switch_is_refused_before_the_baseline_trains(
    tmp_path, monkeypatch, capsys
):
    """The finetune arms would fail only after the baseline had trained: refused at once."""
    from denoiserep.classification.task import ClassificationExperiment
    from denoiserep.cli import main

    def no_switch(self) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def refusing(self) -> nn.Module:
        return timm.create_model("legacy_seresnet18", in_chans=1, num_classes=10)

    trained = []
    monkeypatch.setattr("denoiserep.engine.arms.fit", lambda *a, **k: trained.append(a))
    for build, error in [
        (no_switch, "Sequential has no submodule"),
        (refusing, "SENet refuses it"),
    ]:
        monkeypatch.setattr(ClassificationExperiment, "build_model", build)
        out = tmp_path / build.__name__
        argv = ["demo", "--output", str(out), *TINY_RUN, "finetune.grad_checkpointing=true"]
        assert main(argv) == 2
        assert f"grad_checkpointing: {error}" in capsys.readouterr().err
        assert not trained and not list(out.glob("seed0/baseline/*"))
