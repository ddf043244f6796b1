"""One trial: a fit config built from the base config, run by ``darec fit`` in its own process.

:class:`FitObjective` is the real objective. The search loop takes any callable ``(TrialJob) -> TrialResult``,
so tests plug in a synthetic objective instead of training.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from darec.atomic import atomic_write_text
from darec.errors import ConfigError
from darec.search.config import DEFAULT_METRIC, SearchConfig
from darec.search.space import KNOB_PATHS, Candidate
from darec.search.stopping import PRUNED

REPORT_CALLBACK = "darec.search.report.TrialReport"
NO_REPORT = "the trial wrote no report (training never started)"


@dataclass(frozen=True)
class TrialJob:
    """What to train: the candidate, the seed, where to write, and the worker slot (device pinning)."""

    index: int  # Ax trial index (search), position in the re-run list, or -1 (the reference run)
    phase: str  # "search" | "reference" (early_stopping.reference) | "rerun" | "refit"
    candidate: Candidate
    seed: int
    trial_dir: Path
    slot: int = 0
    fit_file: Path | None = None  # run this fit config as is (the refit of best.yaml) instead of building one
    stop_file: Path | None = None  # search trials: the early-stopping thresholds to read after each validation epoch


@dataclass
class TrialResult:
    """What a trial gave: ``ndcg10`` is the best value of the search's metric (validation NDCG@10 by default)."""

    status: str  # "completed" | "failed"
    ndcg10: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # validation metrics of the best epoch
    trainable_params: int | None = None
    reason: str | None = None
    test: dict[str, float] = field(default_factory=dict)  # refit only
    curve: list[float] = field(default_factory=list)  # the metric at every validation epoch
    seconds_per_epoch: float | None = None  # mean training seconds of an epoch (validation excluded)
    stopped: str | None = None  # why training ended (pruned by the search's rule, converged, max_epochs, time)

    @property
    def pruned(self) -> bool:
        return bool(self.stopped and self.stopped.startswith(PRUNED))

    @classmethod
    def failed(cls, reason: str, trainable_params: int | None = None) -> "TrialResult":
        return cls("failed", reason=reason, trainable_params=trainable_params)


Objective = Callable[[TrialJob], TrialResult]


def set_dotted(doc: dict[str, Any], path: str | tuple[str, ...], value: Any) -> None:
    """Set ``a.b.c`` in a nested mapping, creating missing levels."""
    keys = path.split(".") if isinstance(path, str) else list(path)
    node = doc
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def load_base_config(cfg: SearchConfig) -> dict[str, Any]:
    """The base fit config with ``overrides`` applied; it must configure a DARec model."""
    path = Path(cfg.base_config)
    if not path.is_file():
        raise ConfigError(f"base_config {cfg.base_config!r} does not exist (paths are relative to the working directory)")
    doc = yaml.safe_load(path.read_text()) or {}
    for key, value in cfg.overrides.items():
        set_dotted(doc, key, value)
    model = doc.get("model") or {}
    if not str(model.get("class_path", "")).endswith("DARec"):
        raise ConfigError(f"base_config {cfg.base_config!r} must configure model.class_path darec.modules.darec.DARec, "
                          f"got {model.get('class_path')!r}")
    return doc


def num_layers_of(base: dict[str, Any]) -> int:
    """The layer count of the base config's backbone (loads the backbone once)."""
    from darec.modules.backbone import BackboneConfig, load_backbone

    spec = ((base.get("model") or {}).get("init_args") or {}).get("backbone") or {}
    return load_backbone(BackboneConfig(**spec)).num_layers


def fit_config(base: dict[str, Any], candidate: Candidate, seed: int | None = None) -> dict[str, Any]:
    """``base`` with ``candidate``'s adapters and knobs (and ``seed`` when given)."""
    doc = copy.deepcopy(base)
    set_dotted(doc, "model.init_args.adapters", list(candidate.assignment))
    for name, value in candidate.knobs:
        set_dotted(doc, KNOB_PATHS[name], value)
    if seed is not None:
        doc["seed_everything"] = seed
    return doc


