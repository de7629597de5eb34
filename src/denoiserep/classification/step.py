"""Image classification's train step (batch augmentation, cross-entropy) and top-k accuracy."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from denoiserep.data.augment import BatchRows, pad_crop_flip
from denoiserep.engine import dist


class ClassificationStep:
    """The train step of classification: cross-entropy with label smoothing on (image, label)
    batches."""

    def __init__(self, label_smoothing: float = 0.0, pad: int = 0, flip: bool = False) -> None:
        self.label_smoothing = label_smoothing
        self.pad = pad
        self.flip = flip

    def to_device(self, batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def augment(
        self, batch: Any, generator: torch.Generator, rows: BatchRows | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        return pad_crop_flip(x, generator, self.pad, self.flip, rows), y

    def forward(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return model(batch[0])

    def loss(self, output: torch.Tensor, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        y = batch[1]
        loss = F.cross_entropy(output.float(), y, label_smoothing=self.label_smoothing)
        acc = (output.argmax(-1) == y).float().mean().item()
        return loss, {"train_acc1": acc}


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> torch.Tensor:
    """Predicted class of every item of ``dataset`` (eval mode, mode restored), on the CPU."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size)
    out = torch.cat([model(x.to(device)).argmax(-1).cpu() for x, *_ in loader])
    model.train(was_training)
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    topk: tuple[int, ...] = (1, 5),
    workers: int = 0,
) -> dict[str, float]:
    """Top-k accuracy (in %) of ``model`` in eval mode, summed over ranks when distributed."""
    device = next(model.parameters()).device
    shard = Subset(dataset, range(dist.rank(), len(dataset), dist.world_size()))
    loader = DataLoader(
        shard, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda"
    )
    was_training = model.training
    model.eval()
    counts = torch.zeros(len(topk) + 1, dtype=torch.float64)
    for x, y in loader:
        logits = model(x.to(device)).float().cpu()
        k = min(max(topk), logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        hits = top == y[:, None]
        for i, kk in enumerate(topk):
            counts[i] += hits[:, :kk].any(-1).sum()
        counts[-1] += len(y)
    model.train(was_training)
    counts = dist.all_reduce_sum(counts)
    return {f"acc{k}": (100.0 * counts[i] / counts[-1]).item() for i, k in enumerate(topk)}
