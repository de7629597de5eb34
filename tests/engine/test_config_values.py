"""One conversion for every configuration value; schedules that starve a phase (issue 15)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

import denoiserep as dr
from denoiserep.cli import main
from denoiserep.engine.config import apply_overrides, from_dict
from denoiserep.engine.trainer import TrainConfig
from tests.engine.test_run_folder import fake_cli, one_line_error  # noqa: F401 - a fixture


@dataclass
class Section:
    name: str = "a"
    size: int = 1


@dataclass
class RunConfig:
    """Shaped like the pipelines' configs: a section whose field default differs from its
    class defaults, DenoiseConfig, lists, optional values."""

    finetune: TrainConfig = field(
        default_factory=lambda: TrainConfig(phases="alternating", denoiser_epochs=1)
    )
    denoise: dr.DenoiseConfig = field(default_factory=dr.DenoiseConfig)
    section: Section | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    options: dict[str, float] = field(default_factory=dict)
    weights: str | None = None
    output: str = "runs/x"


def build(*overrides: str, data: dict | None = None) -> RunConfig:
    return from_dict(RunConfig, apply_overrides(dict(data or {}), list(overrides)))


# -- scientific notation without a dot --------------------------------------------------------
def test_scientific_notation_works_for_every_numeric_value(tmp_path):
    cfg = build(
        "denoise.loss_weight=1e-2",
        "denoise.beta_start=1e-5",
        "denoise.beta_end=2e-3",
        "denoise.timesteps=1e3",
        "finetune.lr=1e-3",
        "finetune.epochs=2e0",
        "options={scale: 1e-1}",
    )
    assert cfg.denoise.loss_weight == 0.01 and cfg.denoise.beta_start == 1e-5
    assert cfg.denoise.timesteps == 1000 and isinstance(cfg.denoise.timesteps, int)
    assert cfg.finetune.lr == 1e-3 and cfg.finetune.epochs == 2
    assert cfg.options == {"scale": 0.1}
    # from Python, as YAML loaders produce the values
    assert dr.DenoiseConfig(loss_weight="1e-3").loss_weight == 1e-3
    assert dr.DenoiseConfig.from_dict({"beta_end": "3e-3"}).beta_end == 3e-3
    path = tmp_path / "d.yaml"
    path.write_text("loss_weight: 1e-2\ntimesteps: 500\n")
    assert dr.DenoiseConfig.from_yaml(path).loss_weight == 0.01


# -- section defaults ---------------------------------------------------------------------------
def test_one_key_of_a_section_keeps_the_sections_defaults():
    cfg = build("finetune.epochs=1")
    assert cfg.finetune.phases == "alternating" and cfg.finetune.denoiser_epochs == 1
    cfg = build(data={"finetune": {"lr": 1e-4}, "section": {"size": 3}})
    assert cfg.finetune.phases == "alternating" and cfg.finetune.lr == 1e-4
    assert cfg.section == Section("a", 3)


@pytest.mark.usefixtures("fake_cli")
def test_an_empty_yaml_and_one_override_through_the_cli(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    out = tmp_path / "o"
    args = ["fake", "--config", str(empty), "--output", str(out), "finetune.epochs=1"]
    assert main(args) == 0, capsys.readouterr().err
    import json

    saved = json.loads((out / "results.json").read_text())
    assert saved["finetune"]["phases"] == "alternating" and saved["finetune"]["epochs"] == 1


# -- a string where a list is expected ----------------------------------------------------------
def test_a_string_where_a_list_is_expected_is_a_list_of_one():
    assert build("denoise.exclude=head").denoise.exclude == ["head"]
    assert build("seeds=3").seeds == [3]
    assert dr.DenoiseConfig(exclude="fc2").exclude == ["fc2"]
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    model = dr.convert(net, dr.DenoiseConfig(exclude="2"), torch.randn(2, 4))
    assert list(dr.denoise_layers(model)) == ["0"]  # "2" excluded, not "2" split in letters


# -- values that are errors, in one line, before any folder exists -------------------------------
@pytest.mark.usefixtures("fake_cli")
@pytest.mark.parametrize(
    "override, message",
    [
        ("denoise.loss_weight=nan", "denoise.loss_weight: expected a finite number"),
        ("denoise.loss_weight=.inf", "denoise.loss_weight: expected a finite number"),
        ("denoise.timesteps=True", "denoise.timesteps: expected an integer, got True"),
        ("finetune.epochs=1.5", "finetune.epochs: expected an integer, got 1.5"),
        ("finetune.batch_size=yes", "finetune.batch_size: expected an integer, got True"),
        ("finetune.amp=3", "finetune.amp: expected true or false, got 3"),
        ("finetune.lr=fast", "finetune.lr: expected a number, got 'fast'"),
        ("finetune=3", "finetune: expected a section"),
    ],
)
def test_bad_values_are_one_line_errors_before_the_folder(tmp_path, capsys, override, message):
    out = tmp_path / "never"
    err = one_line_error(capsys, ["fake", "--output", str(out), override])
    assert message in err
    assert not out.exists()


def test_python_construction_rejects_the_same_values():
    with pytest.raises(ValueError, match="loss_weight: expected a finite number"):
        dr.DenoiseConfig(loss_weight=float("nan"))
    with pytest.raises(ValueError, match="timesteps: expected an integer, got True"):
        dr.DenoiseConfig(timesteps=True)
    with pytest.raises(ValueError, match="epochs: expected an integer, got 1.5"):
        TrainConfig(epochs=1.5)
    with pytest.raises(ValueError, match="lr: expected a finite number"):
        TrainConfig(lr=float("nan"))


# -- schedules --------------------------------------------------------------------------------
def test_a_schedule_that_leaves_a_phase_without_an_epoch_is_refused():
    from denoiserep.engine.config import check_training_plan
    from denoiserep.engine.phases import epochs_per_phase, schedule_problem

    assert epochs_per_phase("joint", 2, 2) == {"joint": 0, "denoiser": 2}
    starved = TrainConfig(epochs=2, phases="joint", denoiser_epochs=2)
    with pytest.raises(ValueError, match="finetune.phases=joint .* gives the joint phase no epoch"):
        check_training_plan(TrainConfig(epochs=1), starved)
    alternating = TrainConfig(epochs=3, phases="alternating", denoiser_epochs=2)
    with pytest.raises(ValueError, match="gives the backbone phase no epoch"):
        check_training_plan(TrainConfig(epochs=1), alternating)
    # the same schedules are fine with an epoch more, or without the label-free epochs
    check_training_plan(
        TrainConfig(epochs=1), TrainConfig(epochs=3, phases="joint", denoiser_epochs=2)
    )
    check_training_plan(TrainConfig(epochs=1), TrainConfig(epochs=2, phases="alternating"))
    check_training_plan(TrainConfig(epochs=1), TrainConfig(epochs=1, phases="denoiser"))
    check_training_plan(TrainConfig(epochs=1), starved, denoiserep_arm=False)  # control only
    assert schedule_problem("none", 5) is None and schedule_problem("joint", 0, 3) is None


def test_nothing_trained_and_no_weights_is_refused():
    from denoiserep.engine.config import check_training_plan

    plain, dr_ft = TrainConfig(epochs=0), TrainConfig(epochs=0, phases="alternating")
    with pytest.raises(ValueError, match="nothing would be trained"):
        check_training_plan(plain, dr_ft, has_weights=False)
    check_training_plan(plain, dr_ft, has_weights=True)  # evaluating given weights is fine
    check_training_plan(plain, TrainConfig(epochs=2, phases="alternating"))


# -- overrides anywhere on the command line ----------------------------------------------------
@pytest.mark.usefixtures("fake_cli")
def test_overrides_are_accepted_anywhere_on_the_command_line(tmp_path, capsys):
    from denoiserep.cli import parse_args

    out = tmp_path / "o"
    argv = ["fake", "finetune.epochs=1", "--output", str(out), "model=tiny", "--no-progress"]
    args = parse_args([*argv, "finetune.lr=1e-4"])
    assert args.overrides == ["finetune.epochs=1", "model=tiny", "finetune.lr=1e-4"]
    assert main([*argv, "finetune.lr=1e-4"]) == 0, capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["fake", "finetune.epochs=1", "--outptu", str(out)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unrecognized option --outptu" in err
