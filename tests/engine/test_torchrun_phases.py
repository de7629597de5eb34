"""2-process torchrun == 1 process for the `joint` and `alternating` DenoiseRep fine-tunes.

What differs between the two runs, and how the test handles it:

* the data order and batches: identical with ``data.pad=0`` (see test_augment_ranks.py for why
  augmentation breaks it);
* the forward-noising draw eps of every DenoiseLayer comes from the global RNG, which ``fit``
  seeds per (seed, epoch, step, rank): rank r draws noise for its half batch from its own
  stream, so the noise differs from the 1-process draw. The denoisers' gradient at these
  small timesteps is mostly that noise (k_t D is ~1e-4 of the weights, but D itself is
  noise-driven), so with real noise D ends ~100 % apart while everything else agrees.

The exact comparison therefore runs both commands through a launcher that replaces the noise
by a fixed pseudo-random function of each token (the same token gets the same "noise" on any
rank). Everything else, DDP over denoiser / backbone / joint phases included, is the real
code. A second comparison with the real noise pins down what agrees and what does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

LAUNCHER = '''
import sys
import torch
from denoiserep.cli import main

_R = {}

def token_noise(x0, *args, **kwargs):
    """A fixed function of each token: rank-invariant stand-in for torch.randn_like."""
    c = x0.shape[-1]
    if c not in _R:
        g = torch.Generator().manual_seed(c)
        _R[c] = torch.randn(c, c, generator=g, dtype=torch.float64)
    return (torch.sin(x0.double() @ _R[c] * 5.0) * 2**0.5).to(x0.dtype)

if sys.argv[1] == "token-noise":
    torch.randn_like = token_noise
sys.exit(main(sys.argv[2:]))
'''

ARGS = [
    "robustness.enabled=false",
    "--config",
    "digits_demo.yaml",
    "--no-progress",
    "model.kwargs={img_size: 8, patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2}",
    "baseline.epochs=1",
    "baseline.batch_size=32",
    "finetune.epochs=2",
    "finetune.batch_size=32",
    "finetune.denoiser_epochs=0",
    "data.pad=0",
    "seeds=[0]",
    "arms=[denoiserep]",
]
PHASES = {"joint": ["joint", "joint"], "alternating": ["denoiser", "backbone"]}


def run(tmp_path: Path, out: Path, nproc: int, noise: str, phases: str) -> dict:
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    # TMPDIR: torchrun leaves a torchelastic_* folder behind in the temporary directory
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    prefix = [sys.executable] if nproc == 1 else [*torchrun, f"--nproc_per_node={nproc}"]
    cmd = [*prefix, str(launcher), noise, "classify", "--output", str(out), *ARGS]
    cmd.append(f"finetune.phases={phases}")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    ckpt = out / "seed0" / "denoiserep" / "checkpoints"
    return load_file(str(ckpt / (ckpt / "latest").read_text() / "model.safetensors"))


def rel_diff(a: dict, b: dict, keys: list[str]) -> float:
    diff = torch.cat([(a[k] - b[k]).flatten() for k in keys]).norm()
    return (diff / torch.cat([a[k].flatten() for k in keys]).norm()).item()


def compare(tmp_path: Path, noise: str, phases: str):
    one = run(tmp_path, tmp_path / "one", 1, noise, phases)
    two = run(tmp_path, tmp_path / "two", 2, noise, phases)
    h1, h2 = one["histories"]["0"]["denoiserep"], two["histories"]["0"]["denoiserep"]
    assert [h["phase"] for h in h1] == [h["phase"] for h in h2] == PHASES[phases]
    for a, b in zip(h1, h2, strict=True):
        assert (a["world_size"], b["world_size"]) == (1, 2)
        assert a["steps_all_ranks"] * 2 == b["steps_all_ranks"]
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert a.keys() == b.keys()
    return one, two, h1, h2, a, b


@pytest.mark.parametrize("phases", ["joint", "alternating"])
def test_two_processes_match_one_with_rank_invariant_noise(tmp_path, phases):
    one, two, h1, h2, a, b = compare(tmp_path, "token-noise", phases)
    denoisers = sorted(k for k in a if k.endswith(".D"))
    rest = sorted(k for k in a if not k.endswith(".D"))
    assert len(denoisers) == 6
    # the denoisers learned, identically (measured: 1.6e-6 relative)
    assert all(a[k].abs().max() > 0 for k in denoisers)
    assert rel_diff(a, b, denoisers) < 1e-4
    # other weights: float noise, as in test_torchrun.py (measured 4e-5, mostly the key
    # biases, whose true gradient is zero and which only accumulate rounding)
    assert rel_diff(a, b, rest) < 1e-4
    assert max((a[k] - b[k]).abs().max().item() for k in rest) < 1e-3
    for x, y in zip(h1, h2, strict=True):
        if x["phase"] != "backbone":  # the all-reduced noise-prediction loss of each epoch
            assert x["ploss"] == pytest.approx(y["ploss"], rel=1e-5)
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)
        assert abs(x["test_acc1"] - y["test_acc1"]) < 1.0  # one test image is 0.28 points
    fa = load_file(str(tmp_path / "one" / "seed0" / "denoiserep" / "fused.safetensors"))
    fb = load_file(str(tmp_path / "two" / "seed0" / "denoiserep" / "fused.safetensors"))
    assert rel_diff(fa, fb, sorted(fa)) < 1e-4


def test_two_processes_with_real_noise_differ_only_through_the_noise_draw(tmp_path):
    # with the real per-rank noise the denoisers are far apart, the fused weights are not:
    # this is what the README's "2-process run == 1-process run" means for DenoiseRep arms
    one, two, h1, h2, a, b = compare(tmp_path, "real-noise", "joint")
    denoisers = sorted(k for k in a if k.endswith(".D"))
    assert rel_diff(a, b, denoisers) > 0.1
    fa = load_file(str(tmp_path / "one" / "seed0" / "denoiserep" / "fused.safetensors"))
    fb = load_file(str(tmp_path / "two" / "seed0" / "denoiserep" / "fused.safetensors"))
    assert rel_diff(fa, fb, sorted(fa)) < 2e-4  # measured 4.9e-5 (4.3e-5 with token noise)
    for x, y in zip(h1, h2, strict=True):
        assert x["ploss"] == pytest.approx(y["ploss"], rel=0.02)  # same statistic, other noise
        assert abs(x["test_acc1"] - y["test_acc1"]) < 1.0