def run_settings(doc: dict[str, Any], job: TrialJob, metric: str = DEFAULT_METRIC) -> dict[str, Any]:
    """The settings every trial process gets on top of its fit config ``doc``: its own log directory, the report
    callback (scoring ``metric``), no progress bar, and the test split only for the refit."""
    callbacks = [c for c in (doc.get("trainer") or {}).get("callbacks") or [] if c.get("class_path") != REPORT_CALLBACK]
    report = {"path": str(job.trial_dir / "result.json"), "metric": metric}
    if job.stop_file is not None:
        report["stop_file"] = str(job.stop_file)
    callbacks.append({"class_path": REPORT_CALLBACK, "init_args": report})
    trainer = {"enable_progress_bar": False, "callbacks": callbacks,
               "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                          "init_args": {"save_dir": str(job.trial_dir), "name": "", "version": ""}}}
    return {"trainer": trainer, "test_after_fit": job.phase == "refit"}  # search never reads the test split


def trial_fit_config(cfg: SearchConfig, base: dict[str, Any], job: TrialJob) -> dict[str, Any]:
    """The whole fit config of a search or re-run trial: the candidate, the seed, the budget, the run settings."""
    doc = fit_config(base, job.candidate, job.seed)
    trainer = doc.setdefault("trainer", {})
    full = job.phase == "rerun" and cfg.rerun.epochs is not None  # a re-run at full training: no trial caps
    trainer["max_epochs"] = cfg.rerun.epochs if full else cfg.budget.epochs
    trainer.pop("max_steps", None)
    if cfg.budget.steps is not None and not full:
        trainer["limit_train_batches"] = cfg.budget.steps
    if cfg.budget.minutes is not None and not full:
        secs = int(round(cfg.budget.minutes * 60))
        trainer["max_time"] = f"00:{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"
    for callback in trainer.get("callbacks") or []:  # a trial's checkpoint is its best epoch by the search's metric
        if str(callback.get("class_path", "")).endswith("ModelCheckpoint"):
            callback.setdefault("init_args", {})["monitor"] = cfg.metric
    settings = run_settings(doc, job, cfg.metric)
    trainer.update(settings["trainer"])
    doc["test_after_fit"] = settings["test_after_fit"]
    if not cfg.share_cache:
        set_dotted(doc, "model.init_args.cache_dir", str(job.trial_dir / "cache"))
    return doc


def _failure_reason(log_text: str, returncode: int) -> str:
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    if returncode in (-9, 137) or any("out of memory" in ln.lower() or "OutOfMemoryError" in ln for ln in lines[-30:]):
        detail = next((ln for ln in reversed(lines) if "memory" in ln.lower()), f"exit code {returncode}")
        return f"out of memory: {detail[:300]}"
    errors = [ln for ln in lines if ln.startswith("error:")]
    last = errors[-1] if errors else (lines[-1] if lines else f"exit code {returncode}")
    return f"exit code {returncode}: {last[:400]}"


def read_report(path: Path, metric: str = DEFAULT_METRIC) -> TrialResult:
    """The :class:`TrialResult` from a report written by :class:`darec.search.report.TrialReport`, scored by ``metric``."""
    if not path.is_file():
        return TrialResult.failed(NO_REPORT)
    report = json.loads(path.read_text())
    params = report.get("trainable_params")
    if report.get("error"):
        return TrialResult.failed(report["error"], params)
    history = [h for h in report.get("val", []) if metric in h]
    if not history:
        logged = sorted({k for h in report.get("val", []) for k in h} - {"epoch", "step"})
        why = f"this model logs {logged}" if logged else "no validation epoch finished"
        return TrialResult.failed(f"no {metric} was logged ({why})", params)
    values = [h[metric] for h in history]
    if any(not math.isfinite(v) for v in values):
        return TrialResult.failed(f"{metric} is not finite: {values}", params)
    best = max(history, key=lambda h: h[metric])
    train_s = report.get("train_s") or []
    return TrialResult("completed", best[metric], best, params, test=report.get("test", {}), curve=values,
                       seconds_per_epoch=sum(train_s) / len(train_s) if train_s else None, stopped=report.get("stopped"))


class FitObjective:
    """Runs each trial as ``python -m darec.cli.main fit --config <trial>/config.yaml`` in a fresh process.

    A fresh process per trial guarantees clean state (adapters, caches, RNG). With GPUs present, a trial in
    worker slot ``s`` sees only GPU ``s % n`` (``CUDA_VISIBLE_DEVICES``).
    """

    def __init__(self, cfg: SearchConfig, base: dict[str, Any]) -> None:
        self.cfg = cfg
        self.base = base
        self.num_gpus = _num_gpus()

    def __call__(self, job: TrialJob) -> TrialResult:
        job.trial_dir.mkdir(parents=True, exist_ok=True)
        (job.trial_dir / "result.json").unlink(missing_ok=True)
        config_path = job.trial_dir / "trial.yaml"  # Lightning writes the resolved config.yaml beside it
        if job.fit_file is not None:  # run a written fit config as is, plus the run settings
            doc = run_settings(yaml.safe_load(Path(job.fit_file).read_text()), job, self.cfg.metric)
            configs = ["--config", str(job.fit_file), "--config", str(config_path)]
        else:
            doc = trial_fit_config(self.cfg, self.base, job)
            configs = ["--config", str(config_path)]
        atomic_write_text(config_path, yaml.safe_dump(doc, sort_keys=False))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *filter(None, [env.get("PYTHONPATH")])])
        if self.num_gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(job.slot % self.num_gpus)
        timeout = self.cfg.budget.timeout_minutes * 60 if self.cfg.budget.timeout_minutes and job.phase != "refit" else None
        log_path = job.trial_dir / "log.txt"
        with open(log_path, "w") as log:
            try:
                proc = subprocess.run([sys.executable, "-m", "darec.cli.main", "fit", *configs],
                                      stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout)
            except subprocess.TimeoutExpired:
                return TrialResult.failed(f"timed out after {self.cfg.budget.timeout_minutes} minutes")
        report = read_report(job.trial_dir / "result.json", self.cfg.metric)
        if proc.returncode != 0:
            error = json.loads((job.trial_dir / "result.json").read_text()).get("error") if report.reason != NO_REPORT else None
            reason = error or _failure_reason(log_path.read_text(errors="replace"), proc.returncode)
            return TrialResult.failed(reason, report.trainable_params)
        return report


def _num_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable CUDA means CPU trials
        return 0


def run_safely(objective: Objective, job: TrialJob) -> tuple[TrialResult, float]:
    """Call ``objective``; an exception or a non-finite NDCG becomes a failed result. Returns (result, seconds)."""
    t0 = time.perf_counter()
    try:
        result = objective(job)
    except Exception as err:  # noqa: BLE001 - any trial error is recorded and the search continues
        result = TrialResult.failed(f"{type(err).__name__}: {err}")
    if result.status == "completed" and (result.ndcg10 is None or not math.isfinite(result.ndcg10)):
        result = TrialResult.failed(f"the trial's score is {result.ndcg10}", result.trainable_params)
    return result, time.perf_counter() - t0
