"""``re_ranking`` against an independent implementation of Zhong et al. (CVPR 2017).

The reference below is written from the paper and the structure of the authors' published
code (the one torchreid ships as ``re_ranking``), as plain per-item loops with Python sets,
sharing nothing with ``denoiserep.reid.rerank``:

* original distance: squared, each item's row divided by that item's largest squared distance
  (the published code divides columns then transposes; the inputs here are symmetric);
* R(i, k): the j among i's k + 1 nearest items (i itself included) that have i among their
  own k + 1 nearest;
* expansion: R*(i) = R(i, k1) plus R(j, round(k1 / 2)) for every j in R(i, k1) whose set has
  more than 2/3 of its members in R(i, k1);
* V[i] = exp(-d(i, .)) over R*(i), normalised to sum 1; with k2 > 1 it is replaced by the mean
  of V over i's k2 nearest items (local query expansion);
* Jaccard distance 1 - sum_k min(V_q, V_g) / sum_k max(V_q, V_g); for V rows summing to 1,
  sum max = 2 - sum min, which is the published formula;
* final = (1 - lambda) * Jaccard + lambda * original.

Note on k1: a candidate set R(j, k) has at most k + 1 members, and it can only add a new
member if more than 2/3 of them (but not all) are already in R(i, k1), i.e. it needs >= 4
members: round(k1 / 2) >= 3, so k1 >= 6 (numpy rounds half to even: round(2.5) = 2). With
k1 <= 5 the expansion step can never change anything. The random tests use k1 = 6, 7 and 20
and check that the expansion does add neighbours.
"""

from __future__ import annotations

import numpy as np
import pytest

from denoiserep.reid import re_ranking


def reference_re_ranking(q_g, q_q, g_g, k1, k2, lam, stats=None, expand=True):
    nq, ng = q_g.shape
    n = nq + ng
    full = np.zeros((n, n))
    full[:nq, :nq] = q_q
    full[:nq, nq:] = q_g
    full[nq:, :nq] = q_g.T
    full[nq:, nq:] = g_g
    sq = full**2
    orig = np.array([[sq[i, j] / sq[i].max() for j in range(n)] for i in range(n)])
    order = [sorted(range(n), key=lambda j, i=i: (orig[i, j], j)) for i in range(n)]

    def reciprocal(i, k):
        return {j for j in order[i][: k + 1] if i in order[j][: k + 1]}

    half = int(round(k1 / 2))  # Python's round is also half to even
    V = np.zeros((n, n))
    added = 0
    for i in range(n):
        core = reciprocal(i, k1)
        expanded = set(core)
        for j in core if expand else ():
            cand = reciprocal(j, half)
            if len(cand & core) > 2 / 3 * len(cand):
                expanded |= cand
        added += len(expanded - core)
        members = sorted(expanded)
        w = np.array([np.exp(-orig[i, m]) for m in members])
        for m, wm in zip(members, w / w.sum(), strict=True):
            V[i, m] = wm
    if stats is not None:
        stats["expansion_added"] = added
    if k2 > 1:
        V = np.array([np.mean([V[j] for j in order[i][:k2]], axis=0) for i in range(n)])
    final = np.zeros((nq, ng))
    for q in range(nq):
        for g in range(ng):
            vq, vg = V[q], V[nq + g]
            jaccard = 1 - np.minimum(vq, vg).sum() / np.maximum(vq, vg).sum()
            final[q, g] = (1 - lam) * jaccard + lam * orig[q, nq + g]
    return final


