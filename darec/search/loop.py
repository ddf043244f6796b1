"""The search loop: Ax proposes, trials run (``parallel`` at a time), every result is saved at once."""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from darec.search.config import SearchConfig
from darec.search.space import SearchSpace
from darec.search.state import SearchState
from darec.search.stopping import REFERENCE_DIR, write_thresholds
from darec.search.trial import Objective, TrialJob, TrialResult, run_safely

log = logging.getLogger(__name__)

REFERENCE_INDEX = -1  # the journal's trial index of the reference run (early_stopping.reference), not an Ax trial


def trial_record(job: TrialJob, result: TrialResult, seconds: float) -> dict[str, Any]:
    """The ``trials.jsonl`` line of a finished trial."""
    return {
        "trial": job.index, "phase": job.phase, "status": result.status, "reason": result.reason,
        "adapters": list(job.candidate.assignment), "knobs": dict(job.candidate.knobs),
        "candidate_key": job.candidate.key, "ndcg@10": result.ndcg10, "metrics": result.metrics,
        "trainable_params": result.trainable_params, "seconds_per_epoch": result.seconds_per_epoch,
        "epochs": len(result.curve), "curve": result.curve, "stopped": result.stopped, "pruned": result.pruned,
        "seed": job.seed, "duration_s": round(seconds, 3),
        "trial_dir": str(job.trial_dir), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def execute(next_job: Callable[[int], TrialJob | None], objective: Objective, parallel: int,
            on_done: Callable[[TrialJob, TrialResult, float], None]) -> None:
    """Run jobs ``parallel`` at a time: ``next_job(slot)`` gives the next one (None: nothing to start now)."""
    free = list(range(parallel))
    running: dict[Future, TrialJob] = {}
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="darec-trial") as pool:
        while True:
            while free:
                job = next_job(free[0])
                if job is None:
                    break
                free.pop(0)
                running[pool.submit(run_safely, objective, job)] = job
            if not running:
                return
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: running[f].index):
                job = running.pop(future)
                free.append(job.slot)
                result, seconds = future.result()  # a KeyboardInterrupt inside a trial stops the search here
                on_done(job, result, seconds)


def _execute_with_bar(next_job: Callable[[int], TrialJob | None], objective: Objective, parallel: int,
                      on_done: Callable[[TrialJob, TrialResult, float], None], bar: Any) -> None:
    try:
        execute(next_job, objective, parallel, on_done)
    finally:
        bar.close()


def _best_so_far(records: dict[int, dict[str, Any]]) -> float | None:
    values = [r["ndcg@10"] for r in records.values() if r["status"] == "completed"]
    return max(values) if values else None


def search_phase(cfg: SearchConfig, space: SearchSpace, state: SearchState, objective: Objective,
                 progress: bool = True) -> dict[int, dict[str, Any]]:
    """Run search trials until ``cfg.trials`` have finished; returns the journal's search records by index."""
    out = Path(cfg.out_dir)
    queue = state.reconcile()
    done = state.journal.search()
    if queue:
        log.info("resuming: %d unfinished trial(s) run again under the same index: %s", len(queue), [i for i, _ in queue])
    started = len(done)
    stop_file = out / "stopping.json"
    reference = state.journal.reference()
    need_reference = cfg.early_stopping.reference is not None and reference is None

    def update_thresholds() -> None:
        curve = reference["curve"] if reference and reference["status"] == "completed" else None
        write_thresholds(stop_file, [r.get("curve") or [] for r in done.values() if r["status"] == "completed"],
                         cfg.early_stopping, curve)

    update_thresholds()
    bar = tqdm(total=max(cfg.trials, len(done) + len(queue)), initial=len(done), desc="search trials", unit="trial",
               disable=not progress, dynamic_ncols=True)

    def next_job(slot: int) -> TrialJob | None:
        nonlocal started, need_reference
        if need_reference:  # first, so that it trains beside the first trials it judges
            need_reference = False
            return TrialJob(REFERENCE_INDEX, "reference", space.uniform(cfg.rerun.baseline), cfg.seed, out / REFERENCE_DIR,
                            slot)
        if queue:
            index, params = queue.pop(0)
        elif started < cfg.trials:
            proposed = state.client.get_next_trials(max_trials=1)
            if not proposed:
                log.warning("Ax proposed no new trial (the space may be exhausted); stopping the search early")
                return None
            state.save_ax()
            index, params = next(iter(proposed.items()))
        else:
            return None
        started += 1
        return TrialJob(index, "search", space.candidate(params), cfg.seed + index, out / "trials" / f"trial_{index:04d}",
                        slot, stop_file=stop_file)

    def on_done(job: TrialJob, result: TrialResult, seconds: float) -> None:
        nonlocal reference
        record = trial_record(job, result, seconds)
        state.journal.append(record)
        if job.phase == "reference":
            reference = record
            update_thresholds()
            if result.status == "failed":
                log.warning("the reference run failed (%s); trials are judged by the percentile rule alone", result.reason)
            else:
                log.info("reference run (%s at the search budget) done: %s %s", job.candidate.label(), cfg.metric,
                         " ".join(f"{v:.4f}" for v in result.curve))
            return
        state.tell(job.index, record)
        state.save_ax()
        done[job.index] = record
        update_thresholds()
        if result.status == "failed":
            log.warning("trial %d failed (%s); the search continues", job.index, result.reason)
        elif result.pruned:
            log.info("trial %d stopped early: %s", job.index, result.stopped)
        best = _best_so_far(done)
        bar.set_postfix_str(f"best {cfg.metric} {best:.4f}" if best is not None else "no completed trial yet")
        bar.update(1)

    _execute_with_bar(next_job, objective, cfg.parallel, on_done, bar)
    return done


def rerun_phase(cfg: SearchConfig, state: SearchState, jobs: list[TrialJob], objective: Objective,
                progress: bool = True) -> dict[tuple[str, int], dict[str, Any]]:
    """Run the fresh-seed re-runs the journal does not hold yet; returns all re-run records by (candidate, seed)."""
    have = state.journal.reruns()
    todo = [j for j in jobs if (j.candidate.key, j.seed) not in have]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="fresh-seed re-runs", unit="run",
               disable=not progress, dynamic_ncols=True)

    def next_job(slot: int) -> TrialJob | None:
        if not todo:
            return None
        job = todo.pop(0)
        return TrialJob(job.index, job.phase, job.candidate, job.seed, job.trial_dir, slot)

    def on_done(job: TrialJob, result: TrialResult, seconds: float) -> None:
        record = trial_record(job, result, seconds)
        state.journal.append(record)
        have[(job.candidate.key, job.seed)] = record
        if result.status == "failed":
            log.warning("re-run of %s (seed %d) failed: %s", job.candidate.label(), job.seed, result.reason)
        bar.update(1)

    _execute_with_bar(next_job, objective, cfg.parallel, on_done, bar)
    return have
