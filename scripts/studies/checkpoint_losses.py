"""Do the denoisers inside checkpointed blocks train?

Results: docs/results/training-cost.md, "The full record", the "Activation checkpointing" item.
Rerun, from the repository root: ``.venv/bin/python scripts/studies/checkpoint_losses.py``.

One label-free step of a tiny converted timm ViT (depth 2: 10 denoised layers, 8 inside the
blocks) under timm's gradient checkpointing, re-entrant and not: how many D got a gradient, and
the noise-prediction loss read before and after backward (equal unless the recomputation in
backward overwrote it).

    .venv/bin/python scripts/studies/checkpoint_losses.py
    # the code before the fix (commit 1e610c5):
    git worktree add /tmp/wt_1e610c5 1e610c5
    PYTHONPATH=/tmp/wt_1e610c5/src .venv/bin/python scripts/studies/checkpoint_losses.py
"""

from __future__ import annotations

import warnings

import timm
import torch
from timm.layers import set_reentrant_ckpt

import denoiserep as dr


def step(reentrant: bool | None) -> tuple[int, int, float, float]:
    torch.manual_seed(0)
    net = timm.create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1, embed_dim=32,
        depth=2, num_heads=2, num_classes=3,
    )  # fmt: skip
    dr.convert(net, dr.DenoiseConfig(), torch.randn(1, 1, 16, 16))
    if reentrant is not None:
        set_reentrant_ckpt(reentrant)
        net.set_grad_checkpointing(True)
    dr.set_phase(net, "denoiser")
    dr.train_frozen_backbone(net)
    torch.manual_seed(1)
    net(torch.randn(8, 1, 16, 16))
    loss = dr.denoise_loss(net)
    before = loss.item()
    loss.backward()
    layers = dr.denoise_layers(net).values()
    trained = sum(m.D.grad is not None and bool(m.D.grad.abs().sum() > 0) for m in layers)
    return trained, len(layers), before, dr.denoise_loss(net).item()


if __name__ == "__main__":
    warnings.filterwarnings("ignore", "None of the inputs have requires_grad")
    for label, reentrant in [("plain", None), ("non-reentrant", False), ("re-entrant", True)]:
        trained, n, before, after = step(reentrant)
        grads = f"D with a gradient: {trained}/{n}"
        print(f"{label:14} {grads}  loss {before:.4f}, read after backward {after:.4f}")
