#!/usr/bin/env python
"""Mutation check of the method's tests (issue 16): every mutant must be killed.

Each mutant is a small text substitution applied to a temporary copy of ``src/``; the tests
that should notice it run against that copy (``PYTHONPATH=<copy>/src``, inherited by the
CLI, torchrun and spawned processes the tests start) and must fail. The tests themselves are
first run on the unmutated copy, where they must pass. One line per mutant:

    killed    <name>   (<seconds>s)
    SURVIVED  <name>

and the exit status is non-zero if any mutant survived, could not be applied (the source
text moved: update the mutant), or errored. Not part of the pytest suite (minutes).

    .venv/bin/python scripts/mutants.py            # all mutants
    .venv/bin/python scripts/mutants.py --list
    .venv/bin/python scripts/mutants.py --only rerank
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

OBJECTIVE = ["tests/core/test_objective.py"]
LOSS_KINDS = [*OBJECTIVE, "tests/core/test_convert.py::test_loss_kinds_and_fraction"]
BATCH_LOSS = ["tests/core/test_batch_loss.py"]
TRAIN_PRODUCT = ["tests/core/test_training_cost.py", "-k", "export_product or one_gemm or in_place"]
SCHEDULE = ["tests/core/test_schedule_closed_form.py"]
RERANK = ["tests/reid/test_rerank_reference.py"]
TORCHRUN = ["tests/engine/test_torchrun_phases.py", "-k", "rank_invariant and joint"]
KILL = ["tests/engine/test_kill_denoiserep.py"]
STRUCTURED = ["tests/core/test_structured.py"]
RECOMPUTE = ["tests/core/test_structured_recompute.py"]


@dataclass
class Mutant:
    name: str
    file: str  # under src/denoiserep
    old: str
    new: str
    tests: list[str]


MUTANTS = [
    # -- the noise-prediction objective (core/layer.py, objective.py, schedule.py) ----------
    Mutant(
        "noise_coefficients returns (1, 0)",
        "core/schedule.py",
        "return math.sqrt(abar), math.sqrt(1.0 - abar)",
        "return 1.0, 0.0",
        OBJECTIVE,
    ),
    Mutant(
        "noise_coefficients swapped (b, a)",
        "core/schedule.py",
        "return math.sqrt(abar), math.sqrt(1.0 - abar)",
        "return math.sqrt(1.0 - abar), math.sqrt(abar)",
        OBJECTIVE,
    ),
    Mutant(
        "l1 computed as mse",
        "core/objective.py",
        'if kind == "l1":\n        return mean(F.l1_loss(pred, eps, reduction="none"))',
        'if kind == "l1":\n        return mean((pred - eps).square())',
        LOSS_KINDS,
    ),
    Mutant(
        "l1+l2 computed as l1",
        "core/objective.py",
        'return mean(F.l1_loss(pred, eps, reduction="none")) + mean((pred - eps).square())',
        'return mean(F.l1_loss(pred, eps, reduction="none"))',
        LOSS_KINDS,
    ),
    Mutant(
        "mse computed as l1",
        "core/objective.py",
        'if kind == "mse":\n        return mean((pred - eps).square())',
        'if kind == "mse":\n        return mean((pred - eps).abs())',
        LOSS_KINDS,
    ),
    Mutant(
        "denoiser applied transposed (D^T x_t)",
        "core/objective.py",
        "return apply_channel_map(xt, D.float())",
        "return apply_channel_map(xt, D.float().T)",
        LOSS_KINDS,
    ),
    Mutant(
        "batch_loss: noise coefficients swapped",
        "core/objective.py",
        "a, b = _noise_coefficients(",
        "b, a = _noise_coefficients(",
        BATCH_LOSS,
    ),
    Mutant(
        "batch_loss: each layer scored with another layer's D",
        "core/objective.py",
        "maps = zip(xt.unbind(), group, strict=True)",
        "maps = zip(xt.unbind(), group[::-1], strict=True)",
        BATCH_LOSS,
    ),
    Mutant(
        "batch_loss: shared token draws never released (every step samples the same tokens)",
        "core/objective.py",
        "layer.shared_draws.clear()  # the next forward draws anew",
        "pass",
        BATCH_LOSS,
    ),
    Mutant(
        "loss_fraction ignored",
        "core/tokens.py",
        "else max(1, round(fraction * n))",
        "else n",
        LOSS_KINDS,
    ),
    Mutant(
        "loss_fraction takes the first pixels, not a random subset",
        "core/tokens.py",
        "return flat[image, :, pixel]",
        "return flat.transpose(1, 2).reshape(-1, c_in)[: pixel.numel()]",
        LOSS_KINDS,
    ),
    Mutant(
        "conv tokens without the channel transpose",
        "core/tokens.py",
        "return flat.transpose(1, 2).reshape(-1, c_in)\n",
        "return flat.reshape(-1, c_in)\n",
        LOSS_KINDS,
    ),
    # -- the training product W A_t (core/fusion.py) ----------------------------------------------
    Mutant(
        "k x k weight rows without moving the channel axis last",
        "core/fusion.py",
        "moved = weight.movedim(1, -1)",
        "moved = weight",
        TRAIN_PRODUCT,
    ),
    Mutant(
        "weight layout restored by an in-place copy (torch 2.11's inductor: zero gradients)",
        "core/fusion.py",
        "    if copy.stride() == weight.stride():\n        return copy\n",
        "",
        TRAIN_PRODUCT,
    ),
    Mutant(
        "grad_W without the denoiser term",
        "core/fusion.py",
        "grad_w = _unrows(torch.addmm(g2, g2, d.T, beta=s, alpha=-k_t * s), weight)",
        "grad_w = _unrows(g2 * s, weight)",
        TRAIN_PRODUCT,
    ),
    # -- schedules (core/schedule.py) ------------------------------------------------------------
    Mutant(
        "cosine schedule un-squared",
        "core/schedule.py",
        "f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2",
        "f = torch.cos((steps + s) / (1 + s) * math.pi / 2)",
        SCHEDULE,
    ),
    Mutant(
        "cosine schedule without the offset s",
        "core/schedule.py",
        "f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2",
        "f = torch.cos(steps * math.pi / 2) ** 2",
        SCHEDULE,
    ),
    Mutant(
        "cosine betas not clipped",
        "core/schedule.py",
        "betas = (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)",
        "betas = 1 - abar[1:] / abar[:-1]",
        SCHEDULE,
    ),
    Mutant(
        "alphas_cumprod not cumulative",
        "core/schedule.py",
        "return torch.cumprod(self.alphas, dim=0)",
        "return self.alphas",
        SCHEDULE,
    ),
    Mutant(
        "linear schedule off by one step",
        "core/schedule.py",
        "torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)",
        "torch.linspace(beta_start, beta_end, num_timesteps + 1, dtype=torch.float64)[1:]",
        SCHEDULE,
    ),
    # -- k-reciprocal re-ranking (reid/rerank.py) -------------------------------------------------
    Mutant(
        "re-ranking expansion step deleted",
        "reid/rerank.py",
        "                expanded.append(candidate)",
        "                pass",
        RERANK,
    ),
    Mutant(
        "re-ranking reciprocity check deleted",
        "reid/rerank.py",
        "return forward[(backward == i).any(axis=1)]",
        "return forward",
        RERANK,
    ),
    Mutant(
        "re-ranking local query expansion off",
        "reid/rerank.py",
        "    if k2 > 1:",
        "    if False:",
        RERANK,
    ),
    Mutant(
        "re-ranking Jaccard without the union",
        "reid/rerank.py",
        "jaccard = 1.0 - overlap / (2.0 - overlap)",
        "jaccard = 1.0 - overlap",
        RERANK,
    ),
    # -- structured denoisers (core/fusion.py Factors, core/closed_form.py; issue 40) ----------
    Mutant(
        "structure: U·Vᵀ transposed in the training product",
        "core/fusion.py",
        "out = torch.addmm(out, w2 @ U.to(dtype), V.to(dtype).T, alpha=-k_t * s)",
        "out = torch.addmm(out, w2 @ V.to(dtype), U.to(dtype).T, alpha=-k_t * s)",
        [*STRUCTURED, "-k", "hypothesis or training_products"],
    ),
    Mutant(
        "structure: U's gradient in the training product transposed",
        "core/fusion.py",
        "grad_u = ((w2.T @ (g2 @ v))",
        "grad_u = ((w2.T @ (g2 @ u))",
        [*STRUCTURED, "-k", "training_products"],
    ),
    Mutant(
        "structure: U·Vᵀ transposed in the noise regression",
        "core/fusion.py",
        "return (x @ self.V) @ self.U.T",
        "return (x @ self.U) @ self.V.T",
        [*STRUCTURED, "-k", "training_products"],
    ),
    Mutant(
        "structure: the diagonal dropped from fusion",
        "core/fusion.py",
        "D = torch.diag_embed(self.d.unflatten(0, (g, -1)))",
        "D = torch.diag_embed(self.d.unflatten(0, (g, -1))) * 0",
        [*STRUCTURED, "-k", "fused_equals_explicit"],
    ),
    Mutant(
        "structure: the group offset of U ignored",
        "core/fusion.py",
        "return self.U.unflatten(0, (g, -1)), self.V.unflatten(0, (g, -1))",
        "return self.U[: self.U.shape[0] // g].expand(g, -1, -1), self.V.unflatten(0, (g, -1))",
        [*STRUCTURED, "-k", "fused_equals_explicit"],
    ),
    Mutant(
        "structure: eval cache blind to the factors",
        "core/layer.py",
        "key += tuple((p._version, p.data_ptr()) for p in ps)",
        "key += ()",
        [*STRUCTURED, "-k", "eval_cache"],
    ),
    Mutant(
        "structure: diagonal closed form b / S_jj squared",
        "core/closed_form.py",
        "return [(b / diag).reshape(-1)]",
        "return [(b / diag**2).reshape(-1)]",
        [*STRUCTURED, "-k", "closed_form"],
    ),
    Mutant(
        "structure: lowrank closed form tries only the top-r directions",
        "core/closed_form.py",
        "for k in range(rank + 1):",
        "for k in range(rank, rank + 1):",
        [*STRUCTURED, "-k", "sub_family"],
    ),
    Mutant(
        "structure: lowrank closed form c from all eigenvalues",
        "core/closed_form.py",
        "c = b * (n - rank) / rest if n > rank else 0.0",
        "c = b * n / sum(vals)",
        [*STRUCTURED, "-k", "sub_family"],
    ),
    Mutant(
        "structure: set_phase leaves the factors out",
        "core/layer.py",
        'return [p for n, p in self._parameters.items() if n in ("D", "d", "U", "V")]',
        'return [p for n, p in self._parameters.items() if n in ("D", "d")]',
        [*STRUCTURED, "-k", "set_phase"],
    ),
    Mutant(
        "structure: the layer op's input gradient through W, not W·A_t",
        "core/fusion.py",
        "grad_x = (grad @ fused) if need_x else None",
        "grad_x = (grad @ weight) if need_x else None",
        RECOMPUTE,
    ),
    Mutant(
        "structure: eager regression's V gradient through V, not U",
        "core/objective.py",
        "xt.T @ (g @ U)",
        "xt.T @ (g @ V)",
        [*RECOMPUTE, "-k", "eager"],
    ),
    Mutant(
        "structure: eager regression's gradient halved",
        "core/objective.py",
        "residual.mul_(2.0 / residual.numel())",
        "residual.mul_(1.0 / residual.numel())",
        [*RECOMPUTE, "-k", "eager"],
    ),
    # -- distributed training and crash recovery (engine/) ----------------------------------------
    Mutant(
        "no DistributedDataParallel (ranks train apart)",
        "engine/loop.py",
        "self.ddp = nn.parallel.DistributedDataParallel(model) if dist.is_distributed() else None",
        "self.ddp = None",
        TORCHRUN,
    ),
    Mutant(
        "resume replays the steps a checkpoint already holds",
        "engine/loop.py",
        'if step < state["step"]:\n                continue',
        "if False:\n                continue",
        KILL,
    ),
    Mutant(
        "optimizer state not restored on resume",
        "engine/checkpoint.py",
        'load_optimizer_state(optimizer, state["optimizer"])',
        "pass",
        KILL,
    ),
]


def copy_src(dest: Path) -> Path:
    shutil.copytree(
        ROOT / "src",
        dest / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    return dest / "src"


def run_tests(src: Path, tests: list[str], timeout: int) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider"]
    cmd += ["-q", "-x", *tests]
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return -1, "timeout"
    return done.returncode, done.stdout[-2000:] + done.stderr[-2000:]


def check_imports_copy(src: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(src))
    code = "import denoiserep, sys; sys.stdout.write(denoiserep.__file__)"
    where = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    if not Path(where).resolve().is_relative_to(src.resolve()):
        sys.exit(f"PYTHONPATH={src} does not win over the installed package ({where})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the mutants whose name contains this text")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per test run")
    args = parser.parse_args()
    mutants = [m for m in MUTANTS if not args.only or args.only.lower() in m.name.lower()]
    if args.list:
        for m in mutants:
            print(f"{m.name}  [{m.file}]  -> {' '.join(m.tests)}")
        return 0
    if not mutants:
        sys.exit(f"no mutant matches {args.only!r}")
    start = time.time()
    bad = 0
    with tempfile.TemporaryDirectory(prefix="denoiserep-mutants-") as tmp:
        src = copy_src(Path(tmp))
        check_imports_copy(src)
        # the tests must pass on the unmutated code, or a "kill" means nothing
        suites = {tuple(m.tests) for m in mutants}
        for tests in sorted(suites):
            rc, out = run_tests(src, list(tests), args.timeout)
            if rc != 0:
                print(f"BASELINE FAILS  {' '.join(tests)} (rc={rc})\n{out}")
                return 2
        print(f"baseline: {len(suites)} test selections pass on the unmutated copy")
        for m in mutants:
            path = src / "denoiserep" / m.file
            original = path.read_text()
            if original.count(m.old) != 1:
                print(f"NOT APPLIED  {m.name}  ({m.file}: text found {original.count(m.old)}x)")
                bad += 1
                continue
            path.write_text(original.replace(m.old, m.new))
            t0 = time.time()
            try:
                rc, out = run_tests(src, m.tests, args.timeout)
            finally:
                path.write_text(original)
            took = f"({time.time() - t0:.0f}s)"
            if rc == 1:
                print(f"killed    {m.name}  {took}", flush=True)
            elif rc == 0:
                print(f"SURVIVED  {m.name}  {took}", flush=True)
                bad += 1
            else:
                print(f"ERROR     {m.name}  rc={rc} {took}\n{out}", flush=True)
                bad += 1
    print(f"{len(mutants) - bad}/{len(mutants)} mutants killed in {time.time() - start:.0f}s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
