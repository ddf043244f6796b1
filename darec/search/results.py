"""After the search: pick the candidates, judge them on fresh seeds against uniform, write configs and a summary."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from darec.atomic import atomic_write_text
from darec.errors import DarecError
from darec.search.config import SearchConfig
from darec.search.space import Candidate
from darec.search.trial import TrialJob, fit_config

RERUN_SEED_OFFSET = 100_000  # fresh seeds: never used by a search trial


@dataclass
class CandidateStats:
    """A re-run candidate: its search result and its fresh-seed validation NDCG@10 values."""

    candidate: Candidate
    role: str  # "top" | "pareto" | "uniform"
    search_ndcg10: float | None = None  # mean over the search trials that ran it (None: not searched)
    trainable_params: int | None = None
    seconds_per_epoch: float | None = None  # mean training seconds per epoch over its search trials
    fresh_seconds_per_epoch: float | None = None  # the same over its fresh-seed re-runs (timed apart from the search)
    fresh: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.fresh) if self.fresh else None

    @property
    def std(self) -> float:
        return statistics.stdev(self.fresh) if len(self.fresh) > 1 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**self.candidate.to_json(), "label": self.candidate.label(), "role": self.role,
                "search_ndcg@10": self.search_ndcg10, "fresh_ndcg@10": self.fresh, "fresh_mean": self.mean,
                "fresh_std": self.std, "trainable_params": self.trainable_params,
                "seconds_per_epoch": self.seconds_per_epoch, "fresh_seconds_per_epoch": self.fresh_seconds_per_epoch,
                "failures": self.failures}


def fresh_seeds(cfg: SearchConfig) -> list[int]:
    return [cfg.seed + RERUN_SEED_OFFSET + r for r in range(cfg.rerun.seeds)]


def _by_candidate(records: dict[int, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(records.values(), key=lambda r: r["trial"]):
        if r["status"] == "completed" and not r.get("pruned"):  # a pruned trial saw fewer epochs: not comparable
            groups.setdefault(r["candidate_key"], []).append(r)
    return groups


def pick_candidates(cfg: SearchConfig, records: dict[int, dict[str, Any]]) -> tuple[list[CandidateStats], list[CandidateStats]]:
    """(candidates to re-run, the whole Pareto front or [] when single-objective)."""
    groups = _by_candidate(records)
    if not groups:
        reasons = sorted({str(r.get("reason")) for r in records.values()})
        raise DarecError(f"no search trial completed ({len(records)} failed); reasons: {reasons[:5]}")

    def stats(key: str, role: str) -> CandidateStats:
        rows = groups[key]
        secs = [r["seconds_per_epoch"] for r in rows if r.get("seconds_per_epoch") is not None]
        return CandidateStats(Candidate.from_json(rows[0]), role, statistics.fmean(r["ndcg@10"] for r in rows),
                              rows[0].get("trainable_params"), statistics.fmean(secs) if secs else None)

    if not cfg.multi_objective:
        ranked = sorted(groups, key=lambda k: -statistics.fmean(r["ndcg@10"] for r in groups[k]))
        return [stats(k, "top") for k in ranked[: cfg.rerun.top_k]], []
    every = [stats(k, "pareto") for k in groups]
    front = [c for c in every if not any(dominates(o, c, cfg.costs) for o in every)]
    front.sort(key=lambda c: -(c.search_ndcg10 or 0.0))
    if cfg.rerun.prefer == "cost":
        floor = (front[0].search_ndcg10 or 0.0) - cfg.rerun.tolerance
        near = sorted((c for c in front if (c.search_ndcg10 or 0.0) >= floor), key=lambda c: _cost(c, cfg.costs[0]))
        return near[: cfg.rerun.top_k], front
    return front[: cfg.rerun.top_k], front


def _cost(c: CandidateStats, cost: str) -> float:
    v = getattr(c, cost)
    return float("inf") if v is None else float(v)


def dominates(a: CandidateStats, b: CandidateStats, costs: list[str]) -> bool:
    """``a`` is at least as good as ``b`` on search NDCG@10 and every cost, and strictly better on one.

    Computed on the observed values (Ax's own front leaves out points beyond the reference point it infers, which
    can drop the best-quality trial). A missing cost counts as worst.
    """
    pairs = [(a.search_ndcg10 or 0.0, b.search_ndcg10 or 0.0)] + [(-_cost(a, k), -_cost(b, k)) for k in costs]
    return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)


def rerun_jobs(cfg: SearchConfig, picks: list[CandidateStats], uniform: Candidate) -> list[TrialJob]:
    """Every (candidate, fresh seed) pair, the uniform baseline included, without duplicates."""
    jobs, seen = [], set()
    for cand in [p.candidate for p in picks] + [uniform]:
        for seed in fresh_seeds(cfg):
            if (cand.key, seed) not in seen:
                seen.add((cand.key, seed))
                tag = "uniform" if cand == uniform else f"cand{[p.candidate for p in picks].index(cand)}"
                jobs.append(TrialJob(len(jobs), "rerun", cand, seed, Path(cfg.out_dir) / "reruns" / f"{tag}_seed{seed}"))
    return jobs


def attach_fresh(stats: list[CandidateStats], reruns: dict[tuple[str, int], dict[str, Any]], seeds: list[int]) -> None:
    for s in stats:
        for seed in seeds:
            r = reruns.get((s.candidate.key, seed))
            if r is None:
                continue
            if r["status"] == "completed":
                s.fresh.append(float(r["ndcg@10"]))
            else:
                s.failures.append(str(r.get("reason")))
            if s.trainable_params is None:
                s.trainable_params = r.get("trainable_params")
        secs = [r["seconds_per_epoch"] for seed in seeds if (r := reruns.get((s.candidate.key, seed)))
                and r.get("seconds_per_epoch") is not None]
        if secs:  # timed at the re-runs' budget, on the same seeds for every candidate
            s.fresh_seconds_per_epoch = statistics.fmean(secs)


def declare_best(picks: list[CandidateStats]) -> CandidateStats:
    judged = [p for p in picks if p.fresh]
    if not judged:
        reasons = sorted({f for p in picks for f in p.failures})
        raise DarecError(f"every fresh-seed re-run of the top candidates failed; reasons: {reasons[:5]}")
    return max(judged, key=lambda p: p.mean)


def write_fit_config(path: Path, base: dict[str, Any], cfg: SearchConfig, stats: CandidateStats, note: str) -> None:
    """A ready-to-run ``darec fit --config`` file for ``stats.candidate`` (full budget, tests once)."""
    doc = fit_config(base, stats.candidate)
    if cfg.refit.epochs is not None:
        doc.setdefault("trainer", {})["max_epochs"] = cfg.refit.epochs
    doc["test_after_fit"] = True
    fresh = f"{stats.mean:.4f} ± {stats.std:.4f} over {len(stats.fresh)} fresh seeds" if stats.fresh else "not re-run"
    header = (f"# Written by darec search ({note}).\n# adapters: {stats.candidate.label()}\n"
              f"# fresh-seed validation NDCG@10: {fresh}; trainable parameters: {stats.trainable_params}\n"
              f"# Run: darec fit --config {path}\n")
    atomic_write_text(path, header + yaml.safe_dump(doc, sort_keys=False))


def summary_table(best: CandidateStats, uniform: CandidateStats, picks: list[CandidateStats]) -> str:
    rows = [("candidate", "role", "search NDCG@10", "fresh NDCG@10 (mean ± std, n)", "trainable params", "fresh train s/epoch")]
    for s in picks + [uniform]:
        role = s.role + (" (best)" if s is best else "")
        search = f"{s.search_ndcg10:.4f}" if s.search_ndcg10 is not None else "–"
        fresh = f"{s.mean:.4f} ± {s.std:.4f} ({len(s.fresh)})" if s.fresh else f"failed ({len(s.failures)})"
        rows.append((s.candidate.label(), role, search, fresh, f"{s.trainable_params:,}" if s.trainable_params else "–",
                     f"{s.fresh_seconds_per_epoch:.1f}" if s.fresh_seconds_per_epoch is not None else "–"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def smaller_within_one_std(best: CandidateStats, front: list[CandidateStats]) -> list[CandidateStats]:
    """Re-run Pareto points with fewer trainable parameters than ``best`` and a fresh mean within one std of it."""
    if best.mean is None or best.trainable_params is None:
        return []
    return [c for c in front if c.fresh and c.trainable_params is not None and c.trainable_params < best.trainable_params
            and c.mean >= best.mean - best.std]


def write_summary(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, default=str) + "\n")


__all__ = ["CandidateStats", "dominates", "pick_candidates", "rerun_jobs", "attach_fresh", "declare_best", "write_fit_config",
           "summary_table", "smaller_within_one_std", "write_summary", "fresh_seeds"]
