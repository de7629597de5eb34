"""Robustness evaluation of arms: conditions, feature noise, mCA / mCE on hand numbers."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from denoiserep.robustness.evaluate import (
    Condition,
    RobustnessConfig,
    evaluate_robustness,
    plot_robustness,
    robustness_table,
    summarize_robustness,
)
from denoiserep.robustness.feature_noise import calibrate_ranges


def arm(clean, gaussian, contrast, noise, bits=(80.0, 30.0)):
    return {
        "clean": {"acc1": clean, "acc5": 100.0},
        "corruptions": {
            "gaussian_noise": {"1": {"acc1": gaussian[0]}, "2": {"acc1": gaussian[1]}},
            "contrast": {"1": {"acc1": contrast[0]}, "2": {"acc1": contrast[1]}},
        },
        "feature_noise": {"0.1": {"acc1": noise[0]}, "0.5": {"acc1": noise[1]}},
        "feature_bits": {"6": {"acc1": bits[0]}, "3": {"acc1": bits[1]}},
    }


PER_ARM = {
    "baseline": arm(90.0, (80.0, 60.0), (70.0, 50.0), (85.0, 40.0)),
    "denoiserep": arm(92.0, (85.0, 70.0), (70.0, 50.0), (88.0, 50.0), (86.0, 45.0)),
}


def test_mca_and_mce_on_hand_numbers():
    s = summarize_robustness(PER_ARM, "acc1")
    base, dr_ = s["arms"]["baseline"], s["arms"]["denoiserep"]
    assert base["mCA"] == pytest.approx(65.0)
    assert dr_["mCA"] == pytest.approx(68.75)
    assert base["mCE"] == pytest.approx(100.0) and base["relative_mCE"] == pytest.approx(100.0)
    # errors: gaussian 15 + 30 vs 20 + 40, contrast 30 + 50 vs 30 + 50
    assert dr_["CE"] == pytest.approx({"gaussian_noise": 75.0, "contrast": 100.0})
    assert dr_["mCE"] == pytest.approx(87.5)
    # relative: (45 - 2 * 8) / (60 - 2 * 10) and (80 - 16) / (80 - 20)
    assert dr_["relative_CE"]["gaussian_noise"] == pytest.approx(72.5)
    assert dr_["relative_CE"]["contrast"] == pytest.approx(100 * 64 / 60)
    assert dr_["relative_mCE"] == pytest.approx((72.5 + 100 * 64 / 60) / 2)
    assert dr_["corruption_acc"] == pytest.approx({"gaussian_noise": 77.5, "contrast": 60.0})
    assert dr_["severity_acc"] == pytest.approx({"1": 77.5, "2": 60.0})
    assert dr_["feature_noise"] == {"0.1": 88.0, "0.5": 50.0}
    assert dr_["mFA"] == pytest.approx(69.0)
    assert dr_["feature_bits"] == {"6": 86.0, "3": 45.0} and s["bits"] == ["6", "3"]
    assert s["baseline"] == "baseline"
    json.dumps(s)


def test_mce_in_fractions_and_without_a_baseline():
    frac = json.loads(json.dumps(PER_ARM))
    for res in frac.values():
        res["clean"]["acc1"] /= 100
        for sev in res["corruptions"].values():
            for m in sev.values():
                m["acc1"] /= 100
    s = summarize_robustness(frac, "acc1", scale=1.0)
    assert s["arms"]["denoiserep"]["mCE"] == pytest.approx(87.5)
    none = summarize_robustness({"denoiserep": PER_ARM["denoiserep"]}, "acc1")
    assert none["baseline"] is None and none["arms"]["denoiserep"]["mCE"] is None
    assert none["arms"]["denoiserep"]["mCA"] == pytest.approx(68.75)


def test_arms_evaluated_differently_are_refused():
    other = copy.deepcopy(PER_ARM)
    del other["denoiserep"]["corruptions"]["contrast"]["2"]
    with pytest.raises(ValueError, match="same RobustnessConfig"):
        summarize_robustness(other, "acc1")
    other = copy.deepcopy(PER_ARM)
    del other["baseline"]["feature_bits"]["3"]
    with pytest.raises(ValueError, match="same RobustnessConfig"):
        summarize_robustness(other, "acc1")
    without = copy.deepcopy(PER_ARM)  # results written before feature_bits existed
    for res in without.values():
        del res["feature_bits"]
    assert summarize_robustness(without, "acc1")["arms"]["baseline"]["feature_bits"] == {}
    with pytest.raises(KeyError, match="mAP"):
        summarize_robustness(PER_ARM, "mAP")


def test_table_and_plot(tmp_path):
    table = robustness_table(summarize_robustness(PER_ARM, "acc1"))
    lines = table.splitlines()
    assert lines[0].startswith("| arm | clean acc1 | mCA | mCE (%)")
    row = next(line for line in lines if line.startswith("| denoiserep | 92.00 | 68.75 |"))
    assert "| 87.5 |" in row and "| 88.00 | 50.00 | 69.00 | 86.00 | 45.00 |" in row
    assert lines[0].endswith("| mean σ | 6-bit features | 3-bit features |")
    assert "| denoiserep | 77.50 (75) | 60.00 (100) |" in table
    path = tmp_path / "robustness.png"
    plot_robustness(PER_ARM, str(path), metric="acc1")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_plot_titles_are_the_panels_and_only_the_title_asked_for(tmp_path, monkeypatch):
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    titles, headings = [], []
    monkeypatch.setattr(Figure, "suptitle", lambda self, t, **kw: titles.append(t))
    monkeypatch.setattr(Axes, "set_title", lambda self, t, **kw: headings.append(t))
    plot_robustness(PER_ARM, str(tmp_path / "a.png"), metric="acc1")
    assert titles == []  # no figure title unless one is given (a panel's once leaked here)
    assert headings[-2:] == ["feature noise", "quantized features"]
    static = copy.deepcopy(PER_ARM)
    for res in static.values():
        res["config"] = {"feature_ranges": "static"}
    plot_robustness(static, str(tmp_path / "b.png"), metric="acc1", title="run 7")
    assert titles == ["run 7"] and headings[-1] == "quantized features (static ranges)"


def test_config_validation_and_round_trip():
    cfg = RobustnessConfig()
    assert cfg.enabled is False and cfg.severities == [1, 2, 3, 4, 5]
    assert cfg.feature_sigmas == [0.05, 0.1, 0.2, 0.5] and len(cfg.corruptions) == 7
    assert cfg.feature_bits == []  # off unless asked for
    assert cfg.feature_ranges == "per_sample" and cfg.calibration_images == 1000
    assert RobustnessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="valid: enabled"):
        RobustnessConfig.from_dict({"severity": [1]})
    for bad in (
        {"corruptions": ["fog"]},
        {"severities": [0]},
        {"feature_sigmas": [-1.0]},
        {"max_images": 0},
        {"table": "tiny"},
        {"severities": [1, 1]},
        {"feature_bits": [1]},
        {"feature_bits": [17]},
        {"feature_bits": [4.5]},
        {"feature_bits": [True]},
        {"feature_bits": [8, 8]},
        {"feature_ranges": "dynamic"},
        {"calibration_images": 0},
        {"calibration_images": True},
        {"calibration_images": 2.5},
    ):
        with pytest.raises(ValueError):
            RobustnessConfig(**bad)


class Images(Dataset):
    """Normalised 1-channel images with labels."""

    def __init__(self, n=12):
        g = torch.Generator().manual_seed(0)
        self.raw = torch.rand(n, 1, 8, 8, generator=g)
        self.labels = torch.arange(n) % 2

    def __len__(self):
        return len(self.raw)

    def __getitem__(self, i):
        return (self.raw[i] - 0.5) / 0.25, int(self.labels[i])


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(108, 2)).eval()


def test_evaluate_robustness_runs_every_condition_with_the_same_noise_for_each_arm():
    data = Images()
    seen = []

    def evaluate(model, condition):
        ds = condition(data, ((0.5,), (0.25,)))
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        clean = torch.stack([data[i][0] for i in range(len(ds))])
        with torch.no_grad():
            out = model(x)
        seen.append((condition.key, len(ds), (x - clean).abs().mean().item()))
        return {"score": out.sum().item(), "curve": [1, 2]}

    cfg = RobustnessConfig(
        corruptions=["gaussian_noise", "pixelate"],
        severities=[1, 3],
        feature_sigmas=[0.0, 0.2],
        feature_bits=[16, 2],
        max_images=10,
    )
    model = make_model()
    res = evaluate_robustness(evaluate, model, cfg, layer_names=["0", "3"])
    keys = [k for k, _, _ in seen]
    assert keys == [
        "clean",
        "gaussian_noise/1",
        "gaussian_noise/3",
        "pixelate/1",
        "pixelate/3",
        "feature_noise/0",
        "feature_noise/0.2",
        "feature_bits/16",
        "feature_bits/2",
    ]
    assert all(n == 10 for _, n, _ in seen)  # max_images
    changes = {k: d for k, _, d in seen}
    assert changes["clean"] == 0 and changes["feature_noise/0.2"] == 0
    assert changes["feature_bits/2"] == 0  # quantization acts on the layers, not the images
    assert changes["gaussian_noise/3"] > changes["gaussian_noise/1"] > 0.05
    assert set(res) == {"clean", "corruptions", "feature_noise", "feature_bits", "config", "layers"}
    assert res["layers"] == ["0", "3"]
    assert res["clean"] == {"score": pytest.approx(res["feature_noise"]["0"]["score"])}
    assert res["feature_noise"]["0"]["score"] == res["clean"]["score"]  # sigma 0: bit for bit
    assert res["feature_noise"]["0.2"]["score"] != res["clean"]["score"]
    clean_score = res["clean"]["score"]
    assert res["feature_bits"]["16"]["score"] == pytest.approx(clean_score, rel=1e-3)
    assert res["feature_bits"]["2"]["score"] != pytest.approx(clean_score, rel=1e-3)
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == 0
    again = evaluate_robustness(evaluate, copy.deepcopy(model), cfg, layer_names=["0", "3"])
    assert again == res  # another arm with the same weights sees the same noise and images
    json.dumps(res)
    assert summarize_robustness({"baseline": res}, "score")["arms"]["baseline"]["mCE"] == 100


def test_static_ranges_are_calibrated_on_the_data_given_for_each_model():
    data = Images()

    def evaluate(model, condition):
        x = torch.stack([data[i][0] for i in range(len(data))])
        with torch.no_grad():
            return {"score": model(x).sum().item()}

    common = {"corruptions": [], "severities": [1], "feature_sigmas": [], "feature_bits": [3]}
    static = RobustnessConfig(**common, feature_ranges="static")
    calibration = DataLoader(torch.utils.data.Subset(data, range(4)), batch_size=2)
    model = make_model()
    res = evaluate_robustness(evaluate, model, static, ["0", "3"], calibration=calibration)
    expected = calibrate_ranges(model, calibration, targets=["0", "3"])
    assert res["feature_ranges"] == {name: list(r) for name, r in expected.items()}
    assert res["config"]["feature_ranges"] == "static"
    dynamic = evaluate_robustness(evaluate, model, RobustnessConfig(**common), ["0", "3"])
    assert "feature_ranges" not in dynamic
    assert res["feature_bits"]["3"] != dynamic["feature_bits"]["3"]
    # ranges from other data are other ranges: each model and data set calibrates its own
    other = DataLoader(torch.utils.data.Subset(data, range(8, 12)), batch_size=2)
    moved = evaluate_robustness(evaluate, model, static, ["0", "3"], calibration=other)
    assert moved["feature_ranges"] != res["feature_ranges"]
    with pytest.raises(ValueError, match="static needs calibration data"):
        evaluate_robustness(evaluate, model, static, ["0", "3"])
    json.dumps(res)


def test_evaluate_that_ignores_the_model_is_an_error():
    cfg = RobustnessConfig(corruptions=[], severities=[1], feature_sigmas=[0.1])
    with pytest.raises(RuntimeError, match="none of its layers"):
        evaluate_robustness(lambda model, cond: {"acc": 1.0}, make_model(), cfg)
    cfg = RobustnessConfig(corruptions=[], severities=[1], feature_sigmas=[], feature_bits=[4])
    with pytest.raises(RuntimeError, match="quantization reached none"):
        evaluate_robustness(lambda model, cond: {"acc": 1.0}, make_model(), cfg)


def test_condition_keeps_labels_and_works_in_a_dataloader():
    cond = Condition("corruption", corruption="impulse_noise", severity=5, seed=3)
    ds = cond(Images(), ((0.5,), (0.25,)), limit=False)
    x, y = next(iter(DataLoader(ds, batch_size=12)))
    assert x.shape == (12, 1, 8, 8) and y.tolist() == (torch.arange(12) % 2).tolist()
    raw = x * 0.25 + 0.5
    share = ((raw - Images().raw).abs() > 1e-4).float().mean().item()
    assert 0.15 < share < 0.4  # impulse noise replaces 27% of the values at severity 5
