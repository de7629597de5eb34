"""Hand-computed cases for CMC / mAP / mINP, plus a cross-check against a per-query loop."""

import numpy as np
import pytest

from denoiserep.reid import evaluate, evaluate_full

# Gallery shared by the hand cases: (pid, camid) per item.
G_PIDS = np.array([2, 1, 1, 3, 1])
G_CAMS = np.array([1, 1, 0, 1, 2])


def _three_queries():
    """Query A (pid 1, cam 0), B (pid 2, cam 0), C (pid 3, cam 1).

    A: ranked g2 .05 (pid 1 cam 0: discarded), g1 .08 (match), g0 .1, g3 .3, g4 .4 (match)
       -> kept matches at ranks 1 and 4: AP = (1/1 + 2/4) / 2 = 3/4, INP = 2/4.
    B: ranked g1 .1, g2 .2, g0 .3 (match), g4 .4, g3 .5 -> AP = 1/3, INP = 1/3, first rank 3.
    C: its only pid-3 item g3 has camera 1 too -> discarded -> no valid match, skipped.
    """
    distmat = np.array(
        [
            [0.1, 0.08, 0.05, 0.3, 0.4],
            [0.3, 0.1, 0.2, 0.5, 0.4],
            [0.9, 0.8, 0.7, 0.1, 0.6],
        ]
    )
    return distmat, np.array([1, 2, 3]), G_PIDS, np.array([0, 0, 1]), G_CAMS


def test_hand_case_map_minp_cmc():
    result = evaluate_full(*_three_queries(), max_rank=4)
    assert result["num_valid_queries"] == 2
    assert result["mAP"] == pytest.approx((3 / 4 + 1 / 3) / 2)
    assert result["mINP"] == pytest.approx((2 / 4 + 1 / 3) / 2)
    np.testing.assert_allclose(result["cmc"], [0.5, 0.5, 1.0, 1.0])
    assert result["rank1"] == 0.5
    assert result["rank5"] == 1.0 and result["rank10"] == 1.0


def test_evaluate_returns_cmc_and_map_only():
    cmc, mAP = evaluate(*_three_queries())
    assert len(cmc) == 5  # max_rank 50 clipped to the gallery size
    np.testing.assert_allclose(cmc, [0.5, 0.5, 1.0, 1.0, 1.0])
    assert mAP == pytest.approx(13 / 24)


def test_same_camera_match_is_discarded():
    # The only same-pid item ranked first shares the query's camera: it must not count.
    distmat = np.array([[0.0, 0.5, 0.9]])
    cmc, mAP = evaluate(
        distmat, np.array([7]), np.array([7, 8, 7]), np.array([0]), np.array([0, 1, 1])
    )
    np.testing.assert_allclose(cmc, [0.0, 1.0, 1.0])  # kept list: pid 8, then pid 7
    assert mAP == pytest.approx(0.5)


def test_ties_are_broken_by_gallery_order():
    distmat = np.full((1, 3), 0.5)
    q = (np.array([1]), np.array([0]))
    # match last in gallery order -> rank 2 among kept (item 0 is discarded: same camera)
    cmc, mAP = evaluate(distmat, q[0], np.array([1, 2, 1]), q[1], np.array([0, 1, 1]))
    np.testing.assert_allclose(cmc, [0.0, 1.0, 1.0])  # length = gallery size
    assert mAP == pytest.approx(0.5)
    # match first in gallery order -> rank 1
    cmc, mAP = evaluate(distmat, q[0], np.array([1, 2, 3]), q[1], np.array([1, 1, 1]))
    np.testing.assert_allclose(cmc, [1.0, 1.0, 1.0])
    assert mAP == 1.0


def test_single_gallery_shot_hand_case():
    # Kept gallery ranked: pid 2, pid 2, pid 1 (match), pid 3. Sampling one image per
    # identity always leaves one pid-2 image before the match: rank 2 in every repeat.
    distmat = np.array([[0.1, 0.2, 0.3, 0.4]])
    args = (distmat, np.array([1]), np.array([2, 2, 1, 3]), np.array([0]), np.array([1, 1, 1, 1]))
    result = evaluate_full(*args, single_gallery_shot=True)
    np.testing.assert_allclose(result["cmc"], [0.0, 1.0, 1.0, 1.0])
    assert result["mAP"] == pytest.approx(1 / 3)  # AP over all kept items: match at rank 3
    np.testing.assert_allclose(evaluate_full(*args)["cmc"], [0.0, 0.0, 1.0, 1.0])


