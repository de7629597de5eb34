"""What do the GPU step times of issue #11 say about what a step costs on a GPU?

Results: docs/results/training-cost.md, "The full record", the "What the issue's GPU times were
made of" item. Rerun, from the repository root (the commands below; that item gives the exact
worktree and file names used).

Issue #11 measured DenoiseRep's training step on an H100 (bf16 autocast, batch 64) at 2.2-3.4x
the baseline's, with the code of commit c687465; no GPU has measured the code since. This
script counts, below autograd and so the same on any device, what one training step of each
phase dispatches under bf16 autocast: the FLOPs of its products by the dtype they ran in
(tensor-core and non-tensor-core work on a GPU), the bytes every other operator reads and
writes (memory-bound work), and its non-view operators (kernel launches). ``fit`` sets the
issue's 12 step times (3 models x baseline and three phases) beside the counts of the code
they measured, fits

    step ms = a * bf16 GFLOPs + b * float32 GFLOPs + d * other GB + c * thousand operators

by non-negative least squares, and refits without each model in turn: how well a fit predicts
the model it has not seen says whether the counts explain the times (docs/results/training-cost.md,
"What the issue's GPU times were made of": they do not). Counts of other code are printed
beside them, without times; scripts/gpu_check.sh measures those.

    # counts of the code on PYTHONPATH, with its own bench defaults (the token sampling it had)
    PYTHONPATH=<checkout>/src .venv/bin/python scripts/studies/gpu_cost_model.py \\
        count OUT.json [batch]
    .venv/bin/python scripts/studies/gpu_cost_model.py fit ISSUE_CODE.json [OTHER.json ...]

The optimizer step is left out of the counts (on CUDA, AdamW's foreach implementation
updates all parameters in a few kernels).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry


def _views() -> set[str]:
    """This checkout's bench/flops.py VIEWS, whichever denoiserep is on the path (the older
    versions being counted have no such list)."""
    path = Path(__file__).resolve().parents[2] / "src/denoiserep/bench/flops.py"
    spec = importlib.util.spec_from_file_location("denoiserep_current_flops", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VIEWS


VIEWS = _views()
_aten = torch.ops.aten
FLOPS = {
    **flop_registry,
    _aten._scaled_dot_product_flash_attention_for_cpu: flop_registry[
        _aten._scaled_dot_product_flash_attention
    ],
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: flop_registry[
        _aten._scaled_dot_product_flash_attention_backward
    ],
}

MODELS = ["vit_base_patch16_224", "resnet50", "swin_tiny_patch4_window7_224"]
PHASES = ["baseline", "denoiser", "backbone", "joint"]
# Issue #11, first run: one H100 80GB, torch 2.11, bf16 autocast, batch 64; baseline step in
# ms, then the phases' step time x baseline.
ISSUE_MS = {
    "vit_base_patch16_224": (36.9, {"denoiser": 1.30, "backbone": 1.69, "joint": 2.83}),
    "resnet50": (34.8, {"denoiser": 1.56, "backbone": 1.86, "joint": 3.39}),
    "swin_tiny_patch4_window7_224": (53.5, {"denoiser": 0.90, "backbone": 1.44, "joint": 2.19}),
}
REGRESSORS = ["bf16_gflops", "fp32_gflops", "other_gb", "kops"]


class StepCounts(TorchDispatchMode):
    """Totals of what the operators dispatched inside the context do, below autograd.

    ``bf16_gflops`` / ``fp32_gflops``: FLOPs of the products (torch's FlopCounterMode formulas,
    plus CPU flash attention, which a GPU runs as the registered flash kernels) by the dtype
    of their first input; ``gemm_gb``: bytes the products read and write; ``other_gb``: bytes
    every other non-view operator reads and writes (memory-bound work on a GPU); ``kops``:
    thousands of non-view operators (kernel launches)."""

    def __init__(self) -> None:
        super().__init__()
        self.totals = dict.fromkeys(REGRESSORS + ["gemm_gb"], 0.0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket
        if packet.__name__ in VIEWS:
            return out
        tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
        gb = sum(t.numel() * t.element_size() for t in tensors) / 1e9
        formula = FLOPS.get(packet)
        if formula is None:
            self.totals["other_gb"] += gb
        else:
            flops = formula(*args, **kwargs, out_val=out) / 1e9
            key = "bf16_gflops" if tensors[0].dtype == torch.bfloat16 else "fp32_gflops"
            self.totals[key] += flops
            self.totals["gemm_gb"] += gb
        self.totals["kops"] += 1e-3
        return out


def count(out: Path, batch: int) -> None:
    """Counts per model and phase for the denoiserep on the path, with its bench's defaults."""
    import timm
    from op_count import train_pass  # the same step, whichever denoiserep is on the path
    from tqdm import tqdm

    import denoiserep as dr
    from denoiserep.bench.config import BenchConfig

    cfg = BenchConfig().denoise  # the token sampling this version's bench trained with
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(10, (batch,))
    result: dict = {"code": dr.__file__, "batch": batch, "denoise": repr(cfg), "models": {}}
    todo = [(m, p) for m in MODELS for p in PHASES]
    converted = {}
    for name, phase in tqdm(todo, desc="count", file=sys.stdout):
        if name not in converted:
            converted[name] = dr.convert(timm.create_model(name, num_classes=10), cfg, x[:1])
        model = converted[name] if phase != "baseline" else timm.create_model(name, num_classes=10)
        with StepCounts() as counts:
            train_pass(model, None if phase == "baseline" else phase, x, y, bf16=True)
        model.zero_grad(set_to_none=True)
        result["models"].setdefault(name, {})[phase] = counts.totals
        out.write_text(json.dumps(result, indent=1))  # what is counted survives a crash
    print(f"wrote {out}")


