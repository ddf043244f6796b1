"""PNG plots of a search: the optimisation trace, per-layer choices among the top trials, the Pareto front."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from darec.figures import save_png
from darec.search.config import DEFAULT_METRIC
from darec.search.space import SearchSpace


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


METRIC_LABELS = {"val/ndcg@10": "validation NDCG@10", "val/lm_ndcg@10": "validation NDCG@10, language model alone"}


def metric_label(metric: str) -> str:
    """An axis label for a search metric (the logged key when it has no label of its own)."""
    return METRIC_LABELS.get(metric, metric)


def _save(fig: Any, ax: Any, path: Path, xlabel: str, title: str, metric: str) -> Path:
    """Label a plot of the search's metric, write it as PNG and close it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric_label(metric))
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_png(fig, path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_trace(records: dict[int, dict[str, Any]], path: Path, metric: str = DEFAULT_METRIC) -> Path:
    """The metric (validation NDCG@10 by default) of every search trial and the best so far (over trials that ran
    every epoch)."""
    plt = _pyplot()
    rows = sorted(records.values(), key=lambda r: r["trial"])
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ok = [r for r in rows if r["status"] == "completed"]
    full, pruned = [r for r in ok if not r.get("pruned")], [r for r in ok if r.get("pruned")]
    ax.scatter([r["trial"] for r in full], [r["ndcg@10"] for r in full], s=18, color="tab:blue", label="trial")
    if pruned:
        ax.scatter([r["trial"] for r in pruned], [r["ndcg@10"] for r in pruned], s=18, facecolors="none",
                   edgecolors="tab:blue", label="stopped early (best so far)")
    best, xs, ys = -math.inf, [], []
    for r in rows:
        if r["status"] == "completed" and not r.get("pruned"):
            best = max(best, r["ndcg@10"])
        if best > -math.inf:
            xs.append(r["trial"])
            ys.append(best)
    ax.step(xs, ys, where="post", color="tab:orange", label="best so far")
    failed = [r["trial"] for r in rows if r["status"] != "completed"]
    if failed:
        low = min([r["ndcg@10"] for r in ok], default=0.0)
        ax.scatter(failed, [low] * len(failed), marker="x", color="tab:red", label="failed")
    return _save(fig, ax, path, "trial", "Adapter search: optimisation trace", metric)


def top_trials(records: dict[int, dict[str, Any]], fraction: float) -> list[dict[str, Any]]:
    ok = sorted((r for r in records.values() if r["status"] == "completed"), key=lambda r: -r["ndcg@10"])
    return ok[: max(1, math.ceil(fraction * len(ok)))] if ok else []


def choice_counts(records: dict[int, dict[str, Any]], space: SearchSpace, fraction: float) -> np.ndarray:
    """``[layer, type]`` counts of each adapter type among the top ``fraction`` of completed trials."""
    counts = np.zeros((space.num_layers, len(space.types)), dtype=int)
    for r in top_trials(records, fraction):
        for layer, entry in enumerate(r["adapters"]):
            name = entry if entry in space.types else entry.rpartition(":")[0]
            counts[layer, space.types.index(name)] += 1
    return counts


def plot_choices(records: dict[int, dict[str, Any]], space: SearchSpace, fraction: float, path: Path) -> Path:
    """Heat map: how often each layer chose each type among the top trials."""
    plt = _pyplot()
    counts = choice_counts(records, space, fraction)
    n = len(top_trials(records, fraction))
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(space.types), 1.2 + 0.45 * space.num_layers))
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(n, 1), aspect="auto")
    for (i, j), c in np.ndenumerate(counts):
        ax.text(j, i, str(c), ha="center", va="center", color="white" if c > n / 2 else "black")
    ax.set_xticks(range(len(space.types)), [t.rsplit(".", 1)[-1] for t in space.types], rotation=20)
    ax.set_yticks(range(space.num_layers), [f"layer {i}" for i in range(space.num_layers)])
    ax.set_title(f"Choices among the top {n} trial(s)")
    fig.tight_layout()
    save_png(fig, path, dpi=110)
    plt.close(fig)
    return path


COST_LABELS = {"seconds_per_epoch": "training seconds per epoch", "trainable_params": "trainable parameters"}


def plot_pareto(records: dict[int, dict[str, Any]], front: list[Any], path: Path, cost: str = "trainable_params",
                metric: str = DEFAULT_METRIC) -> Path:
    """The metric (validation NDCG@10 by default) against ``cost`` (a record key: ``trainable_params`` or ``seconds_per_epoch``): every trial,
    the Pareto front joined, and the fresh-seed means with error bars. Pruned trials are drawn hollow."""
    plt = _pyplot()
    ok = [r for r in records.values() if r["status"] == "completed" and r.get(cost)]
    full, pruned = [r for r in ok if not r.get("pruned")], [r for r in ok if r.get("pruned")]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.scatter([r[cost] for r in full], [r["ndcg@10"] for r in full], s=16, color="tab:gray", label="trial")
    if pruned:
        ax.scatter([r[cost] for r in pruned], [r["ndcg@10"] for r in pruned], s=16, facecolors="none",
                   edgecolors="tab:gray", label="trial stopped early (best so far)")
    pts = sorted((getattr(c, cost), c.search_ndcg10) for c in front if getattr(c, cost))
    if pts:
        ax.plot(*zip(*pts), "-o", color="tab:orange", label="Pareto front (search)")
    fresh_cost = "fresh_seconds_per_epoch" if cost == "seconds_per_epoch" else cost  # re-runs are timed apart
    judged = [c for c in front if c.fresh and getattr(c, fresh_cost)]
    if judged:
        ax.errorbar([getattr(c, fresh_cost) for c in judged], [c.mean for c in judged], yerr=[c.std for c in judged],
                    fmt="s", color="tab:green", capsize=3, label="fresh seeds (mean ± std)")
    if cost == "trainable_params":
        ax.set_xscale("log")
    return _save(fig, ax, path, COST_LABELS[cost], "Adapter search: quality against cost", metric)
