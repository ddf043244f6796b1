"""Metrics of the full-ranking protocol (see :mod:`darec.evaluation`): rank histograms, buckets, reference ranks, tables."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from darec.errors import EvaluationError
from darec.evaluation.ranking import check_targets, chunked_target_ranks, raise_non_finite

MAX_K = 20
METRIC_KEYS: tuple[str, ...] = ("hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr@10")


def metrics_from_histogram(hist: Tensor, count: Tensor | int, prefix: str = "") -> dict[str, Tensor]:
    """Metrics from a rank histogram ``hist[r] = #users with rank r`` (r < 20) and a user count.

    Arithmetic is float64; results are float32 scalars. With zero users every metric is 0.
    """
    h = hist.to(torch.float64)
    n = float(count)
    ranks = torch.arange(MAX_K, dtype=torch.float64, device=h.device)
    dcg = h / torch.log2(ranks + 2)
    rr = h / (ranks + 1)
    values = {
        "hr@5": h[:5].sum(), "hr@10": h[:10].sum(), "hr@20": h[:20].sum(),
        "ndcg@5": dcg[:5].sum(), "ndcg@10": dcg[:10].sum(), "ndcg@20": dcg[:20].sum(),
        "mrr@10": rr[:10].sum(),
    }
    return {prefix + k: (v / n if n > 0 else v * 0).float() for k, v in values.items()}


def _check_ranks(ranks: Tensor) -> Tensor:
    if ranks.dim() != 1 or ranks.dtype.is_floating_point or ranks.dtype == torch.bool:
        raise EvaluationError(f"ranks must be a 1-D integer tensor, got {tuple(ranks.shape)} {ranks.dtype}")
    if ranks.numel() and int(ranks.min()) < 0:
        raise EvaluationError("ranks must be non-negative")
    return ranks.long()


class RankHistogram(Metric):
    """Exact, DDP-reducible ranking metrics: a long histogram of ranks 0..19 plus a user count."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, prefix: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.prefix = prefix
        self.add_state("hist", default=torch.zeros(MAX_K, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, ranks: Tensor) -> None:
        """Add one batch of 0-based target ranks."""
        ranks = _check_ranks(ranks).to(self.hist.device)
        self.count += ranks.numel()
        self.hist += torch.bincount(ranks[ranks < MAX_K], minlength=MAX_K)

    def compute(self) -> dict[str, Tensor]:
        """``{prefix + key: value}`` for every key in :data:`METRIC_KEYS`."""
        return metrics_from_histogram(self.hist, self.count, self.prefix)


class GroupedRankHistogram(Metric):
    """Per-group :class:`RankHistogram` (``[num_groups, 20]`` histogram) for metric breakdowns."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, labels: Sequence[str], prefix: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        if not labels:
            raise EvaluationError("GroupedRankHistogram needs at least one group label")
        self.labels = list(labels)
        self.prefix = prefix
        g = len(self.labels)
        self.add_state("hist", default=torch.zeros(g, MAX_K, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(g, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, ranks: Tensor, groups: Tensor) -> None:
        """Add ranks with their group ids (``0 <= group < len(labels)``)."""
        ranks = _check_ranks(ranks).to(self.hist.device)
        groups = groups.to(self.hist.device).long()
        g = len(self.labels)
        if groups.shape != ranks.shape:
            raise EvaluationError(f"groups shape {tuple(groups.shape)} != ranks shape {tuple(ranks.shape)}")
        if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= g):
            raise EvaluationError(f"group ids must lie in [0, {g})")
        self.counts += torch.bincount(groups, minlength=g)
        top = ranks < MAX_K
        self.hist += torch.bincount(groups[top] * MAX_K + ranks[top], minlength=g * MAX_K).view(g, MAX_K)

    def compute(self) -> dict[str, dict[str, Tensor]]:
        """``{label: metrics}``; empty groups report zeros (see ``counts`` for group sizes)."""
        return {
            label: metrics_from_histogram(self.hist[i], self.counts[i], self.prefix)
            for i, label in enumerate(self.labels)
        }


def _bucketize(values: Tensor, edges: Sequence[int], name: str) -> tuple[Tensor, list[str]]:
    edges = [int(e) for e in edges]
    if not edges or any(b <= a for a, b in zip(edges, edges[1:])):
        raise EvaluationError(f"bucket edges must be non-empty and strictly increasing, got {edges}")
    labels = [f"{name}<{edges[0]}"]
    labels += [f"{name}{a}" if b - 1 == a else f"{name}{a}-{b - 1}" for a, b in zip(edges, edges[1:])]
    labels.append(f"{name}>={edges[-1]}")
    boundaries = torch.tensor(edges, dtype=torch.long, device=values.device)
    return torch.bucketize(values.long(), boundaries, right=True), labels


def history_length_buckets(
    lengths: Tensor, edges: Sequence[int] = (5, 10, 20, 50, 100)
) -> tuple[Tensor, list[str]]:
    """Group ids and labels by history length: ``len<5, len5-9, ..., len>=100``."""
    return _bucketize(lengths, edges, "len")


def popularity_buckets(target_counts: Tensor, edges: Sequence[int]) -> tuple[Tensor, list[str]]:
    """Group ids and labels by the target's training count: ``pop<e0, pop e0-(e1-1), ..., pop>=eN``."""
    return _bucketize(target_counts, edges, "pop")


def popularity_edges(item_counts: Tensor, n_buckets: int = 5) -> tuple[int, ...]:
    """Integer edges splitting items ``1..num_items`` into ~equal-size popularity quantile buckets.

    ``item_counts`` is indexed by item id (index 0, padding, is ignored). Ties in the counts can
    merge quantiles, so fewer than ``n_buckets - 1`` edges may come back.
    """
    if n_buckets < 2:
        raise EvaluationError(f"n_buckets must be >= 2, got {n_buckets}")
    counts = np.asarray(item_counts.detach().cpu().numpy()[1:], dtype=np.float64)
    if counts.size == 0:
        raise EvaluationError("item_counts holds no items")
    qs = np.quantile(counts, np.linspace(0, 1, n_buckets + 1)[1:-1])
    return tuple(sorted({int(math.ceil(q)) for q in qs if math.ceil(q) > counts.min()}))


def target_ranks(scores: Tensor, targets: Tensor, history: Tensor | None) -> Tensor:
    """0-based target ranks from a full ``[B, num_items+1]`` score matrix (column 0 ignored).

    The input is not modified.
    """
    if scores.dim() != 2 or scores.shape[0] != targets.shape[0] or scores.shape[1] < 2:
        raise EvaluationError(f"scores must be [B, num_items+1] with B={targets.shape[0]}, got {tuple(scores.shape)}")
    num_items = scores.shape[1] - 1
    return chunked_target_ranks(lambda lo, hi: scores[:, lo:hi], num_items, targets, history, chunk_size=num_items)


def sample_negatives(
    targets: Tensor,
    history: Tensor | None,
    num_items: int,
    n: int = 100,
    generator: torch.Generator | None = None,
    max_rounds: int = 32,
) -> Tensor:
    """``[B, n]`` distinct negatives drawn uniformly from ``1..num_items`` minus history and target.

    Vectorised rejection sampling: draw candidates, drop forbidden ids and repeats, keep the first
    ``n`` survivors per row (a uniform random subset); draw more while any row is short.
    """
    check_targets(targets, history, num_items)
    batch, device = targets.shape[0], targets.device
    targets = targets.long()
    forbidden = targets[:, None] if history is None else torch.cat([history.long(), targets[:, None]], 1)
    forbidden = forbidden.sort(1).values
    distinct = torch.ones_like(forbidden, dtype=torch.bool)
    distinct[:, 1:] = forbidden[:, 1:] != forbidden[:, :-1]
    allowed = num_items - (distinct & (forbidden > 0)).sum(1)
    if batch and int(allowed.min()) < n:
        raise EvaluationError(f"a row has only {int(allowed.min())} allowed negatives, fewer than n={n}")
    pool = torch.empty(batch, 0, dtype=torch.long, device=device)
    draw = 2 * n
    for _ in range(max_rounds):
        new = torch.randint(1, num_items + 1, (batch, draw), generator=generator, device=device)
        pool = torch.cat([pool, new], 1)
        pos = torch.searchsorted(forbidden, pool).clamp(max=forbidden.shape[1] - 1)
        ok = forbidden.gather(1, pos) != pool
        values, order = pool.sort(dim=1, stable=True)
        first = torch.ones_like(ok)
        first[:, 1:] = values[:, 1:] != values[:, :-1]
        ok &= torch.zeros_like(ok).scatter_(1, order, first)
        if bool((ok.sum(1) >= n).all()):
            m = pool.shape[1]
            key = torch.where(ok, 0, m) + torch.arange(m, device=device)
            return pool.gather(1, key.argsort(1)[:, :n])
        draw *= 2
    raise EvaluationError(f"could not draw {n} negatives in {max_rounds} rounds")


def sampled_target_ranks(target_scores: Tensor, negative_scores: Tensor) -> Tensor:
    """0-based rank of the target among sampled negatives; ties count against the target."""
    if target_scores.dim() != 1 or negative_scores.dim() != 2 or negative_scores.shape[0] != target_scores.shape[0]:
        raise EvaluationError(
            f"expected target_scores [B] and negative_scores [B, n], got "
            f"{tuple(target_scores.shape)} and {tuple(negative_scores.shape)}"
        )
    raise_non_finite(~torch.isfinite(target_scores) | ~torch.isfinite(negative_scores).all(1))
    return (negative_scores >= target_scores[:, None]).sum(1)


def format_metrics_table(metrics: Mapping[str, float | Tensor], title: str = "") -> str:
    """A small aligned text table: one row per metric, known keys in :data:`METRIC_KEYS` order."""

    def order(key: str) -> tuple[int, int]:
        base = next((k for k in METRIC_KEYS if key == k or key.endswith("_" + k)), None)
        return (METRIC_KEYS.index(base) if base else len(METRIC_KEYS), list(metrics).index(key))

    keys = sorted(metrics, key=order)
    width = max([len("metric"), *(len(k) for k in keys)])
    lines = [title] if title else []
    lines += [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    lines += [f"{k:<{width}}  {float(metrics[k]):.4f}" for k in keys]
    return "\n".join(lines)
