"""Per-GPU training memory, estimated before renting machines: parameters, DenoiseRep
denoisers, gradients, AdamW's moments and activations, with and without sharding.

Everything is counted on the model itself, never allocated: build it on the ``meta`` device
(:func:`meta_model`) and one forward there gives the activation shapes. The counting rules
(documented in docs/guide/memory.md, checked against real tensors in tests/engine):

- parameters, gradients and the two AdamW moments are float32 (the trainer keeps float32
  master weights; ``amp`` only changes the compute dtype): 4 bytes per element each;
- the denoisers (``targets=all``, full ``D``): one ``C_in x C_in/groups`` matrix per linear
  or convolution layer, which trains like any parameter (gradient and two moments too);
- activations: the elements of every leaf module's output in one forward at the batch size,
  at the compute dtype (``dtype``: float32, or bfloat16 under ``amp``); with DenoiseRep each
  denoised layer also keeps its noised input and D's prediction (2 x its input elements)
  for the noise-prediction loss. Kernels that save less (fused attention) or more (saved
  inputs of element-wise operations) make the real figure differ; it is an estimate;
- sharded over ``shards`` GPUs (FSDP-style full sharding): parameters, denoisers, gradients
  and moments are split evenly; each GPU also holds two gathered units (the one computing and
  the prefetched next) at the compute dtype, the largest child block of the model each;
  activations are per GPU and do not shrink.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

FLOAT32 = 4
_DENOISED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU of each part of a training step; ``total`` their sum."""

    params: int
    denoisers: int
    gradients: int
    optimizer: int
    activations: int
    gathered: int = 0

    @property
    def total(self) -> int:
        return sum(asdict(self).values())


def meta_model(name: str, **kwargs) -> nn.Module:
    """The timm model ``name`` on the meta device: shapes without memory (ViT-H included)."""
    import timm

    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs)


def denoised_layers(model: nn.Module) -> list[nn.Module]:
    """The layers ``targets=all`` denoises: every linear and convolution layer."""
    return [m for m in model.modules() if isinstance(m, _DENOISED)]


def denoiser_elements(model: nn.Module) -> int:
    """Elements of the full denoisers: ``C_in * C_in / groups`` per denoised layer."""
    total = 0
    for m in denoised_layers(model):
        c_in = m.in_features if isinstance(m, nn.Linear) else m.in_channels
        total += c_in * (c_in // getattr(m, "groups", 1))
    return total


def activation_elements(model: nn.Module, example: torch.Tensor, denoise: bool) -> tuple[int, int]:
    """(elements of every leaf module's output, elements of the denoised layers' inputs) in
    one forward of ``example``; run it on meta tensors to count without computing."""
    counts = [0, 0]

    def leaf(module: nn.Module, args: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor):
            counts[0] += output.numel()
        if denoise and isinstance(module, _DENOISED) and isinstance(args[0], torch.Tensor):
            counts[1] += args[0].numel()

    handles = [m.register_forward_hook(leaf) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return counts[0], counts[1]


def largest_block(model: nn.Module, denoise: bool) -> int:
    """Elements of the largest sharding unit: the biggest module among the model's blocks
    (children of its children, e.g. a ViT's ``blocks.i``) and its direct children, with
    its denoisers when ``denoise``."""
    units = [c for child in model.children() for c in [child, *child.children()]]
    units = [u for u in units if not isinstance(u, nn.ModuleList | nn.Sequential)] or [model]
    sizes = [
        sum(p.numel() for p in u.parameters()) + (denoiser_elements(u) if denoise else 0)
        for u in units
    ]
    return max(sizes)


def estimate_memory(
    model: nn.Module,
    example: torch.Tensor,
    *,
    denoise: bool = True,
    dtype: torch.dtype = torch.float32,
    shards: int = 1,
) -> MemoryEstimate:
    """Per-GPU bytes of training ``model`` on a batch like ``example`` (its first dimension
    is the per-GPU batch) with AdamW; ``denoise``: with DenoiseRep (``targets=all``, full D);
    ``dtype``: the compute dtype; ``shards`` > 1: fully sharded over that many GPUs."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    params = sum(p.numel() for p in model.parameters())
    denoisers = denoiser_elements(model) if denoise else 0
    outputs, inputs = activation_elements(model, example, denoise)
    width = torch.finfo(dtype).bits // 8
    trained = params + denoisers

    def split(n: int) -> int:
        return -(-n // shards)  # each GPU's share, rounded up

    gathered = 2 * largest_block(model, denoise) * width if shards > 1 else 0
    return MemoryEstimate(
        params=split(params) * FLOAT32,
        denoisers=split(denoisers) * FLOAT32,
        gradients=split(trained) * FLOAT32,
        optimizer=2 * split(trained) * FLOAT32,
        activations=(outputs + 2 * inputs) * width,
        gathered=gathered,
    )
