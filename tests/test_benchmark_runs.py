"""The benchmarks' run store: a run is reused by name, so its name must carry every setting that changes it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _runs():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("bench_runs", ROOT / "benchmarks" / "runs.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_runs"] = module  # its dataclasses look their module up while being built
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_converged_darec_runs_are_named_by_sasrecs_length_and_both_patiences_and_default_to_the_shipped_configs() -> None:
    runs = _runs()
    shipped = yaml.safe_load((ROOT / "configs" / "darec_ml100k.yaml").read_text())
    stop = next(c["init_args"] for c in shipped["trainer"]["callbacks"] if c["class_path"].endswith("EarlyStopping"))
    assert runs.shipped_darec_patience() == stop["patience"]
    names = {runs.converged_darec_name(seed, n, sas, dp) for seed in (0, 1) for n in (50, 100) for sas in (11, 25) for dp in (3, 6)}
    assert len(names) == 16, "a run at another seed, SASRec length or patience must never be reused"
    assert runs.converged_darec_name(2, 100, 25, 6) == "darec_p6_sasL100p25_s2"
    assert runs.converged_darec_name(2, 100, 25, 3, 0.00036) == "darec_p3_lr0.00036_sasL100p25_s2"
    assert runs.converged_darec_name(2, 100, 25, 3, None, ["skip", "serial:64", "none"]) == (
        "darec_p3_adskip-serial64-none_sasL100p25_s2")
    assert runs.darec_name("ablation_full_e4", 1, 50, 25) == "ablation_full_e4_sasL50p25_s1"
