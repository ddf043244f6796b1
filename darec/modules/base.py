"""The uniform interface every darec recommender follows.

A model implements :meth:`RecModule.score_chunk`: the scores of item ids ``lo..hi-1`` for the users
of an evaluation batch. Validation, test and predict are then shared: full-catalogue ranking in
chunks, with history masked, through :mod:`darec.evaluation`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from darec.evaluation import (
    GroupedRankHistogram,
    RankHistogram,
    chunked_target_ranks,
    chunked_topk,
    history_length_buckets,
    popularity_buckets,
    popularity_edges,
    sample_negatives,
    sampled_target_ranks,
)

EvalBatch = dict[str, torch.Tensor]


class RecModule(L.LightningModule):
    """Base LightningModule: shared evaluation and prediction over the whole catalogue.

    Args:
        num_items: catalogue size (item ids ``1..num_items``); linked from the data by the CLI.
        num_users: number of users (ids ``1..num_users``); linked from the data by the CLI.
        data_fingerprint: fingerprint of the prepared dataset; linked by the CLI, kept in checkpoints.
        eval_chunk_size: items scored at once during evaluation, which bounds peak memory.
        predict_k: how many items ``predict`` returns per user.
        breakdowns: at test time, also report metrics by history-length and target-popularity bucket
            (logged as ``test/len5-9/ndcg@10``, ``test/pop<12/hr@10``, ...).
        sampled_negatives: > 0 also reports the sampled protocol at test time (the target against this
            many uniform negatives, never history items), logged as ``test/sampled_ndcg@10``, ...
    """

    def __init__(
        self,
        num_items: int = 0,
        num_users: int = 0,
        data_fingerprint: str = "",
        eval_chunk_size: int = 4096,
        predict_k: int = 10,
        breakdowns: bool = False,
        sampled_negatives: int = 0,
    ):
        super().__init__()
        self.breakdowns = breakdowns
        self.sampled_negatives = sampled_negatives
        self.sampled_metric = RankHistogram(prefix="sampled_")
        self._groups: dict[str, GroupedRankHistogram] = {}
        self._pop_edges: tuple[int, ...] = ()
        self._item_counts: torch.Tensor | None = None
        self.num_items = num_items
        self.num_users = num_users
        self.data_fingerprint = data_fingerprint
        self.eval_chunk_size = eval_chunk_size
        self.predict_k = predict_k
        self.val_metric = RankHistogram()
        self.test_metric = RankHistogram()

    def attached_datamodule(self) -> Any:
        """The trainer's datamodule, or None when the model is not attached to a trainer (or has none)."""
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    def score_chunk(self, batch: EvalBatch, lo: int, hi: int) -> torch.Tensor:
        """Scores [B, hi-lo] of item ids ``lo..hi-1`` for the users in ``batch``."""
        raise NotImplementedError

    def prepare_eval_batch(self, batch: EvalBatch) -> EvalBatch:
        """Hook: compute per-batch state once (e.g. user vectors) before chunked scoring."""
        return batch

    def _ranks(self, batch: EvalBatch) -> torch.Tensor:
        return self._prepared_ranks(self.prepare_eval_batch(batch))

    def _prepared_ranks(self, batch: EvalBatch) -> torch.Tensor:
        return chunked_target_ranks(
            lambda lo, hi: self.score_chunk(batch, lo, hi),
            self.num_items,
            batch["target"],
            batch["history"],
            chunk_size=self.eval_chunk_size,
        )

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self.val_metric.update(self._ranks(batch))

    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        batch = self.prepare_eval_batch(batch)
        ranks = self._prepared_ranks(batch)
        self.test_metric.update(ranks)
        if self.breakdowns and self._item_counts is not None:
            lengths = (batch["history"] > 0).sum(1)
            g, _ = history_length_buckets(lengths)
            self._groups["length"].update(ranks, g)
            g, _ = popularity_buckets(self._item_counts.to(ranks.device)[batch["target"]], self._pop_edges)
            self._groups["popularity"].update(ranks, g)
        if self.sampled_negatives > 0:
            gen = torch.Generator(device="cpu").manual_seed(1000 + batch_idx)
            negs = sample_negatives(batch["target"].cpu(), batch["history"].cpu(), self.num_items, self.sampled_negatives, gen)
            ids = torch.cat([batch["target"].cpu()[:, None], negs], 1).to(batch["target"].device)
            scores = self._scores_for(batch, ids)
            self.sampled_metric.update(sampled_target_ranks(scores[:, 0], scores[:, 1:]))

    def _scores_for(self, batch: EvalBatch, ids: torch.Tensor) -> torch.Tensor:
        """Scores [B, K] of the item ids ``ids`` [B, K], gathered chunk by chunk."""
        out = torch.empty(ids.shape, dtype=torch.float32, device=ids.device)
        for lo in range(1, self.num_items + 1, self.eval_chunk_size):
            hi = min(self.num_items + 1, lo + self.eval_chunk_size)
            inside = (ids >= lo) & (ids < hi)
            if inside.any():
                s = self.score_chunk(batch, lo, hi).float()
                rows = torch.nonzero(inside, as_tuple=True)[0]
                out[inside] = s[rows, ids[inside] - lo]
        return out

    def on_test_epoch_start(self) -> None:
        dm = self.attached_datamodule()
        if self.breakdowns and dm is not None and hasattr(dm, "data"):
            counts = torch.as_tensor(dm.data.train_item_counts()[: self.num_items + 1])
            self._item_counts = counts
            self._pop_edges = popularity_edges(counts)
            _, len_labels = history_length_buckets(torch.zeros(1, dtype=torch.long))
            _, pop_labels = popularity_buckets(torch.zeros(1, dtype=torch.long), self._pop_edges)
            self._groups = {"length": GroupedRankHistogram(len_labels).to(self.device),
                            "popularity": GroupedRankHistogram(pop_labels).to(self.device)}

    def _log_metric(self, metric: RankHistogram, prefix: str) -> dict[str, float]:
        values = {f"{prefix}/{k}": v for k, v in metric.compute().items()}
        for k, v in values.items():
            self.log(k, v, prog_bar=k.endswith(("/ndcg@10", "/hr@10")) and "sampled" not in k)
        metric.reset()
        return {k: float(v) for k, v in values.items()}

    def on_validation_epoch_end(self) -> None:
        self._log_metric(self.val_metric, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metric(self.test_metric, "test")
        if self.sampled_negatives > 0:
            self._log_metric(self.sampled_metric, "test")
        for grouped in self._groups.values():
            for label, values in grouped.compute().items():
                for k, v in values.items():
                    self.log(f"test/{label}/{k}", v)
            grouped.reset()

    def predict_step(self, batch: EvalBatch, batch_idx: int) -> dict[str, Any]:
        batch = self.prepare_eval_batch(batch)
        items = chunked_topk(
            lambda lo, hi: self.score_chunk(batch, lo, hi),
            self.num_items,
            batch["history"],
            self.predict_k,
            self.eval_chunk_size,
        )
        return {"user": batch["user"].cpu(), "items": items.cpu()}
