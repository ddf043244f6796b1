"""A model trained on dataset A refuses dataset B (same sizes, other interactions), for every model and both ways in:
``load_from_checkpoint`` then evaluation on B, and ``darec test --ckpt_path`` with B's config."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest

from darec.cli.main import main
from darec.data.datamodules.base import RecDataModule
from darec.data.synth import SynthConfig, write_synthetic
from darec.data.datamodules.interaction import InteractionDataModule
from darec.data.datamodules.sequence import SequenceDataModule
from darec.errors import FingerprintError
from darec.modules.backbone import BackboneConfig
from darec.modules.darec import DARec
from darec.modules.lightgcn import LightGCN
from darec.modules.popularity import Popularity
from darec.modules.sasrec import SASRec

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHAPE = dict(num_users=40, num_items=20, num_clusters=4, min_len=6, max_len=10)


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory) -> tuple[str, str]:
    a = tmp_path_factory.mktemp("a") / "data"
    b = tmp_path_factory.mktemp("b") / "data"
    write_synthetic(a, SynthConfig(seed=11, **SHAPE))
    write_synthetic(b, SynthConfig(seed=12, **SHAPE))
    return str(a), str(b)


MODELS = {
    "popularity": (Popularity, RecDataModule, {}, {}),
    "sasrec": (SASRec, SequenceDataModule, dict(hidden_size=8, inner_size=16, max_len=8), dict(max_len=8, batch_size=16)),
    "lightgcn": (LightGCN, InteractionDataModule, dict(embedding_size=8), dict(batch_size=64)),
    "darec": (DARec, SequenceDataModule, dict(backbone=BackboneConfig(name="tiny-bert"), max_len=8),
              dict(max_len=8, batch_size=16, num_negatives=0)),
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_a_checkpoint_refuses_another_dataset(kind, two_datasets, tmp_path):
    cls, dm_cls, model_kw, data_kw = MODELS[kind]
    a, b = (dm_cls(path, **data_kw) for path in two_datasets)
    assert a.num_items == b.num_items and a.num_users == b.num_users and a.fingerprint != b.fingerprint
    if kind == "darec":
        model_kw = dict(model_kw, cache_dir=str(tmp_path))
    model = cls(num_items=a.num_items, num_users=a.num_users, data_fingerprint=a.fingerprint, **model_kw)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0)
    if kind == "popularity":
        trainer.test(model, datamodule=a, verbose=False)
    else:
        trainer.fit(model, datamodule=a)
    ckpt = tmp_path / "a.ckpt"
    trainer.save_checkpoint(ckpt)

    loaded = cls.load_from_checkpoint(ckpt)
    quiet = dict(logger=False, enable_progress_bar=False, enable_model_summary=False)
    assert L.Trainer(**quiet).test(loaded, datamodule=a, verbose=False)[0]["test/ndcg@10"] >= 0  # its own data: fine
    with pytest.raises(FingerprintError) as err:
        L.Trainer(**quiet).test(cls.load_from_checkpoint(ckpt), datamodule=b, verbose=False)
    assert a.fingerprint[:12] in str(err.value) and b.fingerprint[:12] in str(err.value)

    # the `darec test` path: B's data linked into a fresh model, then A's checkpoint restored into it
    fresh = cls(num_items=b.num_items, num_users=b.num_users, data_fingerprint=b.fingerprint, **model_kw)
    with pytest.raises(FingerprintError) as err:
        L.Trainer(**quiet).test(fresh, datamodule=b, ckpt_path=str(ckpt), verbose=False)
    assert a.fingerprint[:12] in str(err.value) and b.fingerprint[:12] in str(err.value)


def test_darec_test_cli_refuses_a_checkpoint_of_another_dataset(two_datasets, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    a, b = two_datasets
    small = ["--model.init_args.hidden_size", "8", "--model.init_args.inner_size", "16", "--trainer.accelerator", "cpu",
             "--trainer.logger", "false", "--trainer.callbacks", "[]"]
    config = str(CONFIGS / "sasrec_ml100k.yaml")
    assert main(["fit", "--config", config, "--data.init_args.data_dir", a, "--trainer.max_epochs", "1",
                 "--test_after_fit", "false", *small]) == 0
    ckpt = next(tmp_path.rglob("*.ckpt"))
    assert main(["test", "--config", config, "--data.init_args.data_dir", a, "--ckpt_path", str(ckpt), *small]) == 0
    capsys.readouterr()
    assert main(["test", "--config", config, "--data.init_args.data_dir", b, "--ckpt_path", str(ckpt), *small]) == 2
    err = capsys.readouterr().err
    assert "fingerprint" in err and "Traceback" not in err
