"""Callbacks darec adds to every Trainer."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar

from darec.atomic import atomic_write_text

log = logging.getLogger(__name__)


class JsonlPredictionWriter(BasePredictionWriter):
    """Writes ``predict`` output as JSON lines ``{"user": raw_id, "items": [raw_id, ...]}``, best first.

    Args:
        path: output file; default ``<log_dir>/predictions.jsonl``.
    """

    def __init__(self, path: str | None = None):
        super().__init__(write_interval="epoch")
        self.path = path
        self.written: Path | None = None

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Sequence[Any], batch_indices: Sequence[Any]) -> None:
        data = trainer.datamodule.data  # type: ignore[union-attr]
        flat = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        lines = []
        for out in flat:
            for u, items in zip(out["user"].tolist(), out["items"].tolist()):
                lines.append(json.dumps({"user": data.user_raw_ids[u], "items": [data.item_raw_ids[i] for i in items]}))
        path = Path(self.path or os.path.join(trainer.log_dir or ".", "predictions.jsonl"))
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
        self.written = path
        print(f"wrote {len(lines)} predictions to {path}")


class EpochSummary(L.Callback):
    """Logs one line per validation during ``fit``, e.g. ``SASRec epoch 3/30: val NDCG@10 0.0712 (best 0.0712) 8.1 s``.

    Progress bars redraw one terminal line; in a log file they leave nothing readable (or a line per redraw).
    This line is the same in both. The time is the wall time since the epoch started, validation included.

    Args:
        name: the model's name at the start of the line.
        monitor: the logged metric to report.
        label: how to print ``monitor``.
    """

    def __init__(self, name: str, monitor: str = "val/ndcg@10", label: str = "val NDCG@10"):
        self.name = name
        self.monitor = monitor
        self.label = label
        self.best: float | None = None
        self._started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_validation_end, not on_validation_epoch_end: callbacks run before the module's epoch-end hook, where
        # RecModule logs the metrics.
        if trainer.sanity_checking or trainer.state.fn != "fit" or not trainer.is_global_zero:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        value = float(value)
        self.best = value if self.best is None else max(self.best, value)
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        log.info("%s epoch %d%s: %s %.4f (best %.4f) %.1f s", self.name, trainer.current_epoch + 1, total, self.label,
                 value, self.best, time.perf_counter() - self._started)


class CompactProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar with epochs counted from 1 (``Epoch 2/2`` in the last of two epochs), without the
    logger's version number (``v_num``), and with only the training loss and ``monitor`` on the bar, so that
    they fit on the bar's line."""

    def __init__(self, monitor: str = "val/ndcg@10", refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate)
        self.monitor = monitor

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}{total}")

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        shown: dict[str, Any] = {}
        for key, short in (("train/loss_step", "loss"), ("train/loss", "loss"), (self.monitor, self.monitor.split("/")[-1])):
            if key in metrics and short not in shown:
                shown[short] = metrics[key]
        return shown
