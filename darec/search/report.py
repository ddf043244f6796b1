"""A Lightning callback that every search trial's fit config carries: it writes the trial's report JSON.

The report holds the trainable parameter count, the validation metrics of every validation epoch, the training
seconds of every epoch (validation excluded), the test metrics (refit only), why training stopped and the error
that stopped it, if any. A non-finite training loss stops the trial. With ``stop_file`` (search trials), the
trial stops early when :mod:`darec.search.stopping`'s rule says it is clearly worse than the search's other trials or its reference run.
"""

from __future__ import annotations

import json
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer

from darec.atomic import atomic_write_text
from darec.search.stopping import decide, live_thresholds
from darec.search.config import DEFAULT_METRIC


class TrialReport(L.Callback):
    """Writes ``path`` (JSON) after every validation epoch, after testing, and when training fails."""

    def __init__(self, path: str, stop_file: str | None = None, metric: str = DEFAULT_METRIC) -> None:
        self.path = path
        self.stop_file = stop_file
        self.metric = metric  # the search's metric: the early-stopping rule reads its curve
        self.report: dict[str, Any] = {"trainable_params": None, "val": [], "train_s": [], "test": {}, "stopped": None,
                                       "error": None}
        self._epoch_start: float | None = None

    def _write(self) -> None:
        atomic_write_text(self.path, json.dumps(self.report, indent=1))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from darec.modules.adapters import count_trainable

        self.report["trainable_params"] = count_trainable(pl_module)
        self._write()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def _close_epoch(self) -> None:
        if self._epoch_start is not None:
            self.report["train_s"].append(round(time.perf_counter() - self._epoch_start, 3))
            self._epoch_start = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._close_epoch()  # the epoch's training ends where its validation starts

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_epoch()  # an epoch without validation

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
        if self.stop_file and trainer.state.fn == "fit":
            judge = live_thresholds(self.stop_file, self.path, self.metric)
            curve = [h[self.metric] for h in self.report["val"] if self.metric in h]
            reason = decide(judge, curve, trainer.max_epochs or 0, self.metric) if curve else None
            if reason:
                self.report["stopped"] = reason
                trainer.should_stop = True
        self._write()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.report["stopped"] is None:
            self.report["stopped"] = stop_reason(trainer)
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


def stop_reason(trainer: L.Trainer) -> str:
    """Why a fit that no search rule stopped ended: convergence (early stopping), the time cap or the epoch cap."""
    early = trainer.early_stopping_callback
    if early is not None and early.stopped_epoch > 0:
        return f"converged: no {early.monitor} improvement for {early.patience} epochs"
    if any(isinstance(c, Timer) and c.time_remaining() is not None and c.time_remaining() <= 0 for c in trainer.callbacks):
        return "time budget reached"
    return f"max_epochs reached ({trainer.current_epoch})"
