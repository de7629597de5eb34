"""``engine.arms.load_baseline_weights``: a head of another class count is refused by default
and re-initialised (one logged line) with ``reinit_head``; other mismatches stay errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_model

from denoiserep.engine.arms import load_baseline_weights
from denoiserep.models.factory import create_model


def saved(tmp_path, name: str, classes: int) -> str:
    torch.manual_seed(1)
    path = tmp_path / f"{name}_{classes}.safetensors"
    save_model(create_model(name, num_classes=classes, in_chans=1), str(path))
    return str(path)


def test_another_class_count_is_refused_unless_the_head_is_reinitialised(tmp_path, caplog):
    caplog.set_level("WARNING")
    weights = saved(tmp_path, "test_resnet", 4)
    torch.manual_seed(0)
    model = create_model("test_resnet", num_classes=10, in_chans=1)
    fresh_head = model.fc.weight.clone()
    fresh_stem = next(v.clone() for k, v in model.state_dict().items() if k.endswith("weight"))
    with pytest.raises(ValueError, match="differ in shape") as e:
        load_baseline_weights(model, weights)
    assert "\n" not in str(e.value)
    load_baseline_weights(model, weights, reinit_head=True)
    source = create_model("test_resnet", num_classes=4, in_chans=1)
    source.load_state_dict(load_file(weights))
    stem = next(k for k in source.state_dict() if k.endswith("weight"))
    assert torch.equal(model.state_dict()[stem], source.state_dict()[stem])  # backbone loaded
    assert not torch.equal(model.state_dict()[stem], fresh_stem)
    assert torch.equal(model.fc.weight, fresh_head)  # the head is the model's own, fresh
    assert "re-initialised for 10 classes" in caplog.text


def test_a_backbone_mismatch_is_still_an_error_with_reinit_head(tmp_path):
    weights = saved(tmp_path, "test_vit", 10)
    model = create_model("test_resnet", num_classes=10, in_chans=1)
    with pytest.raises(ValueError, match="does not match") as e:
        load_baseline_weights(model, weights, reinit_head=True)
    assert "\n" not in str(e.value)
