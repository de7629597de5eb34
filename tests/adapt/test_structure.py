"""``denoise.structure`` / ``denoise.rank`` reach ``denoiserep adapt``'s DenoiseConfig: a run
with ``denoise.structure=diagonal`` fits diagonal denoisers in closed form (per-coordinate
optimum, core/closed_form.py) and still fuses them into a plain model of the source's class."""

from __future__ import annotations

import json

import pytest
import torch

import denoiserep as dr
from denoiserep.adaptation.task import AdaptConfig
from denoiserep.cli import main
from denoiserep.core import adapt as core_adapt
from denoiserep.engine.config import from_dict

TINY = [
    "model.name=test_resnet",
    "source={epochs: 0, batch_size: 64, lr: 2.0e-3}",
    "corruptions=[gaussian_noise]",
    "severities=[5]",
    "target_images=32",
    "data.name=digits",
    "data.options={}",
    "seeds=[0]",
    "latency_repeats=1",
    "arms=[none, dr_target]",
]


def test_an_adapt_run_with_diagonal_structure_fits_and_fuses_diagonal_denoisers(
    tmp_path, monkeypatch
):
    fitted, fused = [], []
    real_fit, real_adapt = core_adapt.fit_denoisers, dr.adapt

    def fit(converted, *args, **kwargs):  # the converted model, before fusion
        fitted.append(converted)
        return real_fit(converted, *args, **kwargs)

    def adapt(model, *args, **kwargs):
        fused.append((model, real_adapt(model, *args, **kwargs)))
        return fused[-1][1]

    monkeypatch.setattr(core_adapt, "fit_denoisers", fit)
    monkeypatch.setattr(dr, "adapt", adapt)
    out = tmp_path / "adapt"
    args = ["adapt", "--no-progress", "--overwrite", "--output", str(out), *TINY]
    assert main([*args, "denoise.structure=diagonal"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["config"]["denoise"]["structure"] == "diagonal"
    assert set(report["per_seed"]["0"]["gaussian_noise@5"]) == {"none", "dr_target"}

    (converted,) = fitted
    layers = dr.denoise_layers(converted)
    assert layers and all(layer.structure == "diagonal" for layer in layers.values())
    for name, layer in layers.items():
        d = layer.D.detach()  # every group's cg x cg block is diagonal
        assert d.abs().sum() > 0, name  # fitted, not the zero initialisation
        blocks = d.reshape(layer.groups, d.shape[1], d.shape[1])
        assert torch.equal(blocks, torch.diag_embed(blocks.diagonal(dim1=1, dim2=2))), name
    ((source, adapted),) = fused
    assert type(adapted) is type(source) and not dr.is_converted(adapted)
    assert list(adapted.state_dict()) == list(source.state_dict())


def test_structure_and_rank_reach_the_denoise_config():
    cfg = from_dict(AdaptConfig, {"denoise": {"structure": "lowrank", "rank": 3}})
    assert (cfg.denoise.structure, cfg.denoise.rank) == ("lowrank", 3)
    with pytest.raises(ValueError, match="needs rank"):
        from_dict(AdaptConfig, {"denoise": {"structure": "lowrank"}})
