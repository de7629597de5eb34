"""How many operators does one training step launch, per phase, against the baseline?

Results: docs/results/training-cost.md, "The full record", the "Kernel launches" item. Rerun,
from the repository root: ``.venv/bin/python scripts/studies/op_count.py 4`` (with ``--bf16``,
``--batch-loss`` as that item gives).

Counts the operators of forward + backward. On a GPU each of these is a kernel launch (views
excluded), and a step made of many small kernels can be bound by launching them rather than by
FLOPs (what the issue's GPU times do and do not show: scripts/studies/gpu_cost_model.py).
Counted below autograd with a TorchDispatchMode, so the count does not depend on the device.
The optimizer step is left out (on CUDA, AdamW's foreach implementation updates all parameters
in a few kernels).

    .venv/bin/python scripts/studies/op_count.py [--bf16] [--batch-loss] [batch] [model ...]

``--bf16``: the step under bfloat16 autocast, as GPUs train (casts count too).
``--batch-loss``: ``DenoiseConfig(batch_loss=True)``, the noise regression scored in groups.
"""

from __future__ import annotations

import sys

import timm
import torch
import torch.nn.functional as F

import denoiserep as dr

MODELS = ["vit_small_patch16_224", "resnet50", "swin_tiny_patch4_window7_224"]


def train_pass(
    model: torch.nn.Module, phase: str | None, x: torch.Tensor, y: torch.Tensor, bf16: bool
) -> None:
    """One forward + backward of ``phase`` (None: plain training), as the bench's training
    step without its optimizer step. Uses only the API older versions of the package have too
    (scripts/studies/gpu_cost_model.py runs it on the code the issue measured)."""
    if phase:
        dr.set_phase(model, phase)
    if phase == "denoiser":
        dr.train_frozen_backbone(model)
    else:
        model.train()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(x)
        loss = dr.denoise_loss(model) if phase else torch.zeros(())
        if phase != "denoiser":
            loss = loss + F.cross_entropy(out.float(), y)
    loss.backward()


def step_ops(
    model: torch.nn.Module, phase: str | None, x: torch.Tensor, y: torch.Tensor, bf16: bool
) -> int:
    """Operators of one forward + backward of ``phase`` (None: plain training)."""
    from denoiserep.bench.flops import CountOps

    with CountOps() as counter:
        train_pass(model, phase, x, y, bf16)
    model.zero_grad(set_to_none=True)
    return sum(counter.counts.values())


def main(argv: list[str]) -> None:
    bf16, batch_loss = "--bf16" in argv, "--batch-loss" in argv
    argv = [a for a in argv if a not in ("--bf16", "--batch-loss")]
    batch = int(argv[0]) if argv else 4
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(10, (batch,))
    precision = "bf16 autocast" if bf16 else "float32"
    loss = ", batch_loss" if batch_loss else ""
    print(
        f"| model (batch {batch}, {precision}{loss}) | baseline ops | denoiser | backbone | joint |"
    )
    print("| --- | --- | --- | --- | --- |")
    for name in argv[1:] or MODELS:
        base = step_ops(timm.create_model(name, num_classes=10), None, x, y, bf16)
        model = timm.create_model(name, num_classes=10)
        cfg = dr.DenoiseConfig(loss_tokens=256, batch_loss=batch_loss)
        model = dr.convert(model, cfg, example_input=x[:1])
        phases = ("denoiser", "backbone", "joint")
        cells = [f"{step_ops(model, p, x, y, bf16) / base:.2f}×" for p in phases]
        print(f"| {name} | {base} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
