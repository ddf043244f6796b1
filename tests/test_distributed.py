"""Two CPU processes (DDP, gloo) give exactly the single-process metrics: every user counted once.

Under ``ddp_spawn`` the model reaches the workers through shared memory. Lightning gives parameters and buffers
private copies, but the metrics' states stayed shared until ``RecModule`` reset them at the start of every
evaluation pass: both workers then added into one histogram, every total was counted twice (invisible in the
ratios) and, when two updates raced, a batch was lost (seen about once in 40 runs: one worker's last batch
missing). The user count summed over the workers shows the double counting on every run.
"""

from __future__ import annotations

import lightning as L
import pytest

from darec.data.datamodules.base import RecDataModule
from darec.data.synth import SynthConfig, write_synthetic
from darec.data.datamodules.sequence import SequenceDataModule
from darec.modules.popularity import Popularity
from darec.modules.sasrec import SASRec


@pytest.fixture(scope="module")
def odd_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("odd") / "data"
    write_synthetic(out, SynthConfig(num_users=151, num_items=50, min_len=5, max_len=12, seed=4))
    return out


def _test(model, dm, devices: int) -> dict[str, float]:
    kw = {"strategy": "ddp_spawn"} if devices > 1 else {}
    trainer = L.Trainer(accelerator="cpu", devices=devices, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, **kw)
    return trainer.test(model, datamodule=dm, verbose=False)[0]


class CountingPopularity(Popularity):
    """Popularity that also logs ``test/users``: the user count summed over processes, as the metric syncs it."""

    def on_test_epoch_end(self) -> None:
        with self.test_metric.sync_context():
            users = float(self.test_metric.count)
        super().on_test_epoch_end()
        self.log("test/users", users)


def test_two_processes_equal_one_exactly_popularity(odd_dir):
    dm = RecDataModule(str(odd_dir), eval_batch_size=16)
    one = _test(CountingPopularity(num_items=dm.num_items), dm, 1)
    two = _test(CountingPopularity(num_items=dm.num_items), RecDataModule(str(odd_dir), eval_batch_size=16), 2)
    assert one["test/users"] == two["test/users"] == 151
    assert one == two and one["test/ndcg@10"] > 0


def test_two_processes_equal_one_exactly_sasrec(odd_dir):
    L.seed_everything(0)
    dm = SequenceDataModule(str(odd_dir), eval_batch_size=16, max_len=10, num_negatives=0)
    model = SASRec(num_items=dm.num_items, num_users=dm.num_users, hidden_size=16, max_len=10)
    one = _test(model, dm, 1)
    two = _test(model, SequenceDataModule(str(odd_dir), eval_batch_size=16, max_len=10, num_negatives=0), 2)
    assert one == pytest.approx(two, abs=1e-7)


def test_two_processes_equal_one_exactly_lightgcn(odd_dir):
    from darec.data.datamodules.interaction import InteractionDataModule
    from darec.modules.lightgcn import LightGCN

    L.seed_everything(0)
    dm = InteractionDataModule(str(odd_dir), eval_batch_size=16)
    model = LightGCN(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint, embedding_size=16)
    one = _test(model, dm, 1)
    two = _test(model, InteractionDataModule(str(odd_dir), eval_batch_size=16), 2)
    assert one == pytest.approx(two, abs=1e-7) and one["test/ndcg@10"] > 0


def test_two_processes_equal_one_exactly_darec(odd_dir, tmp_path):
    from darec.modules.backbone import BackboneConfig
    from darec.modules.darec import DARec

    L.seed_everything(0)
    dm = SequenceDataModule(str(odd_dir), eval_batch_size=16, max_len=10, num_negatives=0)
    model = DARec(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint,
                  backbone=BackboneConfig(name="tiny-bert"), max_len=10, cache_dir=str(tmp_path))
    one = _test(model, dm, 1)
    two = _test(model, SequenceDataModule(str(odd_dir), eval_batch_size=16, max_len=10, num_negatives=0), 2)
    assert one == pytest.approx(two, abs=1e-7) and one["test/ndcg@10"] > 0


class _SameOnEveryRank(L.Callback):
    """At the end of fit, on every rank: the trained weights and their averages must equal rank 0's."""

    def on_train_end(self, trainer, pl_module):
        import torch

        ema = pl_module.ema
        assert int(ema.updates) > 0 and not ema.in_use
        for name in ema.names:
            for value in (pl_module.get_parameter(name).detach(), ema.shadow(name)):
                gathered = trainer.strategy.all_gather(value)
                assert torch.equal(gathered[0], gathered[1]), name


def test_darec_trains_under_two_processes_with_weight_averaging(odd_dir, tmp_path):
    """DARec's default configuration trains under DDP (it stopped at the first step while parameters it never trains
    were trainable), and so does ``ema``: both ranks average the same weights, validation reads the averages on every
    rank, and the model DDP hands back validates in one process exactly as its last DDP validation did."""
    from darec.modules.backbone import BackboneConfig
    from darec.modules.darec import DARec

    L.seed_everything(0)
    dm = SequenceDataModule(str(odd_dir), batch_size=16, eval_batch_size=16, max_len=10, num_negatives=0)
    model = DARec(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint,
                  backbone=BackboneConfig(name="tiny-bert"), max_len=10, cache_dir=str(tmp_path), lr=3e-3, ema=0.8)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        num_sanity_val_steps=0, callbacks=[_SameOnEveryRank()], default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=dm)
    ddp_val = float(trainer.callback_metrics["val/ndcg@10"])
    assert int(model.ema.updates) > 0 and not model.ema.in_use  # rank 0's trained weights and averages came back
    one = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    again = one.validate(model, datamodule=dm, verbose=False)[0]["val/ndcg@10"]
    assert again == pytest.approx(ddp_val, abs=1e-7) and ddp_val > 0


@pytest.mark.parametrize("kind", ["sasrec", "lightgcn"])
def test_training_under_two_processes_logs_its_epoch_loss_without_a_sync_warning(odd_dir, kind, capfd):
    """The epoch-level training losses are reduced across processes (a mean over every rank's batches), so Lightning
    has nothing to warn about: before, each epoch ended with "It is recommended to use `self.log(..., sync_dist=True)`"."""
    from darec.data.datamodules.interaction import InteractionDataModule
    from darec.modules.lightgcn import LightGCN

    L.seed_everything(0)
    if kind == "sasrec":
        dm = SequenceDataModule(str(odd_dir), batch_size=16, eval_batch_size=16, max_len=10, num_negatives=0)
        model = SASRec(num_items=dm.num_items, num_users=dm.num_users, hidden_size=16, max_len=10)
    else:
        dm = InteractionDataModule(str(odd_dir), batch_size=64, eval_batch_size=16)
        model = LightGCN(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint, embedding_size=16)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, limit_train_batches=2,
                        limit_val_batches=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    err = capfd.readouterr().err
    assert trainer.state.finished and "sync_dist" not in err, err[-2000:]
