"""Re-identification ranking metrics: CMC, mAP and mINP.

Same contract as torchreid's `evaluate_rank`: for every query the gallery is ranked by
ascending distance, gallery items with the query's pid AND camid are discarded, and queries
without any remaining true match are skipped. AP is torchreid's: the mean, over the true
matches, of the precision at each match's rank among the kept items. mINP is the AGW
paper's: for each query, (number of true matches) / (rank of the last true match).

The standard protocol is vectorised and needs no full argsort: queries are processed in
chunks (bounded memory); each chunk's rows are value-sorted once and only the gallery items
sharing the query's pid (true matches and discarded items) are located in them by a
vectorised binary search. The ranking is stable: ties in distance are broken by gallery
order (the lower gallery index ranks first), exactly as `np.argsort(kind="stable")`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_CHUNK_ELEMENTS = 1 << 22  # distances handled at once (~4M: a few tens of MB of work arrays)
_CUHK03_REPEATS = 10  # torchreid's number of single-gallery-shot samplings


def _check_inputs(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int,
) -> tuple[np.ndarray, ...]:
    """Return the inputs as numpy arrays, raising ValueError if their shapes disagree."""
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    if num_q == 0 or num_g == 0:
        raise ValueError(f"distmat must be non-empty, got shape {distmat.shape}")
    if np.isnan(distmat).any():
        raise ValueError("distmat contains NaN")
    arrays = []
    for name, arr, n in (
        ("q_pids", q_pids, num_q),
        ("g_pids", g_pids, num_g),
        ("q_camids", q_camids, num_q),
        ("g_camids", g_camids, num_g),
    ):
        arr = np.asarray(arr)
        if arr.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) to match distmat, got {arr.shape}")
        arrays.append(arr)
    if int(max_rank) < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    return (distmat, *arrays)


def _row_search(
    sorted_rows: np.ndarray, rows: np.ndarray, values: np.ndarray, right: bool
) -> np.ndarray:
    """Vectorised `searchsorted` of values[i] in sorted_rows[rows[i]] (side left or right)."""
    n = sorted_rows.shape[1]
    lo = np.zeros(len(rows), dtype=np.int64)
    hi = np.full(len(rows), n, dtype=np.int64)
    for _ in range(int(n).bit_length()):  # ceil(log2(n + 1)) halvings reach lo == hi
        active = lo < hi
        mid = (lo + hi) // 2
        probe = sorted_rows[rows, np.minimum(mid, n - 1)]
        go_right = active & ((probe <= values) if right else (probe < values))
        lo = np.where(go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)
    return lo


def _stable_positions(dist: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """0-based position of gallery item cols[i] in the stable ascending ranking of rows[i].

    Position = #(smaller distances) + #(equal distances at lower gallery index). Only the
    entries asked for are ranked, from one value sort per row, without a full argsort.
    """
    sorted_rows = np.sort(dist, axis=1)
    values = dist[rows, cols]
    less = _row_search(sorted_rows, rows, values, right=False)
    tied = np.flatnonzero(_row_search(sorted_rows, rows, values, right=True) - less > 1)
    gallery_index = np.arange(dist.shape[1])
    num_batches = max(1, -(-len(tied) * dist.shape[1] // _CHUNK_ELEMENTS))
    for batch in np.array_split(tied, num_batches):
        equal = dist[rows[batch]] == values[batch, None]
        less[batch] += (equal & (gallery_index < cols[batch, None])).sum(axis=1)
    return less


def _group_cumsum(x: np.ndarray, starts: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum of x restarted at each group (entries sorted by group)."""
    total = np.cumsum(x)
    return total - np.r_[0, total][starts][group]


