"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017), in numpy.

Follows the authors' reference implementation step by step:

1. Stack the query and gallery distances into one (N, N) matrix, square it, and divide
   each column by its maximum (the reference then transposes: for symmetric inputs this
   is a row normalisation).
2. For every item i: R(i, k1) = its k1-reciprocal neighbours (j among i's k1 + 1 nearest,
   with i among j's k1 + 1 nearest). Expand it with R(j, round(k1 / 2)) of each j in
   R(i, k1) whose set shares more than 2/3 of its elements with R(i, k1).
3. V[i] = exp(-distance) weights over the expanded set, normalised to sum to 1.
4. Local query expansion (k2 > 1): V[i] = mean of V over i's k2 nearest items.
5. Jaccard distance 1 - sum(min(V_q, V_g)) / sum(max(V_q, V_g)); the final distance is
   (1 - lambda) * jaccard + lambda * normalised original distance.

Rankings use a stable sort, so equal distances keep item order (queries first, then
gallery). Computation is in float64 (the reference uses float32).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

_CHUNK_ELEMENTS = 1 << 24  # bound on rows x N elements averaged at once in query expansion


def _reciprocal_neighbours(initial_rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """Items j among the k + 1 nearest of i that have i among their own k + 1 nearest."""
    forward = initial_rank[i, : k + 1]
    backward = initial_rank[forward, : k + 1]
    return forward[(backward == i).any(axis=1)]


def _check_square(name: str, dist: np.ndarray, n: int) -> np.ndarray:
    dist = np.asarray(dist, dtype=np.float64)
    if dist.shape != (n, n):
        raise ValueError(f"{name} must have shape ({n}, {n}), got {dist.shape}")
    return dist


def re_ranking(
    q_g_dist: np.ndarray,
    q_q_dist: np.ndarray,
    g_g_dist: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Return the re-ranked (num_query, num_gallery) distance matrix.

    Args:
        q_g_dist, q_q_dist, g_g_dist: query-gallery, query-query and gallery-gallery
            distances (e.g. Euclidean), shapes (Q, G), (Q, Q) and (G, G).
        k1: neighbourhood size of the k-reciprocal sets.
        k2: neighbourhood size of the local query expansion (1 disables it).
        lambda_value: weight of the original distance in the final distance, in [0, 1].
    """
    q_g_dist = np.asarray(q_g_dist, dtype=np.float64)
    if q_g_dist.ndim != 2:
        raise ValueError(f"q_g_dist must be 2-D (num_query, num_gallery), got {q_g_dist.shape}")
    num_q, num_g = q_g_dist.shape
    q_q_dist = _check_square("q_q_dist", q_q_dist, num_q)
    g_g_dist = _check_square("g_g_dist", g_g_dist, num_g)
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")

    dist = np.block([[q_q_dist, q_g_dist], [q_g_dist.T, g_g_dist]]) ** 2
    col_max = dist.max(axis=0)
    dist = np.divide(dist, col_max, out=np.zeros_like(dist), where=col_max > 0).T
    num_all = dist.shape[0]
    initial_rank = np.argsort(dist, axis=1, kind="stable")

    half_k1 = int(np.around(k1 / 2))  # numpy rounds half to even, as the reference does
    half_sets = [_reciprocal_neighbours(initial_rank, i, half_k1) for i in range(num_all)]
    V = np.zeros_like(dist)
    for i in range(num_all):
        core = _reciprocal_neighbours(initial_rank, i, k1)
        expanded = [core]
        for j in core:
            candidate = half_sets[j]
            if len(np.intersect1d(candidate, core)) > 2 / 3 * len(candidate):
                expanded.append(candidate)
        members = np.unique(np.concatenate(expanded))
        weight = np.exp(-dist[i, members])
        V[i, members] = weight / weight.sum()

    if k2 > 1:
        neighbours = initial_rank[:, :k2]
        step = max(1, _CHUNK_ELEMENTS // (k2 * num_all))
        V = np.concatenate(
            [V[neighbours[s : s + step]].mean(axis=1) for s in range(0, num_all, step)]
        )

    # Jaccard overlap sum_k min(V[q, k], V[g, k]) through the gallery's sparse columns.
    gallery_columns = sparse.csc_matrix(V[num_q:])
    overlap = np.zeros((num_q, num_g))
    for q in range(num_q):
        support = np.flatnonzero(V[q])
        block = gallery_columns[:, support]
        weights = np.minimum(np.repeat(V[q, support], np.diff(block.indptr)), block.data)
        overlap[q] = np.bincount(block.indices, weights=weights, minlength=num_g)
    jaccard = 1.0 - overlap / (2.0 - overlap)
    return (1.0 - lambda_value) * jaccard + lambda_value * dist[:num_q, num_q:]
