"""Recommender API: from checkpoint, cold items, new items, item-vector export, CLI."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from darec.cli import main
from darec.data.windows import SequenceDataModule
from darec.errors import DataError
from darec.modules.backbone import BackboneConfig
from darec.modules.darec import DARec
from darec.recommend import Recommender, export_item_vectors


@pytest.fixture(scope="module")
def ckpt(synth_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rec")
    dm = SequenceDataModule(str(synth_dir), batch_size=32, eval_batch_size=128, max_len=12, num_negatives=0)
    m = DARec(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint,
              backbone=BackboneConfig(name="tiny-bert"), max_len=12, cache_dir=str(tmp / "cache"))
    tr = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp))
    tr.fit(m, datamodule=dm)
    path = tmp / "darec.ckpt"
    tr.save_checkpoint(path)
    return path


def test_recommend_masks_history_and_returns_titles(ckpt):
    rec = Recommender.from_checkpoint(ckpt)
    history = ["3", "7", "11"]
    out = rec.recommend(history, k=5)
    assert len(out) == 5
    assert not {o["raw_id"] for o in out} & set(history)
    assert all(not o["cold"] and o["title"] for o in out)
    assert [o["score"] for o in out] == sorted((o["score"] for o in out), reverse=True)
    with pytest.raises(DataError, match="unknown item"):
        rec.recommend(["no-such-item"])


def test_cold_items_rank_only_on_request(ckpt):
    rec = Recommender.from_checkpoint(ckpt)
    assert rec.num_total_items == rec.num_items + 5
    everything = rec.recommend(["3"], k=rec.num_total_items, include_cold=True)
    assert sum(o["cold"] for o in everything) == 5
    assert all(torch.isfinite(torch.tensor(o["score"])) for o in everything)
    assert not any(o["cold"] for o in rec.recommend(["3"], k=rec.num_items - 1))


def test_add_items_without_retraining(ckpt):
    rec = Recommender.from_checkpoint(ckpt)
    before = rec.num_total_items
    (new,) = rec.add_items([{"item": "new-1", "title": "Ghost Grave 999", "genres": ["Horror"]}])
    assert new == before + 1 and rec.raw_ids[new] == "new-1"
    ranked = rec.recommend(["3"], k=rec.num_total_items, include_cold=True)
    assert "new-1" in {o["raw_id"] for o in ranked}
    with pytest.raises(DataError, match="already exists"):
        rec.add_items([{"item": "new-1", "title": "x"}])


def test_export_item_vectors(ckpt, tmp_path):
    path = export_item_vectors(ckpt, tmp_path / "items.safetensors")
    vecs = load_file(str(path))["item_vectors"]
    meta = json.loads(path.with_suffix(".json").read_text())
    assert vecs.shape[0] == meta["num_rows"] == len(meta["item_raw_ids"])
    assert torch.all(vecs[0] == 0) and meta["fingerprint"]


def test_recommend_cli(ckpt, capsys):
    assert main(["recommend", "--ckpt", str(ckpt), "--history", "3,7", "--k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(out) == 3