def _rank_chunk(
    dist: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query of one chunk: (first_rank, ap, inp), NaN/0 for queries without a true match.

    Only gallery items with the query's pid matter: they are the true matches (other
    camera) and the discarded items (same camera). Each one's rank among the kept items is
    its stable position minus the discarded items ranked before it.
    """
    num_q = len(dist)
    rows, cols = np.nonzero(g_pids[None, :] == q_pids[:, None])
    position = _stable_positions(dist, rows, cols)
    by_rank = np.lexsort((position, rows))
    rows, cols, position = rows[by_rank], cols[by_rank], position[by_rank]
    starts = np.searchsorted(rows, np.arange(num_q))
    discarded = g_camids[cols] == q_camids[rows]
    discarded_before = _group_cumsum(discarded, starts, rows)
    match_index = _group_cumsum(~discarded, starts, rows)  # 1-based among true matches
    hit = ~discarded
    kept_rank = (position + 1 - discarded_before)[hit]
    rows, match_index = rows[hit], match_index[hit]
    num_pos = np.bincount(rows, minlength=num_q)
    valid = np.flatnonzero(num_pos)
    first = np.searchsorted(rows, valid)  # entries are sorted by (query, rank)
    last = np.searchsorted(rows, valid, side="right") - 1
    first_rank = np.zeros(num_q, dtype=np.int64)
    first_rank[valid] = kept_rank[first]
    precision_sum = np.bincount(rows, weights=match_index / kept_rank, minlength=num_q)
    ap = np.full(num_q, np.nan)
    ap[valid] = precision_sum[valid] / num_pos[valid]
    inp = np.full(num_q, np.nan)
    inp[valid] = num_pos[valid] / kept_rank[last]
    return first_rank, ap, inp


def _single_shot_cmc(
    kept_pids: np.ndarray, q_pid: int, length: int, rng: np.random.Generator
) -> np.ndarray:
    """CUHK03 CMC of one query: keep one random gallery item per identity, repeated, averaged.

    `kept_pids` are the kept gallery pids in ranked order. Each repeat picks, uniformly per
    identity, one of its ranks; the match's rank among the picks decides that repeat's CMC.
    """
    by_pid = np.argsort(kept_pids, kind="stable")  # ranks grouped by identity
    sorted_pids = kept_pids[by_pid]
    starts = np.flatnonzero(np.r_[True, sorted_pids[1:] != sorted_pids[:-1]])
    counts = np.diff(np.r_[starts, len(kept_pids)])
    picks = by_pid[starts + rng.integers(0, counts, size=(_CUHK03_REPEATS, len(starts)))]
    match = picks[:, np.searchsorted(sorted_pids[starts], q_pid)]
    rank = (picks < match[:, None]).sum(axis=1) + 1  # 1-based among the picked items
    return (rank[:, None] <= np.arange(1, length + 1)[None, :]).mean(axis=0)


def check_matches(q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any) -> int:
    """How many queries have a true match in the gallery (same pid, another camera); a
    ValueError when none has, so a run can refuse such data before it trains."""
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    by_pid: dict[int, set[int]] = {}
    for pid, cam in zip(g_pids.tolist(), g_camids.tolist(), strict=True):
        by_pid.setdefault(pid, set()).add(cam)
    found = sum(
        bool(by_pid.get(pid, set()) - {cam})
        for pid, cam in zip(q_pids.tolist(), q_camids.tolist(), strict=True)
    )
    if found == 0:
        raise ValueError(
            "no query has a true match in the gallery (same pid, different camera); "
            "check that query and gallery pids/camids are consistent"
        )
    return found


def evaluate_full(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
    single_gallery_shot: bool = False,
    seed: int = 0,
) -> dict:
    """Rank the gallery for every query and return all metrics.

    Args:
        distmat: (num_query, num_gallery) distances, smaller = more similar.
        q_pids, g_pids, q_camids, g_camids: 1-D identity and camera labels.
        max_rank: length of the returned CMC curve (clipped to the gallery size).
        single_gallery_shot: CUHK03 protocol (torchreid's `eval_cuhk03`): the CMC samples one
            kept gallery image per identity, 10 times, and averages; AP and INP still use all
            kept gallery items.
        seed: seed of the single-gallery-shot sampling.

    Returns a dict with mAP, mINP (floats in [0, 1]), cmc (float array of length max_rank),
    rank1, rank5, rank10 (floats) and num_valid_queries (int). Raises ValueError on
    inconsistent shapes or when no query has a true match in the gallery.
    """
    distmat, q_pids, g_pids, q_camids, g_camids = _check_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank
    )
    num_q, num_g = distmat.shape
    curve_len = min(max(int(max_rank), 10), num_g)
    ks = np.arange(1, curve_len + 1)
    rng = np.random.default_rng(seed)
    cmc_sum = np.zeros(curve_len)
    ap_all, inp_all = [], []
    chunk = max(1, _CHUNK_ELEMENTS // num_g)
    for start in range(0, num_q, chunk):
        sl = slice(start, start + chunk)
        first_rank, ap, inp = _rank_chunk(distmat[sl], q_pids[sl], g_pids, q_camids[sl], g_camids)
        valid = np.flatnonzero(first_rank)
        ap_all.append(ap[valid])
        inp_all.append(inp[valid])
        if not single_gallery_shot:
            cmc_sum += (first_rank[valid, None] <= ks[None, :]).sum(axis=0)
            continue
        for q in valid + start:
            order = np.argsort(distmat[q], kind="stable")
            kept = order[(g_pids[order] != q_pids[q]) | (g_camids[order] != q_camids[q])]
            cmc_sum += _single_shot_cmc(g_pids[kept], q_pids[q], curve_len, rng)
    ap_all = np.concatenate(ap_all)
    num_valid = len(ap_all)
    if num_valid == 0:
        raise ValueError(
            "no query has a true match in the gallery (same pid, different camera); "
            "check that query and gallery pids/camids are consistent"
        )
    curve = cmc_sum / num_valid
    return {
        "mAP": float(ap_all.mean()),
        "mINP": float(np.concatenate(inp_all).mean()),
        "cmc": curve[: min(int(max_rank), num_g)],
        "rank1": float(curve[0]),
        "rank5": float(curve[min(5, curve_len) - 1]),
        "rank10": float(curve[min(10, curve_len) - 1]),
        "num_valid_queries": num_valid,
    }


def evaluate(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
    single_gallery_shot: bool = False,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Return `(cmc, mAP)` like torchreid's `evaluate_rank` (see `evaluate_full` for args)."""
    result = evaluate_full(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank, single_gallery_shot, seed
    )
    return result["cmc"], result["mAP"]
