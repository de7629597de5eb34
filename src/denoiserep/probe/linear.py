"""Penultimate features of a frozen model and a closed-form ridge classifier on them."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def penultimate_features(
    model: nn.Module, dataset: Dataset, batch_size: int = 256, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of every ``(image, label)`` item: timm's
    ``forward_head(forward_features(x), pre_logits=True)``, in eval mode, float64 on CPU."""
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise ValueError(
            f"{type(model).__name__} has no forward_features / forward_head(pre_logits=True) "
            "to read penultimate features from; use a timm model"
        )
    model.eval()
    feats, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size):
        f = model.forward_head(model.forward_features(x.to(device)), pre_logits=True)
        feats.append(f.flatten(1).double().cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


class RidgeProbe:
    """A linear classifier fitted in closed form: standardised features, one-hot targets,
    ``W = (X^T X + l2 * n * I)^-1 X^T Y`` (deterministic: no seed, no epochs)."""

    def __init__(self, l2: float = 1e-3) -> None:
        if l2 <= 0:
            raise ValueError(f"l2 must be > 0, got {l2}")
        self.l2 = l2

    def fit(self, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> RidgeProbe:
        """Fit on features ``x`` (n, d) and labels ``y`` (n,)."""
        self.mean = x.mean(0)
        self.std = x.std(0).clamp_min(1e-8)
        z = self._design(x)
        targets = torch.nn.functional.one_hot(y.long(), num_classes).double()
        gram = z.T @ z + self.l2 * len(z) * torch.eye(z.shape[1], dtype=z.dtype)
        self.weight = torch.linalg.solve(gram, z.T @ targets)
        return self

    def _design(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.double() - self.mean) / self.std
        return torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], 1)  # + bias column

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The class of each row of ``x``."""
        return (self._design(x) @ self.weight).argmax(1)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Top-1 accuracy (%) on features ``x`` with labels ``y``."""
        return 100.0 * (self.predict(x) == y).double().mean().item()
