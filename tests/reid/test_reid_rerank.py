"""k-reciprocal re-ranking on a 1-D case small enough to work out by hand."""

import numpy as np
import pytest

from denoiserep.reid import re_ranking

# Items on a line: queries q0 = 0, q1 = 10; gallery g0 = 1, g1 = 3, g2 = 9, g3 = 14.
QUERIES = np.array([0.0, 10.0])
GALLERY = np.array([1.0, 3.0, 9.0, 14.0])


def _dists():
    def d(a, b):
        return np.abs(a[:, None] - b[None, :])

    return d(QUERIES, GALLERY), d(QUERIES, QUERIES), d(GALLERY, GALLERY)


# Normalised original distance: squared distance / largest squared distance of the row
# (farthest item: q0 -> g3 at 14, q1 -> q0 at 10).
ORIGINAL = np.array([[1, 9, 81, 196], [81, 49, 1, 16]]) / np.array([[196], [100]])


def test_k1_1_mutual_nearest_neighbours():
    # With k1 = 1, R(i) = {i} plus i's nearest neighbour if that neighbour's nearest is i.
    # Nearest: q0->g0, g0->q0, q1->g2, g2->q1, g1->g0, g3->q1, so R(q0) = R(g0) = {q0, g0},
    # R(q1) = R(g2) = {q1, g2}, R(g1) = {g1}, R(g3) = {g3}; round(1/2) = 0 adds nothing.
    # V(i) = exp(-original) weights over R(i): with a = e^(-1/196) (row q0), b = e^(-1/169)
    # (row g0, max 13^2), V(q0) = (1, a)/(1 + a) on (q0, g0), V(g0) = (b, 1)/(1 + b).
    # Overlap sum(min) = b/(1+b) + a/(1+a); likewise for (q1, g2) with c = e^(-1/100),
    # e = e^(-1/81). Items with disjoint supports have overlap 0, Jaccard distance 1.
    a, b, c, e = np.exp(-1 / 196), np.exp(-1 / 169), np.exp(-1 / 100), np.exp(-1 / 81)
    s0 = a / (1 + a) + b / (1 + b)
    s1 = c / (1 + c) + e / (1 + e)
    jaccard = np.array(
        [[1 - s0 / (2 - s0), 1, 1, 1], [1, 1, 1 - s1 / (2 - s1), 1]],
    )
    result = re_ranking(*_dists(), k1=1, k2=1, lambda_value=0.3)
    np.testing.assert_allclose(result, 0.7 * jaccard + 0.3 * ORIGINAL, rtol=1e-12)


def test_k2_2_query_expansion():
    # k2 = 2 replaces V(i) by the mean of V over i and its nearest neighbour. Then
    # V(q0) = V(g0) (each other's nearest) -> Jaccard 0. V(g1) = (e_g1 + V(g0)) / 2:
    # overlap with V(q0) = b/(2(1+b)) + 1/(2(1+b)) = 1/2 -> Jaccard 1 - (1/2)/(3/2) = 2/3.
    # Symmetrically q1 ~ g2 (Jaccard 0) and g3 (nearest q1) -> 2/3; other pairs share nothing.
    jaccard = np.array([[0, 2 / 3, 1, 1], [1, 1, 0, 2 / 3]])
    result = re_ranking(*_dists(), k1=1, k2=2, lambda_value=0.3)
    np.testing.assert_allclose(result, 0.7 * jaccard + 0.3 * ORIGINAL, atol=1e-12)


def test_lambda_one_gives_normalised_original_distance():
    np.testing.assert_allclose(re_ranking(*_dists(), k1=2, k2=1, lambda_value=1.0), ORIGINAL)


def test_shape_and_argument_errors():
    q_g, q_q, g_g = _dists()
    with pytest.raises(ValueError, match="g_g_dist"):
        re_ranking(q_g, q_q, g_g[:3, :3])
    with pytest.raises(ValueError, match="q_q_dist"):
        re_ranking(q_g, g_g, g_g)
    with pytest.raises(ValueError, match="lambda_value"):
        re_ranking(q_g, q_q, g_g, lambda_value=1.5)
    with pytest.raises(ValueError, match="k1"):
        re_ranking(q_g, q_q, g_g, k1=0)
