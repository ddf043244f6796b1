"""``run_search``: search, fresh-seed re-runs against uniform, configs, plots, summary and the optional refit."""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from darec.errors import ConfigError, DarecError
from darec.search.config import SearchConfig
from darec.search.diagnostics import repeated_arms, surrogate_fit
from darec.search.loop import rerun_phase, search_phase
from darec.search.plots import plot_choices, plot_pareto, plot_trace
from darec.search.results import (
    CandidateStats, attach_fresh, declare_best, fresh_seeds, pick_candidates, rerun_jobs, smaller_within_one_std,
    summary_table, write_fit_config, write_summary,
)
from darec.search.space import Candidate, SearchSpace
from darec.search.state import SearchState
from darec.search.trial import FitObjective, Objective, TrialJob, load_base_config, num_layers_of, run_safely

log = logging.getLogger(__name__)


@dataclass
class SearchOutcome:
    """What a search produced (also in ``<out_dir>/summary.json``)."""

    out_dir: Path
    records: dict[int, dict[str, Any]]
    best: CandidateStats
    uniform: CandidateStats
    candidates: list[CandidateStats]
    pareto: list[CandidateStats] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    refit: dict[str, Any] | None = None
    table: str = ""
    diagnostics: dict[str, Any] = field(default_factory=dict)  # surrogate fit and repeated arms
    knob_control: CandidateStats | None = None  # the uniform baseline at the winner's knobs (rerun.knob_control)


def _quiet_ax() -> None:
    """Ax logs every generated and completed trial at INFO; the progress bar and trials.jsonl say that."""
    for name in ["ax", *logging.root.manager.loggerDict]:
        if name.startswith("ax"):
            logging.getLogger(name).setLevel(logging.ERROR)


def run_search(cfg: SearchConfig, *, resume: bool = False, refit: bool = False, objective: Objective | None = None,
               num_layers: int | None = None, progress: bool = True) -> SearchOutcome:
    """Run (or resume) the search described by ``cfg``.

    ``objective`` replaces training (tests plug in a synthetic one); it then needs ``num_layers``. With the
    default objective, each trial is ``darec fit`` on ``cfg.base_config`` in its own process.
    """
    import ax  # noqa: F401  (imported first so that its loggers exist and can be quietened)

    _quiet_ax()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="linear_operator")  # GP jitter notices while fitting
        warnings.filterwarnings("ignore", module="botorch")
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="gpytorch")  # negative variances rounded up
        return _run(cfg, resume, refit, objective, num_layers, progress)


