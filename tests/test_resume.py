"""A fit stopped mid-epoch resumes from last.ckpt at the same step and ends with the same weights: SASRec with dropout
and sampled negatives, and DARec with its dropout and, with item-level adaptation, its item cache."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from darec.data.datamodules.sequence import SequenceDataModule
from darec.modules.backbone import BackboneConfig
from darec.modules.darec import DARec
from darec.modules.sasrec import SASRec


class StopAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def _model(kind: str, dm: SequenceDataModule, root) -> Any:
    kw = dict(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint)
    if kind == "sasrec":  # dropout and BCE against sampled negatives: both draw random numbers every step
        return SASRec(**kw, hidden_size=16, max_len=10, hidden_dropout=0.3, attn_dropout=0.3, loss="bce")
    extra = {} if kind == "darec" else dict(item_adapter_layers=None, max_fresh_items=8, refresh_every=2)
    return DARec(**kw, backbone=BackboneConfig(name="tiny-bert"), max_len=10, dropout=0.2, cache_dir=str(root / "cache"),
                 **extra)


def _fit(kind, data_dir, root, ckpt_path=None, stop_at=None):
    L.seed_everything(0)
    dm = SequenceDataModule(str(data_dir), batch_size=16, max_len=10, num_negatives=1 if kind == "sasrec" else 0, seed=3)
    model = _model(kind, dm, root)
    callbacks = [ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=1, save_top_k=0)]
    if stop_at is not None:
        callbacks.append(StopAt(stop_at))
    trainer = L.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=callbacks, limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=root)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model, trainer


@pytest.mark.parametrize("kind", ["sasrec", "darec", "darec_item_level"])
def test_mid_epoch_resume_matches_uninterrupted(small_synth_dir, tmp_path, kind):
    full, t_full = _fit(kind, small_synth_dir, tmp_path / "full")
    steps_per_epoch = t_full.num_training_batches
    stop = steps_per_epoch + steps_per_epoch // 2 + 1  # in the middle of the second epoch, between two refreshes
    _, t_cut = _fit(kind, small_synth_dir, tmp_path / "cut", stop_at=stop)
    assert t_cut.global_step == stop
    resumed, t_res = _fit(kind, small_synth_dir, tmp_path / "cut", ckpt_path=str(tmp_path / "cut" / "last.ckpt"))
    assert t_res.global_step == t_full.global_step == 2 * steps_per_epoch
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=1e-6), name
