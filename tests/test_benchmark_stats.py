"""The benchmarks' paired comparisons: over users, and over seeds and users."""

from __future__ import annotations

import numpy as np
import pytest


def test_per_seed_values_give_the_same_user_interval_as_their_mean_and_add_one_over_seeds_too(benchmark_script):
    common = benchmark_script("common")
    rng = np.random.default_rng(0)
    mine, theirs = rng.random((3, 500)), rng.random((3, 500))
    two = common.paired_comparison(mine, theirs)
    one = common.paired_comparison(mine.mean(0), theirs.mean(0))
    assert two["bootstrap_95ci"] == one["bootstrap_95ci"] and two["mean"] == pytest.approx(one["mean"])
    assert two["ratio"] == pytest.approx(mine.mean() / theirs.mean())
    assert two["seeds"] == 3 and "seed_user_95ci" not in one


def test_runs_that_disagree_widen_the_interval_that_resamples_seeds_and_not_the_one_over_users(benchmark_script):
    common = benchmark_script("common")
    # every user gains exactly +0.01 on average over the seeds, but one seed's run gains 0.05 and the others lose 0.01
    diff = np.tile(np.array([[0.05], [-0.01], [-0.01]]), (1, 400))
    out = common.paired_comparison(diff, np.zeros_like(diff))
    assert out["bootstrap_95ci"] == pytest.approx([0.01, 0.01])
    lo, hi = out["seed_user_95ci"]
    assert lo == pytest.approx(-0.01) and hi == pytest.approx(0.05)
    constant = common.seed_user_bootstrap(np.full((4, 50), 0.02))
    assert constant == pytest.approx([0.02, 0.02])


def test_unpaired_shapes_are_refused(benchmark_script):
    common = benchmark_script("common")
    with pytest.raises(ValueError, match="equal shapes"):
        common.paired_comparison(np.zeros((3, 10)), np.zeros((2, 10)))
