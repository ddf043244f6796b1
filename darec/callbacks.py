"""Callbacks darec adds to every Trainer."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from darec.atomic import atomic_write_text


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
