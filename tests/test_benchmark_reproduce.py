"""benchmarks/reproduce.py: stored runs against the same runs trained again."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _meta(name: str, commit: str, curve: list[float], test: float, alpha: float | None = None) -> dict:
    meta = {"spec": {"name": name}, "git": {"commit": commit}, "epochs_run": len(curve),
            "curve": [{"epoch": i, "val_ndcg@10": v} for i, v in enumerate(curve)], "val_ndcg@10": curve[-1],
            "test_ndcg@10": test}
    if alpha is not None:
        meta["residual_weight"] = alpha
    return meta


def test_an_identical_run_is_equal_and_any_change_is_caught(benchmark_script, stored_run, tmp_path):
    bench = benchmark_script("reproduce")
    ref, again = tmp_path / "ref", tmp_path / "again"
    scores = np.array([[-np.inf, 2.0, 1.0, 0.0], [-np.inf, 0.0, 1.0, 2.0]], dtype=np.float32)
    targets = np.array([1, 3])
    stored_run(ref, "same", _meta("same", "a" * 40, [0.1, 0.2], 1.0, 0.5), scores, targets, scores)
    stored_run(again, "same", _meta("same", "b" * 40, [0.1, 0.2], 1.0, 0.5), scores, targets, scores)
    row = bench.compare(ref, again, "same")
    assert row["equal"] and row["curve_max_abs_diff"] == 0.0 and row["test_score_max_abs_diff"] == 0.0
    assert row["commits"] == {"reference": "a" * 40, "again": "b" * 40}
    # a later epoch of the curve moved: not equal, and the size of the move is reported
    stored_run(ref, "curve", _meta("curve", "a" * 40, [0.1, 0.2], 1.0), scores, targets)
    stored_run(again, "curve", _meta("curve", "b" * 40, [0.1, 0.21], 1.0), scores, targets)
    row = bench.compare(ref, again, "curve")
    assert not row["equal"] and row["curve_max_abs_diff"] == pytest.approx(0.01)
    # the same curve, but one user's target drops from first to second place: caught per user
    moved = scores.copy()
    moved[0, 2] = 3.0
    stored_run(ref, "rank", _meta("rank", "a" * 40, [0.1], 1.0), scores, targets)
    stored_run(again, "rank", _meta("rank", "b" * 40, [0.1], 1.0), moved, targets)
    row = bench.compare(ref, again, "rank")
    assert not row["equal"] and row["test_per_user_ndcg_max_abs_diff"] == pytest.approx(1.0 - 1.0 / np.log2(3.0))
    # a run that stopped at another epoch has no curve difference to give
    stored_run(ref, "longer", _meta("longer", "a" * 40, [0.1], 1.0), scores, targets)
    stored_run(again, "longer", _meta("longer", "b" * 40, [0.1, 0.1], 1.0), scores, targets)
    row = bench.compare(ref, again, "longer")
    assert row["curve_max_abs_diff"] is None and not row["equal"]


def test_main_compares_only_runs_trained_in_the_work_folder_and_refuses_unfinished_ones(benchmark_script, stored_run, tmp_path):
    bench = benchmark_script("reproduce")
    ref, again = tmp_path / "ref", tmp_path / "again"
    scores = np.array([[-np.inf, 2.0, 1.0]], dtype=np.float32)
    for name in ("darec", "sasrec"):
        stored_run(ref, name, _meta(name, "a" * 40, [0.3], 1.0), scores, np.array([1]))
    stored_run(again, "darec", _meta("darec", "b" * 40, [0.3], 1.0), scores, np.array([1]))
    (again / "sasrec").symlink_to(ref / "sasrec")  # linked in, not trained again: not compared
    out = tmp_path / "r.json"
    result = bench.main(["--reference-dir", str(ref), "--work-dir", str(again), "--out", str(out)])
    assert [r["name"] for r in result["runs"]] == ["darec"] and result["all_equal"]
    assert json.loads(out.read_text())["all_equal"] is True
    with pytest.raises(SystemExit, match="not finished in both folders: missing"):
        bench.main(["--reference-dir", str(ref), "--work-dir", str(again), "--runs", "missing", "--out", str(out)])
    with pytest.raises(SystemExit, match="other test targets"):
        stored_run(again, "moved", _meta("moved", "b" * 40, [0.3], 1.0), scores, np.array([2]))
        stored_run(ref, "moved", _meta("moved", "a" * 40, [0.3], 1.0), scores, np.array([1]))
        bench.compare(ref, again, "moved")
