"""Embedding export: round trip, fingerprint checks, zero rows for items without training data."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from darec.data.pipeline import PrepareOptions, build_tables
from darec.data.dataset import PreparedData, save_prepared
from darec.data.synth import SynthConfig, make_synthetic
from darec.data.datamodules.interaction import normalized_adjacency
from darec.errors import ConfigError, FingerprintError
from darec.modules.cf import best_checkpoint, export_module, load_cf_embeddings, require_exports, sidecar_path
from darec.modules.lightgcn import LightGCN
from darec.modules.sasrec import SASRec, SasrecUserEncoder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> PreparedData:
    """Synthetic data plus items seen only in validation/test (warm, but no training interaction)."""
    inter, items = make_synthetic(SynthConfig(num_users=60, num_items=30, seed=4))
    t = int(inter["timestamp"].max())
    extra = [("1", "9001", t + 1), ("2", "9001", t + 1), ("3", "9002", t + 1), ("3", "9003", t + 2)]
    inter = pd.concat([inter, pd.DataFrame([(u, i, ts, 5.0) for u, i, ts in extra], columns=inter.columns)])
    new_items = pd.DataFrame([{"item": i, "title": f"Only Held Out {i}", "year": 2000, "genres": ["War"]} for i in ("9001", "9002", "9003")])
    items = pd.concat([items, new_items], ignore_index=True)
    out = tmp_path_factory.mktemp("export") / "data"
    save_prepared(build_tables(inter, items, PrepareOptions(), source="test"), out, config={}, inputs={})
    return PreparedData(out)


def _no_cf_ids(data: PreparedData) -> list[int]:
    return [data.item_id(r) for r in ("9001", "9002", "9003")]


def test_fixture_has_items_without_training_interactions(data: PreparedData) -> None:
    counts = data.train_item_counts()
    ids = _no_cf_ids(data)
    assert all(1 <= i <= data.num_items for i in ids), "they are warm catalogue items"
    assert all(counts[i] == 0 for i in ids)


def test_sasrec_export_round_trip(data: PreparedData, tmp_path) -> None:
    torch.manual_seed(0)
    model = SASRec(data.num_items, data.num_users, data.fingerprint, hidden_size=16, inner_size=32, max_len=10).eval()
    path = export_module(model, data, tmp_path / "sasrec.safetensors")
    cf = load_cf_embeddings(path, data.fingerprint)
    ids = _no_cf_ids(data)
    assert cf.kind == "sasrec" and cf.item_emb.shape == (data.num_items + 1, 16)
    assert cf.has_cf.dtype == torch.bool and not cf.has_cf[0] and not cf.has_cf[ids].any()
    assert int(cf.has_cf.sum()) == data.num_items - len(ids)
    assert (cf.item_emb[[0, *ids]] == 0).all()
    keep = cf.has_cf
    torch.testing.assert_close(cf.item_emb[keep], model.item_weight.detach()[keep])

    meta = json.loads(sidecar_path(path).read_text())
    assert meta["fingerprint"] == data.fingerprint and meta["item_raw_ids"] == data.item_raw_ids[: data.num_items + 1]
    assert meta["causal"] == {"item_emb": True, "user_emb": None, "user_states": "sasrec_encoder"}

    enc = SasrecUserEncoder.from_export(path, data.fingerprint)
    seq = torch.tensor([[0, 0, 3, 5, 7, 2, 9, 4, 1, 6], [8, 3, 5, 7, 2, 9, 4, 1, 6, 11]])
    torch.testing.assert_close(enc.causal_user_states(seq), model.causal_user_states(seq))
    assert not any(p.requires_grad for p in enc.parameters())
    torch.testing.assert_close(enc.train().causal_user_states(seq), model.causal_user_states(seq))  # frozen: no dropout
    enc.unfreeze().train()
    assert all(p.requires_grad for p in enc.parameters())
    assert not torch.allclose(enc.causal_user_states(seq), model.causal_user_states(seq)), "unfrozen: dropout is back"


def test_fingerprint_mismatch_raises(data: PreparedData, tmp_path) -> None:
    model = SASRec(data.num_items, data.num_users, data.fingerprint, hidden_size=8, inner_size=16, max_len=5)
    path = export_module(model, data, tmp_path / "e.safetensors")
    with pytest.raises(FingerprintError, match="different prepared dataset"):
        load_cf_embeddings(path, "0" * 64)
    with pytest.raises(FingerprintError):
        SasrecUserEncoder.from_export(path, "f" * 64)
    other = SASRec(data.num_items, data.num_users, "a" * 64, hidden_size=8, inner_size=16, max_len=5)
    with pytest.raises(FingerprintError):
        export_module(other, data, tmp_path / "other.safetensors")


def test_lightgcn_export_item_and_non_causal_user_vectors(data: PreparedData, tmp_path) -> None:
    torch.manual_seed(0)
    model = LightGCN(data.num_items, data.num_users, data.fingerprint, embedding_size=8)
    model.set_graph(normalized_adjacency(data.train, data.num_users, data.num_items))
    users, items = model.propagate()
    path = export_module(model, data, tmp_path / "lgcn", include_user_emb=True)
    assert path.name == "lgcn.safetensors" and sidecar_path(path).name == "lgcn.json"
    cf = load_cf_embeddings(path, data.fingerprint)
    ids = _no_cf_ids(data)
    assert cf.kind == "lightgcn" and cf.causal_user_states is None
    assert (cf.item_emb[[0, *ids]] == 0).all() and not cf.has_cf[ids].any()
    torch.testing.assert_close(cf.item_emb[cf.has_cf], items.detach()[cf.has_cf])
    assert cf.user_emb is not None and cf.user_emb.shape == (data.num_users + 1, 8)
    assert cf.meta["causal"]["user_emb"] is False
    torch.testing.assert_close(cf.user_emb[1:], users.detach()[1:])
    with pytest.raises(ConfigError, match="a lightgcn export has no causal SASRec user encoder"):
        SasrecUserEncoder.from_cf(cf)


def test_a_run_directory_resolves_to_its_one_best_checkpoint(tmp_path) -> None:
    run = tmp_path / "logs" / "sasrec" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("best-epoch004.ckpt", "last.ckpt"):
        (run / "checkpoints" / name).write_bytes(b"x")
    best = run / "checkpoints" / "best-epoch004.ckpt"
    assert best_checkpoint(run) == best
    assert best_checkpoint(run / "checkpoints") == best
    assert best_checkpoint(best) == best
    (run / "checkpoints" / "best-epoch007.ckpt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="expected exactly one best\\*.ckpt, found best-epoch004.ckpt, best-epoch007.ckpt, last.ckpt"):
        best_checkpoint(run)
    with pytest.raises(ConfigError, match="no such checkpoint or run directory"):
        best_checkpoint(tmp_path / "nowhere")


def test_missing_exports_are_named_together_with_the_command_that_writes_them(tmp_path) -> None:
    present = tmp_path / "have.safetensors"
    present.write_bytes(b"")
    sidecar_path(present).write_text("{}")
    half = tmp_path / "half.safetensors"
    half.write_bytes(b"")  # no sidecar
    require_exports([present])
    with pytest.raises(ConfigError) as e:
        require_exports([present, tmp_path / "gone", half])
    msg = str(e.value)
    assert f"CF export not found: {tmp_path / 'gone.safetensors'}, {half} " in msg
    assert f"--out {half}" in msg and str(present) not in msg
