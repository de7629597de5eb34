"""A 2-process torchrun training on CPU (gloo) equals the single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

# deterministic arms: no augmentation randomness, DenoiseRep arm in the `backbone` phase from
# denoisers fitted in closed form (each process sees half the data: the moments are summed)
ARGS = [
    "robustness.enabled=false",
    "--no-progress",
    "model.kwargs={img_size: 8, patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2}",
    "baseline.epochs=1",
    "baseline.batch_size=32",
    "finetune.epochs=1",
    "finetune.batch_size=32",
    "finetune.phases=backbone",
    "finetune.denoiser_init=closed_form",
    "finetune.denoiser_epochs=0",
    "data.pad=0",
    "seeds=[0]",
]


def run(out, nproc: int) -> None:
    # TMPDIR: torchrun leaves a torchelastic_* folder behind in the temporary directory
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(out.parent))
    if nproc == 1:
        cmd = [sys.executable, "-m", "denoiserep", "demo", "--output", str(out), *ARGS]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            "--master_port=29533",
            "-m",
            "denoiserep",
            "demo",
            "--output",
            str(out),
            *ARGS,
        ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_two_process_training_matches_single_process(tmp_path):
    run(tmp_path / "one", 1)
    run(tmp_path / "two", 2)
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    hist = two["histories"]["0"]
    for arm in ("baseline", "control", "denoiserep"):
        rec = hist[arm][-1]
        assert rec["world_size"] == 2
        # both ranks stepped: the all-reduced step count is twice one rank's
        assert rec["steps_all_ranks"] == 2 * one["histories"]["0"][arm][-1]["steps_all_ranks"]
    for arm in ("control", "denoiserep"):
        ckpt = f"seed0/{arm}/checkpoints"
        name = (tmp_path / "one" / ckpt / "latest").read_text()
        a = weights(tmp_path / "one" / ckpt / name / "model.safetensors")
        b = weights(tmp_path / "two" / ckpt / name / "model.safetensors")
        assert a.keys() == b.keys()
        # float noise only; the largest entries are key biases, whose true gradient is exactly
        # zero (softmax is shift-invariant), so rounding noise is all they accumulate
        diff = torch.cat([(a[k] - b[k]).flatten() for k in a])
        full = torch.cat([a[k].flatten() for k in a])
        assert diff.norm() <= 1e-4 * full.norm()
        assert diff.abs().max() < 1e-3
        for k in (k for k in a if k.endswith(".D")):  # the closed-form D, fixed in `backbone`
            assert a[k].abs().max() > 0
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    assert (
        abs(one["summary"]["control"]["acc1"]["mean"] - two["summary"]["control"]["acc1"]["mean"])
        < 1.0
    )
    # only rank 0 wrote: one set of reports, one TensorBoard event file per arm
    assert len(list((tmp_path / "two" / "seed0" / "control" / "tb").glob("events*"))) == 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir() if p.name[0] != ".") == [
        "config.yaml",
        "curves.png",
        "results.json",
        "results.md",
        "seed0",
        "spectrum_denoiserep.png",
    ]
