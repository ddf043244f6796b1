"""The uniform interface every darec recommender follows.

A model implements :meth:`RecModule.score_chunk`: the scores of item ids ``lo..hi-1`` for the users
of an evaluation batch. Validation, test and predict are then shared: full-catalogue ranking in
chunks, with history masked, through :mod:`darec.evaluation`.

Recommending for a history that is not in the data (:mod:`darec.recommend`) goes through
:meth:`RecModule.item_vectors` and :meth:`RecModule.history_user_vectors`: the score of item ``j`` is the dot
product of the two. Every checkpoint records which class wrote it and the raw ids and titles of its items
(:data:`MODEL_RECORD`), so it can be loaded and used without the prepared dataset.
"""

from __future__ import annotations

import importlib
import random
import sys
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torchmetrics import Metric

from darec.errors import ConfigError, FingerprintError
from darec.evaluation.metrics import (
    GroupedRankHistogram,
    history_length_buckets,
    popularity_buckets,
    popularity_edges,
    RankHistogram,
    sample_negatives,
    sampled_target_ranks,
)
from darec.evaluation.ranking import chunked_target_ranks, chunked_topk

EvalBatch = dict[str, torch.Tensor]

MODEL_RECORD = "darec_model"
RNG_RECORD = "darec_rng"
"""Checkpoint key of the random number generators' states when the checkpoint was written (for exact resuming)."""
"""Checkpoint key of ``{"class_path": ..., "items": ItemCatalog | None}``, written by :meth:`RecModule.on_save_checkpoint`."""

# Checkpoints written before MODEL_RECORD existed: the class is told by what it stored.
_LEGACY_CLASSES = (
    ("darec_backbone", "darec.modules.darec.DARec"),  # DARec records its backbone's identity
    ("encoder.item_embedding.weight", "darec.modules.sasrec.SASRec"),
    ("item_rep", "darec.modules.lightgcn.LightGCN"),
    ("counts", "darec.modules.popularity.Popularity"),
)


@dataclass
class ItemCatalog:
    """Raw ids and titles of a model's items; index = internal item id, index 0 is padding (``""``)."""

    raw_ids: list[str]
    titles: list[str]

    @classmethod
    def from_data(cls, data: Any, num_items: int) -> "ItemCatalog":
        """The catalogue items ``0..num_items`` of a prepared dataset; a title is the ``title`` attribute, else
        the item's sentence."""
        titles = [""] + [str(data.attrs(i).get("title") or data.sentences[i]) for i in range(1, num_items + 1)]
        return cls(list(data.item_raw_ids[: num_items + 1]), titles)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> "ItemCatalog":
        return cls(list(record["raw_ids"]), list(record["titles"]))