def test_single_gallery_shot_is_seeded_average_of_ten_samplings():
    # Two matches (ranks 1 and 3 among kept) and a distractor identity in between: each
    # sampling puts the match at rank 1 or 2, so cmc[0] is a multiple of 1/10.
    distmat = np.array([[0.1, 0.2, 0.3]])
    args = (distmat, np.array([1]), np.array([1, 2, 1]), np.array([0]), np.array([1, 1, 2]))
    first = evaluate_full(*args, single_gallery_shot=True, seed=3)["cmc"]
    again = evaluate_full(*args, single_gallery_shot=True, seed=3)["cmc"]
    np.testing.assert_array_equal(first, again)
    assert first[1] == 1.0
    assert round(first[0] * 10) == pytest.approx(first[0] * 10)
    # Each identity's pick is uniform: the match is ranked first with probability exactly 1/2
    # (its first image picked). 200 identical queries x 10 samplings: sd of the mean ~0.011.
    many = (
        np.repeat(distmat, 200, axis=0),
        np.ones(200, int),
        args[2],
        np.zeros(200, int),
        args[4],
    )
    assert evaluate_full(*many, single_gallery_shot=True)["cmc"][0] == pytest.approx(0.5, abs=0.05)


def test_no_valid_query_raises():
    distmat = np.array([[0.1, 0.2]])
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate(distmat, np.array([1]), np.array([1, 2]), np.array([0]), np.array([0, 1]))


@pytest.mark.parametrize(
    "override, message",
    [
        ({"q_pids": np.array([1, 2])}, "q_pids"),
        ({"g_camids": np.array([0, 1])}, "g_camids"),
        ({"distmat": np.zeros(5)}, "2-D"),
        ({"distmat": np.array([[np.nan, 0, 0, 0, 0]])}, "NaN"),
        ({"max_rank": 0}, "max_rank"),
    ],
)
def test_input_validation(override, message):
    args = {
        "distmat": np.zeros((1, 5)),
        "q_pids": np.array([1]),
        "g_pids": G_PIDS,
        "q_camids": np.array([0]),
        "g_camids": G_CAMS,
    }
    args.update(override)
    with pytest.raises(ValueError, match=message):
        evaluate(**args)


def _loop_reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """torchreid's eval_market1501 logic, one query at a time, with a stable sort."""
    cmcs, aps, inps = [], [], []
    for i in range(len(distmat)):
        order = np.argsort(distmat[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        raw = (g_pids[order][keep] == q_pids[i]).astype(float)
        if not raw.any():
            continue
        cmcs.append(np.minimum(raw.cumsum(), 1)[:max_rank])
        precision = raw.cumsum() / np.arange(1, len(raw) + 1)
        aps.append((precision * raw).sum() / raw.sum())
        inps.append(raw.sum() / (np.flatnonzero(raw)[-1] + 1))
    return np.mean(cmcs, axis=0), np.mean(aps), np.mean(inps)


@pytest.mark.parametrize("levels", [None, 4, 1])  # continuous, heavily tied, all tied
def test_matches_per_query_reference(levels, monkeypatch):
    rng = np.random.default_rng(0)
    num_q, num_g = 40, 300
    q_pids, g_pids = rng.integers(0, 12, num_q), rng.integers(0, 12, num_g)
    q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    distmat = rng.random((num_q, num_g))
    if levels is not None:
        distmat = np.floor(distmat * levels)
    # Small chunks exercise chunked queries and batched tie resolution.
    monkeypatch.setattr("denoiserep.reid.metrics._CHUNK_ELEMENTS", 1000)
    result = evaluate_full(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    cmc, mAP, mINP = _loop_reference(distmat, q_pids, g_pids, q_cams, g_cams, 20)
    np.testing.assert_allclose(result["cmc"], cmc)
    assert result["mAP"] == pytest.approx(mAP)
    assert result["mINP"] == pytest.approx(mINP)
