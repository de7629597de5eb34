"""SIGKILL inside the DenoiseRep arm (twice: in a denoiser epoch and in a backbone epoch),
then resume: the result equals the uninterrupted run exactly, as the in-process resume test
in test_trainer.py does (rtol = atol = 0).

The kill is deterministic: a launcher registers a global optimizer step pre-hook (torch's
``register_optimizer_step_pre_hook``, no denoiserep internals) that SIGKILLs its own process
at the 3rd optimizer step after the DenoiseRep arm's ``latest`` checkpoint names a given step,
so two steps of work are lost and must be replayed from the checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

LAUNCHER = """
import os, signal, sys
from pathlib import Path
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from denoiserep.cli import main

latest = Path(os.environ["KILL_WATCH"]) / "latest"
after = os.environ["KILL_AFTER"]
left = [3]

def hook(optimizer, args, kwargs):
    if latest.is_file() and latest.read_text() == after:
        left[0] -= 1
        if left[0] == 0:
            os.kill(os.getpid(), signal.SIGKILL)

register_optimizer_step_pre_hook(hook)
sys.exit(main(sys.argv[1:]))
"""

# 44 steps per epoch (1437 digits, batch 32); phases: denoiser, backbone, denoiser
ARGS = [
    "robustness.enabled=false",
    "--config",
    "digits_demo.yaml",
    "--no-progress",
    "model.kwargs={img_size: 8, patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2}",
    "baseline.epochs=1",
    "baseline.batch_size=32",
    "finetune.epochs=3",
    "finetune.batch_size=32",
    "finetune.phases=alternating",
    "finetune.denoiser_epochs=0",
    "finetune.ckpt_every=5",
    "data.pad=1",
    "seeds=[0]",
    "arms=[denoiserep]",
]


def classify(out: Path, launcher: Path | None = None, **env_extra) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", **env_extra)
    head = [str(launcher)] if launcher else ["-m", "denoiserep"]
    cmd = [sys.executable, *head, "classify", "--output", str(out), *ARGS]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def partial_results(out: Path) -> dict:
    """Per-arm results of seed 0 written so far (results are written after every arm)."""
    report = out / "results.json"
    return json.loads(report.read_text())["per_seed"].get("0", {}) if report.exists() else {}


def test_sigkill_in_denoiserep_arm_then_resume_is_exact(tmp_path):
    full = classify(tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]

    launcher = tmp_path / "kill.py"
    launcher.write_text(LAUNCHER)
    killed = tmp_path / "killed"
    ckpts = killed / "seed0" / "denoiserep" / "checkpoints"
    # epoch 1 (denoiser) at step 13, then epoch 2 (backbone) at global step 63
    for after, expect_phase in (("step-00000010", "denoiser"), ("step-00000060", "backbone")):
        done = classify(killed, launcher, KILL_WATCH=str(ckpts), KILL_AFTER=after)
        assert done.returncode == -9, (done.returncode, done.stderr[-3000:])  # SIGKILL
        assert (ckpts / "latest").read_text() == after
        assert "denoiserep" not in partial_results(killed)  # the arm did not finish
        state = torch.load(ckpts / after / "state.pt", weights_only=False)
        assert state["phase"] == expect_phase and state["step"] % 44 != 0  # mid-epoch
    resumed = classify(killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = json.loads((tmp_path / "full" / "results.json").read_text())
    b = json.loads((killed / "results.json").read_text())
    assert a["histories"] == b["histories"]
    for arm in ("baseline", "denoiserep"):
        assert a["per_seed"]["0"][arm]["acc1"] == b["per_seed"]["0"][arm]["acc1"]
    for rel in ("denoiserep/fused.safetensors", "denoiserep/checkpoints/step-00000132"):
        path_a, path_b = tmp_path / "full" / "seed0" / rel, killed / "seed0" / rel
        if path_a.is_dir():
            path_a, path_b = path_a / "model.safetensors", path_b / "model.safetensors"
        wa, wb = load_file(str(path_a)), load_file(str(path_b))
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
    assert any(k.endswith(".D") for k in wb)