def checkpoint_model_class(checkpoint: dict[str, Any], where: str = "the checkpoint") -> type["RecModule"]:
    """The :class:`RecModule` subclass that wrote ``checkpoint`` (a loaded Lightning checkpoint dict).

    Read from :data:`MODEL_RECORD`, else from the class path LightningCLI stores in the hyperparameters, else
    (older checkpoints) from what the checkpoint holds. Only classes under ``darec.`` or already imported are
    imported, as Lightning does, so a checkpoint cannot make darec import arbitrary code.
    """
    record = checkpoint.get(MODEL_RECORD) or {}
    class_path = record.get("class_path") or (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if not class_path:
        keys = set(checkpoint) | set(checkpoint.get("state_dict", {}))
        class_path = next((path for key, path in _LEGACY_CLASSES if key in keys), None)
    if not class_path:
        raise ConfigError(f"{where} does not say which model wrote it (not a darec checkpoint?)")
    module, _, name = str(class_path).rpartition(".")
    if not module.startswith("darec.") and module not in sys.modules:
        raise ConfigError(f"{where} was written by {class_path}; import {module} first to load it")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{where} was written by {class_path}, which cannot be imported ({e})") from None
    if not (isinstance(cls, type) and issubclass(cls, RecModule)):
        raise ConfigError(f"{where} was written by {class_path}, which is not a darec model (RecModule)")
    return cls


@dataclass
class EvalConfig:
    """How every model is evaluated and how ``predict`` answers (``model.init_args.evaluation`` in a config)."""

    chunk_size: int = 4096  # items scored at once during evaluation, which bounds peak memory
    predict_k: int = 10  # items per user written by `darec predict`
    breakdowns: bool = False  # test metrics by history-length and target-popularity bucket too
    sampled_negatives: int = 0  # > 0: also the sampled protocol (target + this many negatives), as test/sampled_*


class RecModule(L.LightningModule):
    """Base LightningModule: shared evaluation and prediction over the whole catalogue.

    Args:
        num_items: catalogue size (item ids ``1..num_items``); linked from the data by the CLI.
        num_users: number of users (ids ``1..num_users``); linked from the data by the CLI.
        data_fingerprint: fingerprint of the prepared dataset; linked by the CLI, kept in checkpoints.
        evaluation: the shared evaluation settings (:class:`EvalConfig`, or a dict of its fields): the chunk size,
            ``predict``'s k, the test breakdowns by history-length and target-popularity bucket (logged as
            ``test/len5-9/ndcg@10``, ``test/pop<12/hr@10``, ...) and the sampled protocol (the target against
            ``sampled_negatives`` uniform negatives, never history items, logged as ``test/sampled_ndcg@10``, ...).
    """

    def __init__(
        self,
        num_items: int = 0,
        num_users: int = 0,
        data_fingerprint: str = "",
        evaluation: EvalConfig | dict | None = None,
    ):
        super().__init__()
        self.evaluation = EvalConfig(**evaluation) if isinstance(evaluation, dict) else (evaluation or EvalConfig())
        self.sampled_metric = RankHistogram(prefix="sampled_")
        self._groups: dict[str, GroupedRankHistogram] = {}
        self._pop_edges: tuple[int, ...] = ()
        self._item_counts: torch.Tensor | None = None
        self.num_items = num_items
        self.num_users = num_users
        self.data_fingerprint = data_fingerprint
        self.val_metric = RankHistogram()
        self.test_metric = RankHistogram()
        self.item_catalog: ItemCatalog | None = None

    def attached_datamodule(self) -> Any:
        """The trainer's datamodule, or None when the model is not attached to a trainer (or has none)."""
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    def check_window_length(self, model_max_len: int) -> None:
        """Refuse a datamodule whose windows (``max_len``) are longer than the model's ``model_max_len`` positions:
        the model would silently cut them. One clear error naming both settings."""
        dm_len = getattr(self.attached_datamodule(), "max_len", None)
        if dm_len is not None and dm_len > model_max_len:
            raise ConfigError(
                f"data max_len {dm_len} exceeds the model's max_len {model_max_len}: set data.init_args.max_len to at "
                f"most {model_max_len} (or raise the model's)"
            )

    def cf_export(self, data: Any, has_cf: torch.Tensor, include_user_emb: bool = False) -> Any:
        """This model as a CF source for DARec's injection: a :class:`~darec.modules.cf.CFExport` with one vector
        per item id (``has_cf`` [num_items + 1] marks items with training interactions; ``data`` is the prepared
        dataset it was trained on). Models that have no item vectors to give keep this default, which refuses."""
        raise ConfigError(
            f"{type(self).__name__} is not a CF source: it does not implement cf_export (see darec.modules.cf); "
            "SASRec and LightGCN are"
        )

    def on_eval_start(self) -> None:
        """Hook: build what scoring needs (propagated representations, an item table) before every validation,
        test and predict pass. Every model overrides this one name; the default does nothing."""

    def prepare_eval_batch(self, batch: EvalBatch) -> EvalBatch:
        """Hook: per-batch state computed once before chunked scoring. The default adds ``user_vec``, the
        :meth:`history_user_vectors` of the batch's histories."""
        return {**batch, "user_vec": self.history_user_vectors(batch["history"])}

    def score_chunk(self, batch: EvalBatch, lo: int, hi: int) -> torch.Tensor:
        """Scores [B, hi-lo] of item ids ``lo..hi-1`` for the users in ``batch`` (after :meth:`prepare_eval_batch`).
        The default scorer: ``user_vec`` against rows ``lo..hi-1`` of :meth:`item_vectors`."""
        return batch["user_vec"] @ self.item_vectors()[lo:hi].T

    def eval_ranks(self, batch: EvalBatch) -> torch.Tensor:
        """0-based full-ranking ranks [B] of the batch's targets (history masked, ties against the target), as
        validation and test compute them; call :meth:`on_eval_start` first."""
        return self._prepared_ranks(self.prepare_eval_batch(batch))

    def _prepared_ranks(self, batch: EvalBatch) -> torch.Tensor:
        return chunked_target_ranks(
            lambda lo, hi: self.score_chunk(batch, lo, hi),
            self.num_items,
            batch["target"],
            batch["history"],
            chunk_size=self.evaluation.chunk_size,
        )

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self.val_metric.update(self.eval_ranks(batch))

    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        batch = self.prepare_eval_batch(batch)
        ranks = self._prepared_ranks(batch)
        self.test_metric.update(ranks)
        if self.evaluation.breakdowns and self._item_counts is not None:
            lengths = (batch["history"] > 0).sum(1)
            g, _ = history_length_buckets(lengths)
            self._groups["length"].update(ranks, g)
            g, _ = popularity_buckets(self._item_counts.to(ranks.device)[batch["target"]], self._pop_edges)
            self._groups["popularity"].update(ranks, g)
        if self.evaluation.sampled_negatives > 0:
            gen = torch.Generator(device="cpu").manual_seed(1000 + batch_idx)
            negs = sample_negatives(batch["target"].cpu(), batch["history"].cpu(), self.num_items, self.evaluation.sampled_negatives, gen)
            ids = torch.cat([batch["target"].cpu()[:, None], negs], 1).to(batch["target"].device)
            scores = self._scores_for(batch, ids)
            self.sampled_metric.update(sampled_target_ranks(scores[:, 0], scores[:, 1:]))

    def _scores_for(self, batch: EvalBatch, ids: torch.Tensor) -> torch.Tensor:
        """Scores [B, K] of the item ids ``ids`` [B, K], gathered chunk by chunk."""
        out = torch.empty(ids.shape, dtype=torch.float32, device=ids.device)
        for lo in range(1, self.num_items + 1, self.evaluation.chunk_size):
            hi = min(self.num_items + 1, lo + self.evaluation.chunk_size)
            inside = (ids >= lo) & (ids < hi)
            if inside.any():
                s = self.score_chunk(batch, lo, hi).float()
                rows = torch.nonzero(inside, as_tuple=True)[0]
                out[inside] = s[rows, ids[inside] - lo]
        return out

    def _fresh_metrics(self) -> None:
        """Reset every metric of this module before an evaluation pass, so that each process counts into tensors
        of its own. Under ``ddp_spawn`` the model reaches the worker processes through shared memory; Lightning
        copies parameters and buffers back to private memory, but not the metrics' states, so without a reset the
        workers add their batches into one shared histogram (each total then counted twice, and a batch lost
        when two updates race)."""
        for module in self.modules():
            if isinstance(module, Metric):
                module.reset()

    def on_validation_epoch_start(self) -> None:
        self._fresh_metrics()
        self.on_eval_start()

    def on_predict_epoch_start(self) -> None:
        self.on_eval_start()

    def on_test_epoch_start(self) -> None:
        self._fresh_metrics()
        self.on_eval_start()
        dm = self.attached_datamodule()
        if self.evaluation.breakdowns and dm is not None and hasattr(dm, "data"):
            counts = torch.as_tensor(dm.data.train_item_counts()[: self.num_items + 1])
            self._item_counts = counts
            self._pop_edges = popularity_edges(counts)
            _, len_labels = history_length_buckets(torch.zeros(1, dtype=torch.long))
            _, pop_labels = popularity_buckets(torch.zeros(1, dtype=torch.long), self._pop_edges)
            self._groups = {"length": GroupedRankHistogram(len_labels).to(self.device),
                            "popularity": GroupedRankHistogram(pop_labels).to(self.device)}

    def log_reduced(self, name: str, value: Any, **kw: Any) -> None:
        """Log an evaluation figure that every process already holds (computed from histograms reduced across DDP
        ranks, or chosen from them). The maximum over equal values returns each one exactly, and declaring the sync
        keeps Lightning from warning that an epoch-level figure was not reduced."""
        self.log(name, value, sync_dist=True, reduce_fx="max", **kw)

    def _log_metric(self, metric: RankHistogram, prefix: str) -> dict[str, float]:
        values = {f"{prefix}/{k}": v for k, v in metric.compute().items()}
        for k, v in values.items():
            self.log_reduced(k, v, prog_bar=k.endswith(("/ndcg@10", "/hr@10")) and "sampled" not in k)
        metric.reset()
        return {k: float(v) for k, v in values.items()}

    def on_validation_epoch_end(self) -> None:
        self._log_metric(self.val_metric, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metric(self.test_metric, "test")
        if self.evaluation.sampled_negatives > 0:
            self._log_metric(self.sampled_metric, "test")
        for grouped in self._groups.values():
            for label, values in grouped.compute().items():
                for k, v in values.items():
                    self.log_reduced(f"test/{label}/{k}", v)
            grouped.reset()

    # ------------------------------------------------------------ recommending for new histories
    def item_vectors(self) -> torch.Tensor:
        """The item table ``[num_items + 1, d]`` (row 0 padding): item ``j`` scores ``<u, table[j]>`` for a user
        vector ``u`` from :meth:`history_user_vectors`."""
        raise ConfigError(f"{type(self).__name__} does not give item vectors, so it cannot recommend for new histories")

    def history_user_vectors(self, history: torch.Tensor) -> torch.Tensor:
        """User vectors ``[B, d]`` for users known only by their histories ``[B, L]`` (internal item ids, oldest
        first, left-padded with 0), for scoring against :meth:`item_vectors`."""
        raise ConfigError(f"{type(self).__name__} does not give user vectors, so it cannot recommend for new histories")

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the class and the items' raw ids and titles (from the attached data) in the checkpoint.
        Subclasses that override this call it."""
        if self.item_catalog is None:
            data = getattr(self.attached_datamodule(), "data", None)
            if data is not None and hasattr(data, "item_raw_ids"):
                self.item_catalog = ItemCatalog.from_data(data, self.num_items)
        checkpoint[MODEL_RECORD] = {
            "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
            "items": None if self.item_catalog is None else asdict(self.item_catalog),
            "data_fingerprint": self.data_fingerprint,
        }
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        checkpoint[RNG_RECORD] = {  # plain types and tensors only: checkpoints load with weights_only
            "torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Take the items' raw ids and titles from the checkpoint, and refuse a checkpoint trained on another
        dataset than the one this model was built for. Subclasses that override this call it."""
        record = checkpoint.get(MODEL_RECORD) or {}
        trained_on = record.get("data_fingerprint") or checkpoint.get("hyper_parameters", {}).get("data_fingerprint", "")
        if trained_on and self.data_fingerprint and trained_on != self.data_fingerprint:
            raise FingerprintError(
                f"this {type(self).__name__} checkpoint was trained on the prepared dataset with fingerprint "
                f"{trained_on[:12]}…, but the data given has fingerprint {self.data_fingerprint[:12]}…; "
                "evaluate it on the dataset it was trained on, or retrain"
            )
        items = record.get("items")
        if items:
            self.item_catalog = ItemCatalog.from_json(items)
        self._resume_rng = checkpoint.get(RNG_RECORD)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """On the first step after resuming, the random number generators continue where the checkpoint left them
        (dropout, sampling): the data loader has drawn its own seed by then, as it had before the checkpoint."""
        rng = getattr(self, "_resume_rng", None)
        if rng:
            torch.set_rng_state(rng["torch"])
            n = rng["numpy"]
            np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
            random.setstate(rng["python"])
            if rng.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            self._resume_rng = None

    def _check_attached_data(self) -> None:
        """Refuse to run on a datamodule whose dataset is not the one this model was built for."""
        dm = self.attached_datamodule()
        fingerprint = getattr(dm, "fingerprint", "") if dm is not None else ""
        if self.data_fingerprint and fingerprint and fingerprint != self.data_fingerprint:
            raise FingerprintError(
                f"this {type(self).__name__} was built for the prepared dataset with fingerprint "
                f"{self.data_fingerprint[:12]}…, but the datamodule holds fingerprint {fingerprint[:12]}… "
                f"({getattr(dm, 'data_dir', '?')}); use the dataset it was trained on, or retrain"
            )

    def on_fit_start(self) -> None:
        self._check_attached_data()

    def on_validation_start(self) -> None:
        self._check_attached_data()

    def on_test_start(self) -> None:
        self._check_attached_data()

    def on_predict_start(self) -> None:
        self._check_attached_data()

    def predict_step(self, batch: EvalBatch, batch_idx: int) -> dict[str, Any]:
        batch = self.prepare_eval_batch(batch)
        items = chunked_topk(
            lambda lo, hi: self.score_chunk(batch, lo, hi),
            self.num_items,
            batch["history"],
            self.evaluation.predict_k,
            self.evaluation.chunk_size,
        )
        return {"user": batch["user"].cpu(), "items": items.cpu()}