def _run(cfg: SearchConfig, resume: bool, refit: bool, objective: Objective | None, num_layers: int | None,
         progress: bool) -> SearchOutcome:
    t0 = time.perf_counter()
    base = load_base_config(cfg) if objective is None or Path(cfg.base_config).is_file() else None
    if objective is None:
        objective = FitObjective(cfg, base)
    if num_layers is None:
        if base is None:
            raise ConfigError("num_layers is needed when the objective is not a training run")
        num_layers = num_layers_of(base)
    space = SearchSpace.from_config(cfg, num_layers)
    state = SearchState.open(cfg, space, resume)
    out = state.out_dir
    log.info("adapter search in %s: %d layers x %d types %s, %d trials", out, num_layers, len(space.types),
             space.types, cfg.trials)
    records = search_phase(cfg, space, state, objective, progress)

    picks, front = pick_candidates(cfg, records)
    uniform = CandidateStats(space.uniform(cfg.rerun.baseline), "uniform")
    reference = state.journal.reference()
    searched = [r["ndcg@10"] for r in [*records.values(), *([reference] if reference else [])]
                if r["status"] == "completed" and not r.get("pruned") and r["candidate_key"] == uniform.candidate.key]
    uniform.search_ndcg10 = sum(searched) / len(searched) if searched else None
    jobs = rerun_jobs(cfg, picks, uniform.candidate)
    reruns = rerun_phase(cfg, state, jobs, objective, progress)
    seeds = fresh_seeds(cfg)
    attach_fresh(picks + [uniform] + [c for c in front if c not in picks], reruns, seeds)
    best = declare_best(picks)
    if uniform.mean is not None and best.mean < uniform.mean:
        log.warning("on fresh seeds the uniform %r baseline (%.4f) beats the best searched assignment (%.4f)",
                    cfg.rerun.baseline, uniform.mean, best.mean)
    control = _knob_control(cfg, state, best, uniform, seeds, len(jobs), objective, progress)

    files = {"trace": str(plot_trace(records, out / "trace.png", cfg.metric)),
             "choices": str(plot_choices(records, space, cfg.top_fraction, out / "choices.png"))}
    if cfg.multi_objective:
        files["pareto_plot"] = str(plot_pareto(records, front, out / "pareto.png", cost=cfg.costs[0], metric=cfg.metric))
    if base is not None:
        files["best_config"] = str(out / "best.yaml")
        write_fit_config(out / "best.yaml", base, cfg, best, "best on fresh seeds")
        for i, point in enumerate(front):
            path = out / "pareto" / f"point_{i}.yaml"
            write_fit_config(path, base, cfg, point, f"Pareto point {i} of {len(front)}")
            files[f"pareto_{i}"] = str(path)

    table = summary_table(best, uniform, picks + ([control] if control else []))
    outcome = SearchOutcome(out, records, best, uniform, picks, front, files, table=table, knob_control=control)
    if refit:
        outcome.refit = _refit(cfg, out, best, base, objective)
    completed = sum(r["status"] == "completed" for r in records.values())
    diagnostics = {"surrogate_loo": surrogate_fit(state.client) if cfg.method == "bo" else None,
                   "arms": repeated_arms(records, cfg.init_trials)}
    outcome.diagnostics = diagnostics
    write_summary(out / "summary.json", {
        "metric": cfg.metric, "trials": len(records), "completed": completed, "failed": len(records) - completed,
        "stopped_early": sum(bool(r.get("pruned")) for r in records.values()),
        "epochs_trained": sum(r.get("epochs") or 0 for r in records.values()), "diagnostics": diagnostics,
        "search_space": space.describe(), "fresh_seeds": seeds, "best": best.to_json(), "uniform": uniform.to_json(),
        "best_beats_uniform": None if uniform.mean is None else best.mean >= uniform.mean,
        "candidates": [c.to_json() for c in picks], "pareto": [c.to_json() for c in front],
        "knob_control": control.to_json() if control else None,
        "reference": None if reference is None else {k: reference.get(k) for k in (
            "adapters", "status", "reason", "ndcg@10", "curve", "epochs", "seconds_per_epoch", "seed")},
        "pareto_smaller_within_one_std": [c.to_json() for c in smaller_within_one_std(best, front)],
        "files": files, "refit": outcome.refit, "config": asdict(cfg), "wall_s": time.perf_counter() - t0,
    })
    return outcome


def _knob_control(cfg: SearchConfig, state: SearchState, best: CandidateStats, uniform: CandidateStats, seeds: list[int],
                  first_index: int, objective: Objective, progress: bool) -> CandidateStats | None:
    """With ``rerun.knob_control``: the uniform baseline re-run at the winner's knobs on the same fresh seeds (re-run
    positions from ``first_index``, after the other re-runs)."""
    if not cfg.rerun.knob_control or not best.candidate.knobs or best.candidate.assignment == uniform.candidate.assignment:
        return None
    control = CandidateStats(Candidate(uniform.candidate.assignment, best.candidate.knobs), "uniform_at_best_knobs")
    jobs = [TrialJob(first_index + i, "rerun", control.candidate, seed,
                     Path(cfg.out_dir) / "reruns" / f"uniform_knobs_seed{seed}") for i, seed in enumerate(seeds)]
    attach_fresh([control], rerun_phase(cfg, state, jobs, objective, progress), seeds)
    return control


def _refit(cfg: SearchConfig, out: Path, best: CandidateStats, base: dict[str, Any] | None,
           objective: Objective) -> dict[str, Any]:
    """Train the best fully and test it once; a finished refit is reported again, never re-run."""
    path = out / "refit.json"
    if path.is_file():
        done = json.loads(path.read_text())
        if done.get("candidate_key") == best.candidate.key:
            log.info("refit already done (%s); its test metrics are reported, not recomputed", path)
            return done
        raise DarecError(f"{path} holds the refit of another assignment; move it away to refit the current best")
    seed = int((base or {}).get("seed_everything", cfg.seed))
    fit_file = out / "best.yaml" if base is not None else None
    result, seconds = run_safely(objective, TrialJob(0, "refit", best.candidate, seed, out / "refit", fit_file=fit_file))
    if result.status != "completed":
        raise DarecError(f"the refit of {best.candidate.label()} failed: {result.reason}")
    data = {"candidate_key": best.candidate.key, "adapters": list(best.candidate.assignment),
            "knobs": dict(best.candidate.knobs), "metric": cfg.metric, "val_ndcg@10": result.ndcg10, "test": result.test,
            "trainable_params": result.trainable_params, "seed": seed, "duration_s": seconds}
    write_summary(path, data)
    return data
