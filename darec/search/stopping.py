"""Early stopping of search trials that are clearly worse: a percentile rule over the epochs (multi-fidelity).

After each of its validation epochs, a search trial compares its best validation NDCG@10 so far with the best-so-far
values that the other search trials had at the same epoch. Below their ``percentile``-th percentile it stops (it is
*pruned*): it was clearly worse, and the epochs it would have used go to other trials. This is the median stopping
rule of Google Vizier (Golovin et al., 2017) with a settable percentile. Nothing is pruned before ``grace_epochs``
epochs, at an epoch fewer than ``min_trials`` other trials reached, or at the trial's last epoch (stopping then
saves nothing).

The other trials are the finished ones and those still running: a value at an epoch is final once that epoch's
validation has run, so trials that started together are judged against each other, as in asynchronous successive
halving. Without this a first wave of ``parallel`` trials could not be judged at all, since none of them has finished
when the others reach epoch 1. The search loop writes the rule and the finished trials' thresholds to
``<out_dir>/stopping.json`` whenever a trial finishes. After every validation epoch each trial process
(:class:`darec.search.report.TrialReport`) reads the rule from there and the curves so far from every other trial's
report under ``<out_dir>/trials/`` (:func:`live_thresholds`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from darec.atomic import atomic_write_text
from darec.errors import ConfigError

PRUNED = "pruned"  # the stop reason's first word for a trial stopped by this rule


@dataclass
class EarlyStoppingConfig:
    """When a search trial stops before its last epoch."""

    percentile: float | None = 50.0  # stop below this percentile of the other trials at the same epoch; null = never
    grace_epochs: int = 1  # epochs every trial gets before it can be stopped
    min_trials: int = 3  # other trials (finished or running) that must have reached an epoch before it can stop anyone

    def validate(self) -> "EarlyStoppingConfig":
        if self.percentile is not None and not (isinstance(self.percentile, (int, float)) and 0 < self.percentile < 100):
            raise ConfigError(f"early_stopping.percentile must be in (0, 100) or null, got {self.percentile!r}")
        for key in ("grace_epochs", "min_trials"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"early_stopping.{key} must be a positive integer, got {value!r}")
        return self


def best_so_far(curve: list[float]) -> list[float]:
    """The running maximum of a validation curve."""
    return [float(v) for v in np.maximum.accumulate(np.asarray(curve, dtype=float))] if curve else []


def thresholds(curves: list[list[float]], cfg: EarlyStoppingConfig) -> dict[int, dict[str, float]]:
    """``{epoch (1-based): {"value": percentile of best-so-far, "trials": n}}`` over the trials' curves, for the
    epochs at least ``min_trials`` of them reached; empty when the rule is off."""
    if cfg.percentile is None:
        return {}
    running = [best_so_far(c) for c in curves if c]
    out: dict[int, dict[str, float]] = {}
    for epoch in range(1, max((len(c) for c in running), default=0) + 1):
        values = [c[epoch - 1] for c in running if len(c) >= epoch]
        if len(values) >= cfg.min_trials:
            out[epoch] = {"value": float(np.percentile(values, cfg.percentile)), "trials": len(values)}
    return out


def decide(table: dict[int, dict[str, float]], cfg: EarlyStoppingConfig, curve: list[float], max_epochs: int,
           metric: str) -> str | None:
    """The reason to stop a trial whose validation curve of ``metric`` so far is ``curve``, or None to go on."""
    epoch = len(curve)
    if cfg.percentile is None or epoch < cfg.grace_epochs or epoch >= max_epochs or epoch not in table:
        return None
    best, ref = max(curve), table[epoch]
    if best < ref["value"]:
        return (f"{PRUNED} after epoch {epoch}: best {metric} {best:.4f} below {ref['value']:.4f}, the "
                f"{cfg.percentile:g}th percentile of {int(ref['trials'])} other trials at that epoch")
    return None


def write_thresholds(path: Path, curves: list[list[float]], cfg: EarlyStoppingConfig) -> None:
    """Write the rule and its current thresholds for the trial processes to read."""
    data = {"rule": {"percentile": cfg.percentile, "grace_epochs": cfg.grace_epochs, "min_trials": cfg.min_trials},
            "thresholds": {str(k): v for k, v in thresholds(curves, cfg).items()}}
    atomic_write_text(path, json.dumps(data, indent=1))


def trial_curves(trials_dir: Path, metric: str, exclude: Path | None = None) -> list[list[float]]:
    """The validation curves of ``metric`` so far of the search trials under ``trials_dir`` (their ``*/result.json``
    reports, rewritten after every validation epoch), finished or running; not the report ``exclude``, nor trials
    that failed with an error."""
    own = exclude.resolve() if exclude is not None else None
    curves = []
    for path in sorted(Path(trials_dir).glob("*/result.json")):
        if own is not None and path.resolve() == own:
            continue
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):  # removed or being replaced right now: the next epoch reads it again
            continue
        if report.get("error"):
            continue
        curve = [float(h[metric]) for h in report.get("val", []) if metric in h]
        if curve:
            curves.append(curve)
    return curves


def live_thresholds(stop_file: str | Path, own_report: str | Path, metric: str
                    ) -> tuple[EarlyStoppingConfig, dict[int, dict[str, float]]]:
    """The rule in ``stop_file`` and its thresholds over every other trial of the search so far, finished or running
    (the reports under ``<stop_file's folder>/trials/``); the finished trials' thresholds in ``stop_file`` when that
    folder holds no other report."""
    rule, table = read_thresholds(stop_file)
    curves = trial_curves(Path(stop_file).parent / "trials", metric, exclude=Path(own_report))
    return (rule, thresholds(curves, rule)) if curves else (rule, table)


def read_thresholds(path: str | Path) -> tuple[EarlyStoppingConfig, dict[int, dict[str, float]]]:
    """The rule and thresholds written by :func:`write_thresholds` (the rule off when the file is missing)."""
    path = Path(path)
    if not path.is_file():
        return EarlyStoppingConfig(percentile=None), {}
    data: dict[str, Any] = json.loads(path.read_text())
    return EarlyStoppingConfig(**data["rule"]), {int(k): v for k, v in data["thresholds"].items()}
