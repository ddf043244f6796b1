"""A Lightning callback that every search trial's fit config carries: it writes the trial's report JSON.

The report holds the trainable parameter count, the validation metrics of every validation epoch, the test
metrics (refit only) and the error that stopped training, if any. A non-finite training loss stops the trial.
"""

from __future__ import annotations

import json
from typing import Any

import lightning as L
import torch

from darec.atomic import atomic_write_text


class TrialReport(L.Callback):
    """Writes ``path`` (JSON) after every validation epoch, after testing, and when training fails."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.report: dict[str, Any] = {"trainable_params": None, "val": [], "test": {}, "error": None}

    def _write(self) -> None:
        atomic_write_text(self.path, json.dumps(self.report, indent=1))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from darec.modules.adapters import count_trainable

        self.report["trainable_params"] = count_trainable(pl_module)
        self._write()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss).all()):
            raise FloatingPointError(f"training loss is {float(loss)} at step {trainer.global_step}")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self.report["val"].append({"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics})
        self._write()

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.report["test"] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        self._write()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        text = f"{type(exception).__name__}: {exception}"
        if isinstance(exception, torch.OutOfMemoryError) or "out of memory" in str(exception).lower():
            text = f"out of memory: {text}"
        self.report["error"] = text[:500]
        self._write()
