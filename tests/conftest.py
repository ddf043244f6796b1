"""Shared fixtures: small synthetic prepared datasets, written once per test session; the benchmark scripts."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

# Tests use tiny models: one thread is as fast, and avoids oversubscribing shared CI cores.
torch.set_num_threads(1)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load_benchmark(name: str):
    """The benchmark script ``benchmarks/<name>.py``, loaded as the module ``bench_<name>`` (its own imports find
    ``benchmarks/``; registered, since dataclasses look their module up while being built)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"bench_{name}"] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="session")
def benchmark_script():
    """Loads a benchmark script by name (``benchmark_script("runs")``: ``benchmarks/runs.py``)."""
    return _load_benchmark


def _write_stored_run(work: Path, name: str, meta: dict, scores: np.ndarray, targets: np.ndarray,
                      lm_scores: np.ndarray | None = None) -> Path:
    """A finished run as ``benchmarks/runs.py`` stores it (``meta.json``, score matrices, targets, empty histories),
    the same ``scores`` for validation and test; ``lm_scores`` adds a residual DARec's language-model-only scores."""
    d = work / name
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps(meta))
    for s in ("val", "test"):
        np.save(d / f"{s}_scores.npy", scores)
        if lm_scores is not None:
            np.save(d / f"{s}_scores_lm.npy", lm_scores)
    np.savez(d / "eval_data.npz", val_targets=targets, test_targets=targets)
    (d / "histories.json").write_text(json.dumps({s: [[] for _ in targets] for s in ("val", "test")}))
    return d


@pytest.fixture
def stored_run():
    """Writes a finished benchmark run (see :func:`_write_stored_run`) for the benchmark readers' tests."""
    return _write_stored_run


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """A synthetic prepared dataset (300 users, 120 items, 6 clusters, 5 cold items)."""
    from darec.data.synth import SynthConfig, write_synthetic

    out = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic(out, SynthConfig(num_cold=5))
    return out


@pytest.fixture(scope="session")
def small_synth_dir(tmp_path_factory):
    """A smaller synthetic dataset for model tests (120 users, 40 items, 4 clusters)."""
    from darec.data.synth import SynthConfig, write_synthetic

    out = tmp_path_factory.mktemp("synth_small") / "data"
    write_synthetic(out, SynthConfig(num_users=120, num_items=40, num_clusters=4, min_len=6, max_len=16, seed=1))
    return out
