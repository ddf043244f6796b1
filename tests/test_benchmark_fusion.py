"""benchmarks/fusion_norm.py: per-user standardisation and the weight chosen on validation."""

from __future__ import annotations

import numpy as np
import pytest


def test_standardise_gives_each_row_mean_zero_and_unit_spread_and_keeps_padding(benchmark_script):
    bench = benchmark_script("fusion_norm")
    rows = np.array([[-np.inf, 1.0, 2.0, 3.0], [-np.inf, 10.0, 30.0, 50.0]])
    z = bench.standardise(rows)
    assert np.isneginf(z[:, 0]).all()
    assert np.allclose(z[:, 1:].mean(1), 0.0) and np.allclose(z[:, 1:].std(1), 1.0)
    assert np.allclose(z[0, 1:], z[1, 1:])  # the same ranking at different scales gives the same row


def test_fuse_keeps_padding_out_at_zero_weight(benchmark_script):
    bench = benchmark_script("fusion_norm")
    lm = np.array([[-np.inf, 1.0, 2.0]])
    sas = np.array([[-np.inf, 5.0, 0.0]])
    assert np.isneginf(bench.fuse(lm, sas, 0.0)[0, 0])
    assert bench.fuse(lm, sas, 0.5)[0, 1:] == pytest.approx([3.5, 2.0])


def test_choose_reads_validation_and_applies_its_weight_to_test(benchmark_script):
    bench = benchmark_script("fusion_norm")
    runs = benchmark_script("runs")
    # two users, five items (column 0 padding); the LM alone ranks each target 3rd, SASRec ranks it 1st
    lm = np.array([[-np.inf, 3.0, 2.0, 1.0, 0.0, 0.5]] * 2)
    sas = np.array([[-np.inf, 0.0, 0.0, 9.0, 0.0, 0.0]] * 2)
    targets = np.array([3, 3])
    run = runs.Run({}, {}, {"val": targets, "test": targets}, {"val": [np.array([], int)] * 2, "test": [np.array([], int)] * 2})
    w, per_user = bench.choose(run, {"val": lm, "test": lm}, {"val": sas, "test": sas}, (0.0, 1.0))
    assert w == 1.0
    assert per_user["test"] == pytest.approx([1.0, 1.0])
    w, per_user = bench.choose(run, {"val": lm, "test": lm}, {"val": sas, "test": sas}, (0.0,))
    assert per_user["val"] == pytest.approx([0.5, 0.5])  # rank 2 (0-based): 1 / log2(4)
