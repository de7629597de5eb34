"""Errors are one line naming the file and what to do, worker processes too (issue 15)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import denoiserep as dr
from denoiserep.engine.checkpoint import load_training_state, save_training_state
from tests.engine.test_run_folder import BrokenImages, fake_cli, one_line_error  # noqa: F401


def one_line(e: BaseException) -> str:
    """What the command line prints for ``e`` (after ``error:``); must be one line."""
    from denoiserep.cli import error_line

    text = error_line(e)
    assert "\n" not in text, text
    return text


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.usefixtures("fake_cli")
def test_malformed_yaml_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("finetune:\n  epochs: 2\n  lr: [1e-3\nmodel: tiny\n")
    err = one_line_error(capsys, ["fake", "--config", str(bad), "--output", str(tmp_path / "o")])
    assert str(bad) in err and "malformed YAML at line" in err
    err = one_line_error(capsys, ["fake", "--output", str(tmp_path / "o"), "finetune={lr: [1"])
    assert "override 'finetune={lr: [1'" in err and "malformed YAML" in err


@pytest.mark.usefixtures("fake_cli")
def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit):
        from denoiserep.cli import main

        main(["fake", "--no-such-option"])
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--no-such-option" in err


def test_a_truncated_checkpoint_is_named(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = save_training_state(tmp_path, model, opt, None, {"global_step": 1})
    truncate(path / "state.pt")
    with pytest.raises(ValueError) as info:
        load_training_state(path, model, opt, None)
    text = one_line(info.value)
    assert str(path / "state.pt") in text and "truncated or corrupt" in text and "delete" in text
    assert "PytorchStreamReader" not in text.split("(")[0]


def converted_net() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    fresh = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    return dr.convert(net, dr.DenoiseConfig(), torch.randn(2, 4)), fresh


def test_load_converted_names_a_broken_file(tmp_path):
    model, fresh = converted_net()
    dr.save_converted(model, tmp_path / "m")
    truncate(tmp_path / "m" / "model.safetensors")
    with pytest.raises(ValueError) as info:
        dr.load_converted(fresh, tmp_path / "m")
    text = one_line(info.value)
    assert str(tmp_path / "m" / "model.safetensors") in text and "truncated or corrupt" in text
    assert not dr.is_converted(fresh)  # the model passed in is left as it was
    dr.save_converted(model, tmp_path / "n")
    (tmp_path / "n" / "denoiserep.yaml").write_text("config: {targets: all\ntimesteps: [\n")
    with pytest.raises(ValueError) as info:
        dr.load_converted(fresh, tmp_path / "n")
    text = one_line(info.value)
    assert str(tmp_path / "n" / "denoiserep.yaml") in text and "malformed YAML" in text
    (tmp_path / "n" / "denoiserep.yaml").write_text("- just a list\n")
    with pytest.raises(ValueError, match="is not a DenoiseRep model description"):
        dr.load_converted(fresh, tmp_path / "n")


def test_example_input_of_the_wrong_shape(tmp_path):
    net = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError) as info:
        dr.convert(net, dr.DenoiseConfig(), torch.randn(2, 3, 8, 8))
    text = one_line(info.value)
    assert text.startswith("example_input of shape (2, 3, 8, 8): the model rejected it: ")
    assert "RuntimeError" in text
    assert not dr.is_converted(net)


def test_a_size_mismatch_is_summarised(tmp_path):
    from denoiserep.engine.checkpoint import load_state_checked

    small = nn.Sequential(*[nn.Linear(8, 8) for _ in range(7)])
    large = nn.Sequential(*[nn.Linear(16, 16) for _ in range(7)])
    save_file(large.state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError) as info:
        load_state_checked(small, tmp_path / "w.safetensors")
    text = one_line(info.value)
    assert text.startswith(f"{tmp_path / 'w.safetensors'} does not match the model")
    assert "14 tensors differ in shape, e.g. 0.weight: (16, 16) in the file vs (8, 8)" in text
    with pytest.raises(ValueError, match=r"2 missing, e.g. 0.weight, 0.bias"):
        load_state_checked(nn.Sequential(nn.Linear(2, 2)), {}, source="x")
    twin = nn.Sequential(*[nn.Linear(16, 16) for _ in range(7)])
    load_state_checked(twin, tmp_path / "w.safetensors")  # a matching file loads
    assert torch.equal(twin[3].weight, large[3].weight)


@pytest.mark.usefixtures("fake_cli")
def test_a_worker_error_is_its_original_line(tmp_path, capsys):
    from torch.utils.data import DataLoader

    with pytest.raises(ValueError) as info:
        list(DataLoader(BrokenImages(), batch_size=1, num_workers=1))
    assert "DataLoader worker process" in str(info.value)  # what torch gives
    expected = "corrupt or unreadable image data/train/a/1.png: truncated file"
    assert one_line(info.value) == expected
    err = one_line_error(capsys, ["fake", "--output", str(tmp_path / "o"), "fail_in_worker=true"])
    assert err.endswith(f"error: {expected}")
