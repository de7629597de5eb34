"""``robustness.corrupt_gallery``: re-ID robustness scoring corrupts the gallery only on request.

Off (the default) the corruptions reach the queries alone and the clean gallery is embedded once
per arm for the clean score and every corruption; on, every corruption also scores the gallery
corrupted the same way under ``both/`` keys, as before the switch existed. Either way (and for a
results.json written before the key existed) ``denoiserep report`` rebuilds the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import denoiserep.reid.task as protocol_module
import denoiserep.robustness.evaluate as robustness_module
from denoiserep.cli import main
from denoiserep.robustness.evaluate import RobustnessConfig, summarize_robustness
from tests.reid.test_reid_pipeline import METRICS, TINY, write_market

ARMS = ("baseline", "control", "denoiserep")
CORRUPTIONS, SEVERITIES = ["impulse_noise", "contrast"], [2, 5]
GALLERY_IMAGES, QUERY_IMAGES = 9, 4  # write_market's default test split


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    return write_market(tmp_path_factory.mktemp("market"))


def run(tmp_path, capsys, monkeypatch, market, *overrides):
    """The tiny re-ID run with robustness on; returns (run folder, results.json, corrupted
    datasets' folders, sizes of the datasets the robustness scoring embedded)."""
    corrupted, embedded = [], []
    real_corrupted = robustness_module.CorruptedDataset
    real_extract = protocol_module.extract_features

    def corrupted_dataset(dataset, *args, **kwargs):
        corrupted.append({Path(p).parent.name for p in dataset.paths})
        return real_corrupted(dataset, *args, **kwargs)

    def extract_features(model, dataset, *args, **kwargs):
        embedded.append(len(dataset))
        return real_extract(model, dataset, *args, **kwargs)

    monkeypatch.setattr(robustness_module, "CorruptedDataset", corrupted_dataset)
    monkeypatch.setattr(protocol_module, "extract_features", extract_features)
    out = tmp_path / "run"
    args = ["reid", "--config", TINY, "--output", str(out), "--no-progress"]
    code = main(
        [
            *args,
            f"data.root={market}",
            "robustness.enabled=true",
            f"robustness.corruptions=[{','.join(CORRUPTIONS)}]",
            f"robustness.severities=[{','.join(map(str, SEVERITIES))}]",
            "robustness.feature_sigmas=[0.5]",
            *overrides,
        ]
    )
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    return out, json.loads((out / "results.json").read_text()), corrupted, embedded


def corrupted_scores(report):
    for arm in ARMS:
        for name in CORRUPTIONS:
            for s in SEVERITIES:
                yield report["robustness"]["0"][arm]["corruptions"][name][str(s)]


def rebuild(out, capsys):
    (out / "results.md").unlink()
    (out / "robustness.png").unlink()
    assert main(["report", str(out)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert (out / "robustness.png").stat().st_size > 10_000
    return (out / "results.md").read_text()


def test_default_corrupts_only_the_queries_and_embeds_the_clean_gallery_once(
    tmp_path, capsys, monkeypatch, market
):
    out, report, corrupted, embedded = run(tmp_path, capsys, monkeypatch, market)
    assert report["config"]["robustness"]["corrupt_gallery"] is False  # the default
    conditions = len(CORRUPTIONS) * len(SEVERITIES)
    assert corrupted == [{"query"}] * (len(ARMS) * conditions)  # never the gallery
    # per arm: the queries once per condition (clean, 4 corruptions, 1 feature-noise level);
    # the gallery once for clean + every corruption, once more under feature noise
    per_arm = [QUERY_IMAGES, GALLERY_IMAGES] + [QUERY_IMAGES] * conditions
    per_arm += [QUERY_IMAGES, GALLERY_IMAGES]
    assert embedded == per_arm * len(ARMS)
    for scores in corrupted_scores(report):
        assert set(scores) == METRICS  # no both/ key
    for arm in ARMS:
        res = report["robustness"]["0"][arm]
        assert res["clean"]["mAP"] == pytest.approx(report["per_seed"]["0"][arm]["mAP"])
    markdown = rebuild(out, capsys)
    assert "mCA" in markdown and "gallery corrupted too" not in markdown


def test_switch_on_scores_both_corrupted_and_leaves_the_query_scores_unchanged(
    tmp_path, capsys, monkeypatch, market
):
    _, off, _, _ = run(tmp_path / "off", capsys, monkeypatch, market)
    out, on, corrupted, embedded = run(
        tmp_path / "on", capsys, monkeypatch, market, "robustness.corrupt_gallery=true"
    )
    conditions = len(CORRUPTIONS) * len(SEVERITIES)
    assert corrupted == [{"query"}, {"bounding_box_test"}] * (len(ARMS) * conditions)
    assert embedded.count(GALLERY_IMAGES) == len(ARMS) * (2 + conditions)
    for scores_on, scores_off in zip(corrupted_scores(on), corrupted_scores(off), strict=True):
        assert set(scores_on) == METRICS | {f"both/{m}" for m in METRICS}
        assert {m: scores_on[m] for m in METRICS} == pytest.approx(scores_off)
    markdown = rebuild(out, capsys)
    assert "mCA, gallery corrupted too" in markdown

    # a results.json written before the switch existed (both/ scores, no corrupt_gallery key)
    for section in (on["config"]["robustness"], *on["robustness"]["0"].values()):
        config = section.get("config", section)
        del config["corrupt_gallery"]
    (out / "results.json").write_text(json.dumps(on, indent=2))
    assert rebuild(out, capsys) == markdown


def test_max_images_keeps_the_first_queries_against_the_whole_gallery(
    tmp_path, capsys, monkeypatch, market
):
    _, report, corrupted, embedded = run(
        tmp_path, capsys, monkeypatch, market, "arms=[]", "robustness.max_images=2"
    )
    conditions = len(CORRUPTIONS) * len(SEVERITIES)
    assert corrupted == [{"query"}] * conditions
    assert embedded == [2, GALLERY_IMAGES] + [2] * conditions + [2, GALLERY_IMAGES]
    assert set(report["robustness"]["0"]["baseline"]["corruptions"]) == set(CORRUPTIONS)


def test_summary_reports_the_both_corrupted_mca_only_where_every_arm_has_it():
    def arm(query, both=None):
        scores = {"mAP": query} | ({} if both is None else {"both/mAP": both})
        return {"clean": {"mAP": 90.0}, "corruptions": {"contrast": {"1": scores, "2": scores}}}

    summary = summarize_robustness({"baseline": arm(60.0, 40.0), "dr": arm(70.0, 50.0)}, "mAP")
    assert summary["both"] and summary["arms"]["dr"]["mCA_both"] == 50.0
    summary = summarize_robustness({"baseline": arm(60.0), "dr": arm(70.0)}, "mAP")
    assert not summary["both"] and summary["arms"]["dr"]["mCA_both"] is None


def test_corrupt_gallery_must_be_a_boolean():
    assert RobustnessConfig().corrupt_gallery is False
    with pytest.raises(ValueError, match="corrupt_gallery must be true or false"):
        RobustnessConfig.from_dict({"corrupt_gallery": "yes"})
