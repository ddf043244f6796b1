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

The percentile rule cannot judge the first trials of a search: fewer than ``min_trials`` others have reached an epoch
while they train. With ``reference`` set, the search first trains a reference run, its uniform baseline
(``rerun.baseline`` on every layer) at the search budget, in ``<out_dir>/reference/``, beside the first trials. A trial
whose best value so far is below ``reference`` times the reference run's best so far at the same epoch stops as
clearly worse, from its first epoch on. Where the reference run has not reached the trial's epoch yet, the trial is
judged at the latest epoch both have reached, so a slow reference delays a stop but never wrongly causes one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from darec.atomic import atomic_write_text
from darec.errors import ConfigError

PRUNED = "pruned"  # the stop reason's first word for a trial stopped by this rule
REFERENCE_DIR = "reference"  # the reference run's folder under the search's out_dir (beside stopping.json)


@dataclass
class EarlyStoppingConfig:
    """When a search trial stops before its last epoch."""

    percentile: float | None = 50.0  # stop below this percentile of the other trials at the same epoch; null = never
    grace_epochs: int = 1  # epochs every trial gets before it can be stopped
    min_trials: int = 3  # other trials (finished or running) that must have reached an epoch before it can stop anyone
    # stop below this fraction of the reference run's (the uniform baseline at the search budget) best so far at the same
    # epoch; the search trains that run first. null = no reference run
    reference: float | None = None

    def validate(self) -> "EarlyStoppingConfig":
        ref = self.reference
        if ref is not None and (isinstance(ref, bool) or not isinstance(ref, (int, float)) or not 0 < ref <= 1):
            raise ConfigError(f"early_stopping.reference must be a fraction in (0, 1] or null, got {ref!r}")
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


@dataclass
class Thresholds:
    """What a search trial is judged against after an epoch."""

    rule: EarlyStoppingConfig
    table: dict[int, dict[str, float]] = field(default_factory=dict)  # the other trials' percentile per epoch
    reference: list[float] = field(default_factory=list)  # the reference run's curve so far (empty: none yet)


def decide(judge: Thresholds, curve: list[float], max_epochs: int, metric: str) -> str | None:
    """The reason to stop a trial whose validation curve of ``metric`` so far is ``curve``, or None to go on."""
    cfg, epoch = judge.rule, len(curve)
    if epoch < cfg.grace_epochs or epoch >= max_epochs:
        return None
    if cfg.reference is not None and judge.reference:
        seen = min(epoch, len(judge.reference))  # the latest epoch both have reached
        best, floor = max(curve[:seen]), cfg.reference * max(judge.reference[:seen])
        if seen >= cfg.grace_epochs and best < floor:
            return (f"{PRUNED} after epoch {epoch}: best {metric} by epoch {seen} {best:.4f} below {floor:.4f}, "
                    f"{cfg.reference:g}x the reference run's (the uniform baseline) by that epoch")
    if cfg.percentile is None or epoch not in judge.table:
        return None
    best, ref = max(curve), judge.table[epoch]
    if best < ref["value"]:
        return (f"{PRUNED} after epoch {epoch}: best {metric} {best:.4f} below {ref['value']:.4f}, the "
                f"{cfg.percentile:g}th percentile of {int(ref['trials'])} other trials at that epoch")
    return None


def write_thresholds(path: Path, curves: list[list[float]], cfg: EarlyStoppingConfig,
                     reference: list[float] | None = None) -> None:
    """Write the rule, its current thresholds and the finished reference run's curve for the trial processes."""
    data = {"rule": asdict(cfg), "thresholds": {str(k): v for k, v in thresholds(curves, cfg).items()},
            "reference": [float(v) for v in reference or []]}
    atomic_write_text(path, json.dumps(data, indent=1))


def report_curve(path: Path, metric: str) -> list[float] | None:
    """The validation curve of ``metric`` so far in a trial report (``result.json``, rewritten after every validation
    epoch); None when it is missing, being replaced right now, or holds an error."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError):  # missing, or removed or being replaced right now: the next epoch reads it again
        return None
    if report.get("error"):
        return None
    return [float(h[metric]) for h in report.get("val", []) if metric in h]


def trial_curves(trials_dir: Path, metric: str, exclude: Path | None = None) -> list[list[float]]:
    """The validation curves of ``metric`` so far of the search trials under ``trials_dir`` (their ``*/result.json``
    reports, rewritten after every validation epoch), finished or running; not the report ``exclude``, nor trials
    that failed with an error."""
    own = exclude.resolve() if exclude is not None else None
    curves = []
    for path in sorted(Path(trials_dir).glob("*/result.json")):
        if own is not None and path.resolve() == own:
            continue
        curve = report_curve(path, metric)
        if curve:
            curves.append(curve)
    return curves


def live_thresholds(stop_file: str | Path, own_report: str | Path, metric: str) -> Thresholds:
    """The rule in ``stop_file`` with its thresholds over every other trial of the search so far, finished or running
    (the reports under ``<stop_file's folder>/trials/``; the finished trials' thresholds in ``stop_file`` when that
    folder holds no other report), and the reference run's curve so far (``<folder>/reference/result.json`` while it
    runs)."""
    judge = read_thresholds(stop_file)
    folder = Path(stop_file).parent
    curves = trial_curves(folder / "trials", metric, exclude=Path(own_report))
    if curves:
        judge.table = thresholds(curves, judge.rule)
    running = report_curve(folder / REFERENCE_DIR / "result.json", metric) if judge.rule.reference is not None else None
    if running and len(running) > len(judge.reference):
        judge.reference = running
    return judge


def read_thresholds(path: str | Path) -> Thresholds:
    """What :func:`write_thresholds` wrote (the rule off when the file is missing)."""
    path = Path(path)
    if not path.is_file():
        return Thresholds(EarlyStoppingConfig(percentile=None))
    data: dict[str, Any] = json.loads(path.read_text())
    return Thresholds(EarlyStoppingConfig(**data["rule"]), {int(k): v for k, v in data["thresholds"].items()},
                      [float(v) for v in data.get("reference", [])])
