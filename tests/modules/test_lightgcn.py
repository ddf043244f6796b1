"""LightGCN: the training-only normalised graph, BPR training and cached evaluation."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from darec.data.dataset import Ragged
from darec.data.synth import SynthConfig, write_synthetic
from darec.data.datamodules.interaction import InteractionDataModule, normalized_adjacency
from darec.errors import ConfigError
from darec.modules.lightgcn import LightGCN, _SymmetricSpMM, to_csr



def test_normalized_adjacency_matches_dense_reference() -> None:
    rows = [[], [1, 2, 2], [2, 3], [3]]
    num_users, num_items = 3, 4
    adj = normalized_adjacency(Ragged.from_lists(rows), num_users, num_items).to_dense().numpy()
    n = num_users + num_items + 2
    a = np.zeros((n, n))
    for u, items in enumerate(rows):
        for i in items:
            a[u, num_users + 1 + i] = a[num_users + 1 + i, u] = 1.0
    deg = a.sum(1)
    inv = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1e-12)), 0.0)
    ref = inv[:, None] * a * inv[None, :]
    np.testing.assert_allclose(adj, ref, rtol=1e-6, atol=1e-7)
    assert np.allclose(adj, adj.T)
    assert adj[num_users + 1 + 4].sum() == 0, "item 4 has no training edge"


def test_symmetric_spmm_gradient() -> None:
    adj = normalized_adjacency(Ragged.from_lists([[], [1, 2], [2, 3]]), 2, 3)
    x = torch.randn(7, 4, dtype=torch.float32, requires_grad=True)
    w = torch.randn(7, 4)
    (_SymmetricSpMM.apply(to_csr(adj), x) * w).sum().backward()
    torch.testing.assert_close(x.grad, adj.to_dense().T @ w)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic(out, SynthConfig(num_users=200, num_items=60, seed=2))
    return str(out)


def test_graph_holds_training_interactions_only(synth_dir: str) -> None:
    dm = InteractionDataModule(synth_dir)
    data = dm.data
    adj = dm.adjacency.coalesce()
    r, c = adj.indices().numpy()
    edges = set(zip(r.tolist(), c.tolist()))
    off = data.num_users + 1
    expected = {(u, off + int(i)) for u in range(1, data.num_users + 1) for i in data.train.row(u)}
    assert {(u, i) for u, i in edges if u < off} == expected
    assert edges == expected | {(i, u) for u, i in expected}
    for u in range(1, data.num_users + 1):
        train = set(data.train.row(u).tolist())
        for i in set(data.valid.row(u).tolist()) | set(data.test.row(u).tolist()):
            if i not in train:
                assert (u, off + i) not in edges, "a validation/test interaction is in the graph"


def _validate(model: LightGCN, dm: InteractionDataModule) -> float:
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    return float(trainer.validate(model, dm, verbose=False)[0]["val/ndcg@10"])


def test_lightgcn_trains_and_checkpoint_evaluates_without_graph(synth_dir: str, tmp_path) -> None:
    L.seed_everything(0)
    dm = InteractionDataModule(synth_dir, batch_size=256, seed=0)
    model = LightGCN(dm.num_items, dm.num_users, dm.fingerprint, embedding_size=32, lr=0.01)
    before = _validate(model, dm)
    trainer = L.Trainer(max_epochs=10, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, dm)
    after = _validate(model, dm)
    assert after > before + 0.02, (before, after)
    # the graph matters: the same training without propagation (num_layers 0, a plain BPR matrix factorisation) is worse
    L.seed_everything(0)
    flat = LightGCN(dm.num_items, dm.num_users, dm.fingerprint, embedding_size=32, lr=0.01, num_layers=0)
    L.Trainer(max_epochs=10, logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
              num_sanity_val_steps=0, limit_val_batches=0).fit(flat, InteractionDataModule(synth_dir, batch_size=256, seed=0))
    flat_ndcg = _validate(flat, dm)
    assert after > flat_ndcg + 0.015, (after, flat_ndcg)

    ckpt = tmp_path / "lightgcn.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = LightGCN.load_from_checkpoint(ckpt)
    assert not loaded.has_graph and bool(loaded.reps_ready)
    torch.testing.assert_close(loaded.item_rep, model.item_rep)
    batch = next(iter(dm.val_dataloader()))
    scores = loaded.score_chunk(loaded.prepare_eval_batch(batch), 1, dm.num_items + 1)
    torch.testing.assert_close(scores, model.score_chunk(model.prepare_eval_batch(batch), 1, dm.num_items + 1))


def test_fit_without_graph_is_a_clear_error(synth_dir: str) -> None:
    from darec.data.datamodules.sequence import SequenceDataModule

    dm = SequenceDataModule(synth_dir)
    model = LightGCN(dm.num_items, dm.num_users, dm.fingerprint, embedding_size=8)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False)
    with pytest.raises(ConfigError, match="adjacency"):
        trainer.fit(model, dm)


def test_lightgcn_evaluates_in_float64(synth_dir: str) -> None:
    """Under ``precision="64-true"`` the graph follows the embeddings' dtype (it was float32 only) and the metrics
    equal the float32 ones on this untrained model's well-separated scores."""
    L.seed_everything(0)
    dm = InteractionDataModule(synth_dir, eval_batch_size=64)
    model = LightGCN(dm.num_items, dm.num_users, dm.fingerprint, embedding_size=16)

    def test(precision: str) -> dict[str, float]:
        trainer = L.Trainer(precision=precision, logger=False, enable_progress_bar=False, enable_model_summary=False)
        return trainer.test(model, dm, verbose=False)[0]

    single = test("32-true")
    double = test("64-true")
    assert model.item_rep.dtype == torch.float64
    assert double == pytest.approx(single, abs=1e-6) and single["test/ndcg@10"] > 0
