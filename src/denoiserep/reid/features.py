"""Re-identification evaluation: feature extraction, distances and ranking metrics.

Query and gallery features (optionally averaged with those of the flipped images, then
L2-normalised) are extracted in equal, padded chunks per rank and gathered with
``all_gather_cat``; every rank then holds all features and computes the same metrics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from denoiserep.engine import dist

from .metrics import evaluate_full
from .rerank import re_ranking
from .step import ReIDImageDataset, pairwise_euclidean

DISTANCES = ("euclidean", "cosine")


@torch.no_grad()
def extract_features(
    model: nn.Module, dataset: Dataset, batch_size: int = 256, flip: bool = False
) -> torch.Tensor:
    """Evaluation features of every item of ``dataset`` (in order), on every rank, on CPU.

    Rank r embeds the r-th of ``world`` equal contiguous chunks (the last one padded by
    repeating the final item), the chunks are gathered in rank order and the padding is
    dropped. With ``flip`` a feature is the mean of the image's and its mirror's.
    """
    n = len(dataset)
    if n == 0:
        raise ValueError("cannot extract features of an empty dataset")
    device = next(model.parameters()).device
    per_rank = -(-n // dist.world_size())
    start = dist.rank() * per_rank
    chunk = Subset(dataset, [min(i, n - 1) for i in range(start, start + per_rank)])
    was_training = model.training
    model.eval()
    feats = []
    for x, *_ in DataLoader(chunk, batch_size=batch_size):
        x = x.to(device)
        f = model(x).float()
        if flip:
            f = (f + model(x.flip(-1)).float()) / 2
        feats.append(f)
    model.train(was_training)
    return dist.all_gather_cat(torch.cat(feats))[:n].cpu()


def distance_matrix(a: torch.Tensor, b: torch.Tensor, metric: str = "euclidean") -> np.ndarray:
    """(len(a), len(b)) distances in float64: euclidean, or cosine distance 1 - cos."""
    a, b = a.double(), b.double()
    if metric == "euclidean":
        return pairwise_euclidean(a, b).numpy()
    if metric == "cosine":
        return (1 - F.normalize(a, dim=1) @ F.normalize(b, dim=1).T).numpy()
    raise ValueError(f"distance must be one of {DISTANCES}, got {metric!r}")


def evaluate_reid(
    model: nn.Module,
    query: ReIDImageDataset,
    gallery: ReIDImageDataset,
    batch_size: int = 256,
    flip: bool = False,
    normalize: bool = True,
    distance: str = "euclidean",
    rerank: dict[str, Any] | None = None,
    max_rank: int = 50,
) -> dict[str, Any]:
    """mAP, mINP, Rank-1/5/10 and the CMC curve (all in %) of ``model`` on query vs gallery.

    ``rerank`` (k1, k2, lambda_value), if given, applies k-reciprocal re-ranking to the
    distances before ranking.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    qf = extract_features(model, query, batch_size, flip)
    gf = extract_features(model, gallery, batch_size, flip)
    return rank_features(qf, gf, query, gallery, normalize, distance, rerank, max_rank)


def rank_features(
    qf: torch.Tensor,
    gf: torch.Tensor,
    query: ReIDImageDataset,
    gallery: ReIDImageDataset,
    normalize: bool = True,
    distance: str = "euclidean",
    rerank: dict[str, Any] | None = None,
    max_rank: int = 50,
) -> dict[str, Any]:
    """:func:`evaluate_reid`'s metrics from features already embedded: the first ``len(qf)``
    queries of ``query`` against ``gallery`` (robustness scoring reuses one gallery's)."""
    n = len(qf)
    if normalize:
        qf, gf = F.normalize(qf, dim=1), F.normalize(gf, dim=1)
    distmat = distance_matrix(qf, gf, distance)
    if rerank is not None:
        distmat = re_ranking(
            distmat, distance_matrix(qf, qf, distance), distance_matrix(gf, gf, distance), **rerank
        )
    q_pids, q_camids = query.pids[:n], query.camids[:n]
    r = evaluate_full(distmat, q_pids, gallery.pids, q_camids, gallery.camids, max_rank)
    metrics = {k: 100.0 * float(r[k]) for k in ("mAP", "rank1", "rank5", "rank10", "mINP")}
    metrics["cmc"] = (100.0 * r["cmc"]).tolist()
    return metrics
