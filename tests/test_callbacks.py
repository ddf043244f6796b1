"""The per-epoch summary line and the compact progress bar (tiny SASRec, synthetic data)."""

from __future__ import annotations

import logging
import re

import lightning as L
import pytest
from lightning.pytorch.loggers import CSVLogger

from darec.callbacks import CompactProgressBar, EpochSummary
from darec.data.datamodules.sequence import SequenceDataModule
from darec.modules.sasrec import SASRec


class _Record(L.Callback):
    """The validation NDCG@10 Lightning holds after each validation, to compare the summary lines with."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.values.append(float(trainer.callback_metrics["val/ndcg@10"]))


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def fitted(small_synth_dir, tmp_path_factory):
    L.seed_everything(0, verbose=False)
    dm = SequenceDataModule(str(small_synth_dir), batch_size=32, eval_batch_size=64, max_len=8, num_negatives=0)
    model = SASRec(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint, hidden_size=16,
                   inner_size=32, max_len=8)
    summary, bar, record = EpochSummary("SASRec"), CompactProgressBar(), _Record()
    handler = _Lines()
    logger = logging.getLogger("darec.callbacks")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        trainer = L.Trainer(max_epochs=3, limit_train_batches=2, callbacks=[summary, bar, record], enable_model_summary=False,
                            logger=CSVLogger(str(tmp_path_factory.mktemp("bar"))), num_sanity_val_steps=1,
                            log_every_n_steps=1)
        trainer.fit(model, datamodule=dm)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return trainer, model, bar, record, handler.lines


def test_one_summary_line_per_validation_epoch(fitted):
    _, _, _, record, logs = fitted
    assert len(logs) == 3 == len(record.values)  # the sanity check is not reported
    best = 0.0
    for epoch, (line, value) in enumerate(zip(logs, record.values), 1):
        best = max(best, value)
        m = re.fullmatch(r"SASRec epoch (\d)/3: val NDCG@10 (\d\.\d{4}) \(best (\d\.\d{4})\) (\d+\.\d) s", line)
        assert m, line
        assert int(m[1]) == epoch and m[2] == f"{value:.4f}" and m[3] == f"{best:.4f}"


def test_compact_bar_counts_epochs_from_one_and_shows_two_metrics(fitted):
    trainer, model, bar, _, _ = fitted
    assert bar.train_progress_bar.desc.startswith("Epoch 3/3")
    metrics = bar.get_metrics(trainer, model)
    assert set(metrics) == {"loss", "ndcg@10"}  # no v_num, no long names
    assert metrics["ndcg@10"] == pytest.approx(float(trainer.callback_metrics["val/ndcg@10"]))
