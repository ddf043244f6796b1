"""benchmarks/residual_weight.py: the fused score per fixed weight, and the weight chosen on the other users."""

from __future__ import annotations

import numpy as np
import pytest


def _run(runs, scores: np.ndarray, targets: np.ndarray):
    empty = [np.array([], int)] * len(targets)
    return runs.Run({}, {"val": scores, "test": scores}, {"val": targets, "test": targets}, {"val": empty, "test": empty})


def test_fused_ndcg_per_weight_follows_the_sum_of_scores(benchmark_script):
    bench = benchmark_script("residual_weight")
    runs = benchmark_script("runs")
    # the language model puts item 1 first and the target 2 second; SASRec prefers the target by 1.0, so the target
    # moves up once w * 1.0 outweighs the language model's margin of 0.5
    lm = _run(runs, np.array([[-np.inf, 1.0, 0.5, 0.0]]), np.array([2]))
    sas = _run(runs, np.array([[-np.inf, 0.0, 1.0, 0.0]]), np.array([2]))
    curve = bench.ndcg_by_weight(lm, sas, "test", grid=(0.0, 0.25, 1.0))
    second = 1.0 / np.log2(3.0)
    assert curve.shape == (3, 1)
    assert curve[:, 0] == pytest.approx([second, second, 1.0])
    assert np.isfinite(curve).all()  # w = 0 on the padding column (-inf) gives no nan


def test_cross_fitted_choice_never_reads_the_users_own_validation(benchmark_script):
    bench = benchmark_script("residual_weight")
    rng = np.random.default_rng(1)
    val = rng.uniform(0.4, 0.6, (3, 8))  # three weights, eight users
    test = np.arange(24.0).reshape(3, 8)  # test value = 8 * chosen weight index + user: the choice can be read back
    out = bench.cross_fitted(val, test)
    for u in range(8):
        # whatever user u's own validation says, its weight (read back from test) stays the same
        for w in range(3):
            pushed = val.copy()
            pushed[:, u] = 0.0
            pushed[w, u] = 100.0
            assert bench.cross_fitted(pushed, test)[u] == out[u]
    # and pushing one user does move the choice of the users in the other fold
    pushed = val.copy()
    pushed[:, 0] = 0.0
    pushed[2, 0] = 100.0
    moved = bench.cross_fitted(pushed, test) != out
    assert moved.any() and (test[2, moved] == bench.cross_fitted(pushed, test)[moved]).all()
    # with no second matrix the chosen weight's own validation values come back; ties go to the smaller weight
    assert bench.cross_fitted(val).shape == (8,)
    tie = np.full((2, 4), 0.5)
    assert bench.cross_fitted(tie, np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])) == pytest.approx([1, 2, 3, 4])


def test_target_shares_count_each_popularity_group(benchmark_script):
    import torch

    bench = benchmark_script("residual_weight")
    counts = torch.tensor([0, 1, 3, 10, 200])  # items 1-4 by training interactions
    shares = bench.target_shares(counts, np.array([1, 4, 4, 3]), (5, 98))
    assert shares == pytest.approx({"pop<5": 0.25, "pop5-97": 0.25, "pop>=98": 0.5})
