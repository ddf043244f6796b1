"""benchmarks/popularity_bias.py: the logit adjustment, the beta chosen on validation, and the per-group means."""

from __future__ import annotations

import numpy as np
import pytest


def _run(runs, targets: dict, history: dict, scores: dict | None = None):
    return runs.Run({}, scores or {}, targets, history)


def test_beta_is_chosen_on_validation_and_applied_to_test(benchmark_script):
    bench = benchmark_script("popularity_bias")
    runs = benchmark_script("runs")
    # item 1 is popular and scored just above the rare target 3; a correction of 0.1 per unit of log popularity
    # moves the target to the top, while beta 0 leaves it second
    log_pop = np.array([0.0, 5.0, 1.0, 0.0])
    scores = np.array([[-np.inf, 1.2, 0.0, 1.0]] * 2)
    empty = [np.array([], int)] * 2
    run = _run(runs, {"val": np.array([3, 3]), "test": np.array([3, 3])}, {"val": empty, "test": empty})
    beta, per_user = bench.choose_beta(run, {"val": scores, "test": scores}, log_pop)
    assert beta > 0.04 and (scores[0, 1] - beta * 5.0) < scores[0, 3]
    assert per_user["val"] == pytest.approx([1.0, 1.0]) and per_user["test"] == pytest.approx([1.0, 1.0])
    assert np.isneginf(bench.adjusted(scores, log_pop, 0.5)[:, 0]).all()  # padding stays out
    # the target scored first already: no correction is needed, and the smallest beta wins the tie
    first = np.array([[-np.inf, 1.0, 0.0, 2.0]] * 2)
    beta, _ = bench.choose_beta(run, {"val": first, "test": first}, log_pop)
    assert beta == 0.0


def test_top10_popularity_skips_history_and_groups_average_their_users(benchmark_script):
    bench = benchmark_script("popularity_bias")
    runs = benchmark_script("runs")
    n = 13  # 12 items: the user's history holds item 12, the best-scored one
    scores = np.arange(n, dtype=float)[None, :]
    log_pop = np.zeros(n)
    log_pop[12] = 100.0  # would dominate the mean if the history were not masked
    log_pop[2] = 10.0  # in the top 10 (items 2..11)
    run = _run(runs, {"val": np.array([1]), "test": np.array([1])}, {"val": [np.array([12])], "test": [np.array([12])]})
    assert bench.top10_log_pop(run, "test", scores, log_pop) == pytest.approx(1.0)
    # per-user values averaged per group, by label; a group without users is left out rather than reported as nan
    by = bench.by_group(np.array([1.0, 0.0, 0.5, 0.25]), np.array([0, 2, 2, 0]), ["pop<5", "pop5-14", "pop>=15"])
    assert by == {"pop<5": 0.625, "pop>=15": 0.25}