def design(counts: dict) -> np.ndarray:
    """Rows (model, phase) in MODELS x PHASES order, columns REGRESSORS."""
    rows = [[counts["models"][m][p][r] for r in REGRESSORS] for m in MODELS for p in PHASES]
    return np.array(rows)


def issue_ms() -> np.ndarray:
    """The issue's step times (ms) in MODELS x PHASES order."""
    rows = [
        ISSUE_MS[m][0] * (1.0 if p == "baseline" else ISSUE_MS[m][1][p])
        for m in MODELS
        for p in PHASES
    ]
    return np.array(rows)


def ratios(ms: np.ndarray) -> np.ndarray:
    """Each row (times or counts, MODELS x PHASES order) over its model's baseline row."""
    per_model = ms.reshape(len(MODELS), len(PHASES))
    return (per_model / per_model[:, :1]).ravel()


def describe(coef: np.ndarray) -> str:
    """The fitted coefficients as rates (ms per GFLOP is TFLOP/s inverted; ms per GB, GB/s)."""
    a, b, d, c = coef
    rate = lambda x, scale=1.0: f"{scale / x:.0f}" if x > 0 else "unbounded"  # noqa: E731
    return (
        f"bf16 products at {rate(a)} TFLOP/s, float32 products at {rate(b)} TFLOP/s, "
        f"other operators' bytes at {rate(d, 1e3)} GB/s, {c:.1f} us per operator"
    )


def count_ratios(counts: dict, times: dict[str, np.ndarray] | None = None) -> None:
    """Each phase's ``times`` (ms, named columns), operators, FLOPs (float32 share) and other
    operators' bytes, each x the model's baseline."""
    times = times or {}
    X = design(counts)
    flops = X[:, 0] + X[:, 1]
    cols = {**times, "operators": X[:, 3], "FLOPs": flops, "other bytes": X[:, 2]}
    table = np.stack([ratios(c) for c in cols.values()], axis=1)
    print("| model | phase | " + " | ".join(f"{h} × baseline" for h in cols) + " |")
    print("| --- | --- |" + " --- |" * len(cols))
    for i, (m, p) in enumerate((m, p) for m in MODELS for p in PHASES):
        if p != "baseline":
            cells = [f"{v:.2f}" for v in table[i]]
            if X[i, 1]:
                cells[len(times) + 1] += f" ({X[i, 1] / flops[i]:.0%} fp32)"
            print(f"| {m} | {p} | " + " | ".join(cells) + " |")


def fit(issue_counts: Path, others: list[Path]) -> None:
    """Set the issue's step times beside the counts of the code it measured; fit the times on
    the counts by non-negative least squares, and refit without each model in turn to see
    whether the fit predicts a model it has not seen. ``others``: counts to set beside them."""
    from scipy.optimize import nnls

    counts = json.loads(issue_counts.read_text())
    X, ms = design(counts), issue_ms()
    coef = nnls(X, ms)[0]
    held_out = np.empty_like(ms)
    for k, m in enumerate(MODELS):
        rows = np.arange(len(ms)) // len(PHASES) == k
        part = nnls(X[~rows], ms[~rows])[0]
        held_out[rows] = X[rows] @ part
        print(f"fit without {m}: {describe(part)}")
    print(f"fit to all 12 step times: {describe(coef)}\n")
    count_ratios(counts, {"GPU time": ms, "fit": X @ coef, "fit without the model": held_out})
    measured, lomo = ratios(ms), ratios(held_out)
    err = np.abs(lomo - measured)[np.arange(len(ms)) % len(PHASES) != 0]
    print(f"\nfit without the model, error of its phase ratios: mean {err.mean():.2f}", end="")
    print(f", max {err.max():.2f}")
    for path in others:
        print(f"\nThe counts of {path} (no GPU time to set beside them):\n")
        count_ratios(json.loads(path.read_text()))


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["count"] and len(args) in (2, 3):
        count(Path(args[1]), int(args[2]) if len(args) == 3 else 64)
    elif args[:1] == ["fit"] and len(args) >= 2:
        fit(Path(args[1]), [Path(a) for a in args[2:]])
    else:
        sys.exit(__doc__)
