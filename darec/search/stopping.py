"""Early stopping of search trials that are clearly worse: a percentile rule over the epochs (multi-fidelity).

After each of its validation epochs, a search trial compares its best validation NDCG@10 so far with the best-so-far
values that the finished trials had at the same epoch. Below their ``percentile``-th percentile it stops (it is
*pruned*): it was clearly worse, and the epochs it would have used go to other trials. This is the median stopping
rule of Google Vizier (Golovin et al., 2017) with a settable percentile. Nothing is pruned before ``grace_epochs``
epochs, at an epoch fewer than ``min_trials`` finished trials reached, or at the trial's last epoch (stopping then
saves nothing).

The search loop writes the thresholds to ``<out_dir>/stopping.json`` whenever a trial finishes; each trial process
reads the file after every validation epoch (:class:`darec.search.report.TrialReport`), so a trial sees the
thresholds of every trial finished so far, including those that finished while it trained.
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

    percentile: float | None = 50.0  # stop below this percentile of finished trials at the same epoch; null = never
    grace_epochs: int = 1  # epochs every trial gets before it can be stopped
    min_trials: int = 3  # finished trials that must have reached an epoch before it can stop anyone

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
    """``{epoch (1-based): {"value": percentile of best-so-far, "trials": n}}`` over the finished trials' curves,
    for the epochs at least ``min_trials`` of them reached; empty when the rule is off."""
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
                f"{cfg.percentile:g}th percentile of {int(ref['trials'])} finished trials at that epoch")
    return None


def write_thresholds(path: Path, curves: list[list[float]], cfg: EarlyStoppingConfig) -> None:
    """Write the rule and its current thresholds for the trial processes to read."""
    data = {"rule": {"percentile": cfg.percentile, "grace_epochs": cfg.grace_epochs, "min_trials": cfg.min_trials},
            "thresholds": {str(k): v for k, v in thresholds(curves, cfg).items()}}
    atomic_write_text(path, json.dumps(data, indent=1))


def read_thresholds(path: str | Path) -> tuple[EarlyStoppingConfig, dict[int, dict[str, float]]]:
    """The rule and thresholds written by :func:`write_thresholds` (the rule off when the file is missing)."""
    path = Path(path)
    if not path.is_file():
        return EarlyStoppingConfig(percentile=None), {}
    data: dict[str, Any] = json.loads(path.read_text())
    return EarlyStoppingConfig(**data["rule"]), {int(k): v for k, v in data["thresholds"].items()}
