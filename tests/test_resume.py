"""A fit stopped mid-epoch resumes from last.ckpt at the same step and ends with the same weights."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from darec.data.windows import SequenceDataModule
from darec.modules.sasrec import SASRec


class StopAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def _fit(data_dir, root, ckpt_path=None, stop_at=None) -> tuple[SASRec, L.Trainer]:
    L.seed_everything(0)
    dm = SequenceDataModule(str(data_dir), batch_size=16, max_len=10, num_negatives=0, seed=3)
    model = SASRec(num_items=dm.num_items, num_users=dm.num_users, hidden_size=16, max_len=10,
                   hidden_dropout=0.0, attn_dropout=0.0)
    callbacks = [ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=1, save_top_k=0)]
    if stop_at is not None:
        callbacks.append(StopAt(stop_at))
    trainer = L.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=callbacks, limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=root)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model, trainer


def test_mid_epoch_resume_matches_uninterrupted(small_synth_dir, tmp_path):
    full, t_full = _fit(small_synth_dir, tmp_path / "full")
    steps_per_epoch = t_full.num_training_batches
    stop = steps_per_epoch + steps_per_epoch // 2  # in the middle of the second epoch
    _, t_cut = _fit(small_synth_dir, tmp_path / "cut", stop_at=stop)
    assert t_cut.global_step == stop
    resumed, t_res = _fit(small_synth_dir, tmp_path / "cut", ckpt_path=str(tmp_path / "cut" / "last.ckpt"))
    assert t_res.global_step == t_full.global_step == 2 * steps_per_epoch
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name
