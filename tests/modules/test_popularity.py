"""Popularity baseline through the shared evaluation path."""

from __future__ import annotations

import numpy as np
import torch

from darec.data.datamodules.base import RecDataModule
from darec.data.dataset import PreparedData
from darec.modules.popularity import Popularity


def _train_counts(d: PreparedData) -> np.ndarray:
    """Training interactions per item, counted here from the training rows (not with the package's own helper,
    so that a leak of validation or test rows into the package's counts would show)."""
    counts = np.zeros(d.num_items + 1)
    for u in range(1, d.num_users + 1):
        for item in d.train.row(u).tolist():
            counts[item] += 1
    return counts


def _reference_ndcg10(d: PreparedData, split: str) -> float:
    counts = _train_counts(d)
    ev = d.eval_split(split)
    total = 0.0
    for k in range(len(ev)):
        t = ev.targets[k]
        masked = set(ev.history_of(k).tolist()) - {t}
        others = [j for j in range(1, d.num_items + 1) if j != t and j not in masked]
        rank = sum(counts[j] >= counts[t] for j in others)
        total += 1 / np.log2(rank + 2) if rank < 10 else 0.0
    return total / len(ev)


def test_popularity_matches_reference(synth_dir):
    import lightning as L

    dm = RecDataModule(str(synth_dir), eval_batch_size=64)
    model = Popularity(num_items=dm.num_items, num_users=dm.num_users)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    out = trainer.test(model, datamodule=dm, verbose=False)[0]
    ref = _reference_ndcg10(dm.data, "test")
    assert abs(out["test/ndcg@10"] - ref) < 1e-6
    assert out["test/ndcg@10"] > 0


def test_predict_masks_history(synth_dir):
    dm = RecDataModule(str(synth_dir), eval_batch_size=16)
    model = Popularity(num_items=dm.num_items, evaluation={"predict_k": 5})
    model.set_counts(torch.as_tensor(dm.data.train_item_counts()[: dm.num_items + 1]))
    batch = next(iter(dm.predict_dataloader()))
    out = model.predict_step(batch, 0)
    assert out["items"].shape == (16, 5)
    for row, hist in zip(out["items"].tolist(), batch["history"].tolist()):
        assert not set(row) & (set(hist) - {0})
        assert 0 not in row


def test_breakdowns_and_sampled_protocol(synth_dir):
    import lightning as L

    dm = RecDataModule(str(synth_dir), eval_batch_size=64)
    model = Popularity(num_items=dm.num_items, num_users=dm.num_users, evaluation={"breakdowns": True, "sampled_negatives": 50})
    out = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False).test(model, datamodule=dm, verbose=False)[0]
    assert 0 < out["test/ndcg@10"] < out["test/sampled_ndcg@10"] <= 1
    length_keys = [k for k in out if k.startswith("test/len") and k.endswith("/hr@10")]
    pop_keys = [k for k in out if k.startswith("test/pop") and k.endswith("/hr@10")]
    assert length_keys and pop_keys
    ev = dm.data.eval_split("test")
    lengths = np.array([len(ev.history_of(k)) for k in range(len(ev))])
    # users with 10..19 history items: their bucket's HR@10 equals the reference over that subset
    counts = dm.data.train_item_counts()[: dm.num_items + 1]
    sel = (lengths >= 10) & (lengths < 20)
    hits = 0
    for k in np.nonzero(sel)[0]:
        t = ev.targets[k]
        masked = set(ev.history_of(k).tolist()) - {t}
        rank = sum(counts[j] >= counts[t] for j in range(1, dm.num_items + 1) if j != t and j not in masked)
        hits += rank < 10
    assert abs(out["test/len10-19/hr@10"] - hits / sel.sum()) < 1e-6