def euclidean(a, b):
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def clustered_features(seed, nq=12, ng=40, ids=8, dim=16):
    """Identities as cluster centres; queries and gallery items scattered around them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim))
    q = centres[rng.integers(0, ids, nq)] + 0.6 * rng.normal(size=(nq, dim))
    g = centres[rng.integers(0, ids, ng)] + 0.6 * rng.normal(size=(ng, dim))
    return q, g


@pytest.mark.parametrize(
    ("seed", "k1", "k2", "lam"),
    [(0, 6, 1, 0.3), (1, 7, 3, 0.3), (2, 20, 6, 0.3), (3, 8, 4, 0.0), (4, 6, 2, 0.5)],
)
def test_matches_reference_on_random_features(seed, k1, k2, lam):
    q, g = clustered_features(seed)
    dists = euclidean(q, g), euclidean(q, q), euclidean(g, g)
    stats = {}
    expected = reference_re_ranking(*dists, k1, k2, lam, stats)
    assert stats["expansion_added"] > 0, "the case must exercise the expansion step"
    got = re_ranking(*dists, k1=k1, k2=k2, lambda_value=lam)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    # the expansion changes these distances: a re-ranking without it would fail here
    no_expansion = reference_re_ranking(*dists, k1, k2, lam, expand=False)
    assert np.abs(no_expansion - expected).max() > 1e-3


# Hand case in the plane: query q = (0, 0). Gallery: a = (1, 0) sits in front of a tight
# cluster {a2 = (1.8, 0), a3 = (1.8, 0.3)}; b = (-1.5, 0) and c = (-2.9, 0) lie behind q.
# Originally a is q's nearest item (distance 1, then b 1.5, a2 1.8, a3 1.82, c 2.9).
POINTS = {
    "q": (0.0, 0.0),
    "a": (1.0, 0.0),
    "a2": (1.8, 0.0),
    "a3": (1.8, 0.3),
    "b": (-1.5, 0.0),
    "c": (-2.9, 0.0),
}
GALLERY = ["a", "a2", "a3", "b", "c"]


def hand_dists():
    q = np.array([POINTS["q"]])
    g = np.array([POINTS[k] for k in GALLERY])
    return euclidean(q, g), euclidean(q, q), euclidean(g, g)


def test_hand_case_where_re_ranking_changes_the_ranking():
    # k1 = 2, k2 = 1: each item's 3 nearest (itself included):
    #   q: q, a, b      a: a, a2, a3     a2: a2, a3, a     a3: a3, a2, a
    #   b: b, c, q      c: c, b, q
    # k-reciprocal sets: R(q) = {q, b} (a's 3 nearest miss q), R(a) = {a, a2, a3},
    #   R(b) = {b, q, c}, R(c) = {c, b} (q's 3 nearest miss c), R(a2) = R(a3) = {a, a2, a3}.
    # round(2 / 2) = 1: candidate sets have <= 2 members and never expand anything.
    # V(q) lives on {q, b}, V(a) on {a, a2, a3}: no overlap, Jaccard(q, a) = 1, while b
    # (and c, through b) share support with q. Re-ranked (lambda = 0.3): b 0.416 comes
    # first, a 0.736 second, and c 0.806 (originally last) moves ahead of a2 and a3.
    def sq(u, v):
        return (POINTS[u][0] - POINTS[v][0]) ** 2 + (POINTS[u][1] - POINTS[v][1]) ** 2

    names = ["q", *GALLERY]
    row_max = {u: max(sq(u, v) for v in names) for u in names}

    def d(u, v):  # each item's row normalised by its largest squared distance
        return sq(u, v) / row_max[u]

    def V(u, support):
        w = {v: np.exp(-d(u, v)) for v in support}
        total = sum(w.values())
        return {v: w[v] / total for v in support}

    sets = {
        "q": ["q", "b"],
        "a": ["a", "a2", "a3"],
        "a2": ["a", "a2", "a3"],
        "a3": ["a", "a2", "a3"],
        "b": ["b", "q", "c"],
        "c": ["c", "b"],
    }
    vq = V("q", sets["q"])

    def jaccard(g):
        vg = V(g, sets[g])
        overlap = sum(min(vq.get(k, 0.0), vg.get(k, 0.0)) for k in names)
        return 1 - overlap / (2 - overlap)

    expected = np.array([[0.7 * jaccard(g) + 0.3 * d("q", g) for g in GALLERY]])
    got = re_ranking(*hand_dists(), k1=2, k2=1, lambda_value=0.3)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(got, reference_re_ranking(*hand_dists(), 2, 1, 0.3), rtol=1e-12)
    original_order = [GALLERY[i] for i in np.argsort(hand_dists()[0][0], kind="stable")]
    new_order = [GALLERY[i] for i in np.argsort(got[0], kind="stable")]
    assert original_order == ["a", "b", "a2", "a3", "c"]
    assert new_order == ["b", "a", "c", "a2", "a3"]
    assert jaccard("a") == 1.0 and jaccard("b") < 1.0 and jaccard("c") < 1.0
