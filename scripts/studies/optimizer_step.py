"""What does one optimizer step of a DenoiseRep conversion cost, fused and unfused?

Results: docs/results/training-cost.md, "The full record", the "The fused optimizer kernel"
item. Rerun, from the repository root: ``.venv/bin/python scripts/studies/optimizer_step.py``.

Times one optimizer step of a model and of its conversion, fused kernel and not.

The optimizer is the pipelines' (``engine.optim.build_optimizer``: AdamW, D in the same
AdamW); gradients are random, steps interleaved, medians printed. D has C_in² entries per
layer, so the converted model steps more parameters than the baseline (ViT-S: 56 M against 22 M).

    .venv/bin/python scripts/studies/optimizer_step.py                       # ViT-S/16, 1 thread
    .venv/bin/python scripts/studies/optimizer_step.py vit_base_patch16_224 --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

import denoiserep as dr
from denoiserep.engine.optim import build_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="vit_small_patch16_224")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    baseline = timm.create_model(args.model)
    size = baseline.pretrained_cfg.get("input_size", (3, 224, 224))
    converted = dr.convert(timm.create_model(args.model), dr.DenoiseConfig(), torch.randn(1, *size))
    runs = {}
    for label, model in (("baseline", baseline), ("DenoiseRep", converted)):
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        for fused in (False, True):
            optimizer = build_optimizer(model, "adamw", 1e-4, 0.05, fused=fused)
            optimizer.step()  # allocates the moments
            runs[label, fused] = (optimizer, [])
    for _ in range(args.repeats):  # interleaved: the machine's speed drifts
        for optimizer, times in runs.values():
            start = time.perf_counter()
            optimizer.step()
            times.append(time.perf_counter() - start)
    print(f"{args.model}, {args.threads} thread(s), median of {args.repeats} steps")
    print("| model | parameters (M) | AdamW step, unfused (ms) | fused (ms) |")
    print("| --- | --- | --- | --- |")
    for label, model in (("baseline", baseline), ("DenoiseRep", converted)):
        n = sum(p.numel() for p in model.parameters()) / 1e6
        ms = [statistics.median(runs[label, f][1]) * 1e3 for f in (False, True)]
        print(f"| {label} | {n:.1f} | {ms[0]:.0f} | {ms[1]:.0f} |")


if __name__ == "__main__":
    main()
