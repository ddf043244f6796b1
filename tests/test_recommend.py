"""Recommender API for every model: from checkpoint, scores as in evaluation, cold and new items, export, CLI."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from darec.cli.main import main
from darec.data.datamodules.base import left_pad
from darec.data.dataset import PreparedData
from darec.data.datamodules.interaction import InteractionDataModule
from darec.data.datamodules.sequence import SequenceDataModule
from darec.errors import ConfigError, DataError
from darec.modules.backbone import BackboneConfig
from darec.modules.base import MODEL_RECORD
from darec.modules.darec import DARec
from darec.modules.lightgcn import LightGCN
from darec.modules.popularity import Popularity
from darec.modules.sasrec import SASRec
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
    # the new item is scored like any other: its text through the item encoder, c_j = 0, against the user vector
    m = rec.model
    with torch.no_grad():
        beyond = m.encoder.encode(torch.arange(m.num_items + 1, new + 1)).float()  # cold items, then the new one
        sem = torch.cat([m.sem_cache.float(), beyond], 0)
        table = m.item_table(sem)
        user = m.user_vectors(torch.tensor([[rec.raw_ids.index("3")]]), sem)[0]
    scores = {o["raw_id"]: o["score"] for o in ranked}
    assert scores["new-1"] == pytest.approx(float(table[new] @ user), rel=1e-5, abs=1e-6)
    assert scores[rec.raw_ids[1]] == pytest.approx(float(table[1] @ user), rel=1e-5, abs=1e-6)


def test_export_item_vectors(ckpt, tmp_path, synth_dir):
    path = export_item_vectors(ckpt, tmp_path / "items.safetensors")
    vecs = load_file(str(path))["item_vectors"]
    meta = json.loads(path.with_suffix(".json").read_text())
    assert vecs.shape[0] == meta["num_rows"] == len(meta["item_raw_ids"])
    assert torch.all(vecs[0] == 0) and meta["fingerprint"] == PreparedData(synth_dir).fingerprint
    model = DARec.load_from_checkpoint(ckpt, map_location="cpu")
    model.eval()
    model.on_eval_start()
    n = model.num_items
    torch.testing.assert_close(vecs[: n + 1], model._eval_table, atol=1e-5, rtol=1e-5)  # what evaluation scores with


def test_recommend_cli(ckpt, capsys):
    assert main(["recommend", "--ckpt", str(ckpt), "--history", "3,7", "--k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(out) == 3


def _fit_and_save(model, dm, path, epochs: int = 1, batches: int = 3):
    """Train briefly (popularity: only test, it has nothing to train) and save a checkpoint as `darec fit` does."""
    tr = L.Trainer(max_epochs=epochs, limit_train_batches=batches, limit_val_batches=1, limit_test_batches=1, logger=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
                   enable_checkpointing=False, default_root_dir=str(path.parent))
    if isinstance(model, Popularity):
        tr.test(model, datamodule=dm, verbose=False)
    else:
        tr.fit(model, datamodule=dm)
    tr.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def cf_ckpts(synth_dir, tmp_path_factory):
    """SASRec, LightGCN and popularity checkpoints trained (briefly) on the synthetic data."""
    tmp = tmp_path_factory.mktemp("rec_cf")
    seq = SequenceDataModule(str(synth_dir), batch_size=64, eval_batch_size=128, max_len=12, num_negatives=0)
    graph = InteractionDataModule(str(synth_dir), batch_size=256, eval_batch_size=128)
    kw = {"num_items": seq.num_items, "num_users": seq.num_users, "data_fingerprint": seq.fingerprint}
    L.seed_everything(0, verbose=False)
    return {
        "sasrec": _fit_and_save(SASRec(**kw, hidden_size=16, inner_size=32, max_len=12), seq, tmp / "sasrec.ckpt"),
        "lightgcn": _fit_and_save(LightGCN(**kw, embedding_size=16), graph, tmp / "lightgcn.ckpt"),
        "popularity": _fit_and_save(Popularity(**kw), seq, tmp / "popularity.ckpt"),
    }


@pytest.mark.parametrize("kind", ["sasrec", "lightgcn", "popularity"])
def test_checkpoints_record_their_class_and_items(cf_ckpts, synth_dir, kind):
    record = torch.load(cf_ckpts[kind], map_location="cpu", weights_only=False)[MODEL_RECORD]
    data = PreparedData(synth_dir)
    assert record["class_path"] == {"sasrec": "darec.modules.sasrec.SASRec", "lightgcn": "darec.modules.lightgcn.LightGCN",
                                    "popularity": "darec.modules.popularity.Popularity"}[kind]
    assert record["items"]["raw_ids"] == data.item_raw_ids[: data.num_items + 1]
    assert record["items"]["titles"][1:] == [data.attrs(i)["title"] for i in range(1, data.num_items + 1)]


def _eval_scores(model, data, user: int) -> tuple[torch.Tensor, list[int]]:
    """The model's own evaluation scores of items ``1..num_items`` for ``user``, and the test-time history
    (train + validation) they were computed from."""
    split = data.eval_split("test")
    k = int((torch.as_tensor(split.users) == user).nonzero()[0, 0])
    batch = {"user": torch.tensor([user]), "target": torch.tensor([int(split.targets[k])]),
             "history": left_pad([split.history.row(k)])}
    batch = model.prepare_eval_batch(batch)
    return model.score_chunk(batch, 1, model.num_items + 1)[0], split.history.row(k).tolist()


@pytest.mark.parametrize("kind", ["sasrec", "darec"])
def test_recommends_as_it_evaluates(cf_ckpts, ckpt, synth_dir, kind):
    """The top-k and the scores equal the model's own evaluation scores for a test user's history."""
    rec = Recommender.from_checkpoint(cf_ckpts["sasrec"] if kind == "sasrec" else ckpt)
    if kind == "darec":
        rec.model.on_eval_start()
    data = PreparedData(synth_dir)
    reference, history = _eval_scores(rec.model, data, user=5)
    raw = [data.item_raw_ids[i] for i in history]
    out = rec.recommend(raw, k=8)
    expected = reference.clone()
    expected[torch.as_tensor(history, dtype=torch.long) - 1] = float("-inf")
    top = torch.topk(expected, 8)
    assert [o["item"] for o in out] == (top.indices + 1).tolist()
    assert [o["score"] for o in out] == pytest.approx(top.values.tolist(), rel=1e-5, abs=1e-6)
    assert [o["raw_id"] for o in out] == [data.item_raw_ids[i] for i in (top.indices + 1).tolist()]
    assert [o["title"] for o in out] == [data.attrs(i)["title"] for i in (top.indices + 1).tolist()]


def test_lightgcn_places_a_new_history_at_the_mean_of_its_items(cf_ckpts, synth_dir):
    rec = Recommender.from_checkpoint(cf_ckpts["lightgcn"])
    data = PreparedData(synth_dir)
    history = ["3", "7", "11"]
    items = rec.model.item_rep
    user = items[[data.item_id(h) for h in history]].mean(0)
    out = rec.recommend(history, k=5)
    scores = items @ user
    scores[[0, *(data.item_id(h) for h in history)]] = float("-inf")
    assert [o["item"] for o in out] == torch.topk(scores, 5).indices.tolist()
    assert bool(rec.model.reps_ready)


def test_popularity_ranks_by_training_counts_without_the_history(cf_ckpts, synth_dir):
    rec = Recommender.from_checkpoint(cf_ckpts["popularity"])
    counts = PreparedData(synth_dir).train_item_counts()
    history = ["3", "7"]
    out = rec.recommend(history, k=10)
    assert not {o["raw_id"] for o in out} & set(history)
    assert [o["score"] for o in out] == [float(counts[o["item"]]) for o in out]
    assert [o["score"] for o in out] == sorted((float(c) for i, c in enumerate(counts[1 : rec.num_items + 1], 1)
                                                if rec.raw_ids[i] not in history), reverse=True)[:10]


def test_only_darec_adds_items_and_cold_items_need_text(cf_ckpts):
    rec = Recommender.from_checkpoint(cf_ckpts["sasrec"])
    with pytest.raises(ConfigError, match="a SASRec model scores items by vectors.*DARec"):
        rec.add_items([{"item": "new", "title": "New"}])
    assert rec.num_total_items == rec.num_items  # the cold items of the data have no SASRec vector
    assert len(rec.recommend(["3"], k=rec.num_items, include_cold=True)) == rec.num_items - 1


def test_old_checkpoints_without_item_record_use_their_data_dir(cf_ckpts, tmp_path):
    ckpt = torch.load(cf_ckpts["sasrec"], map_location="cpu", weights_only=False)
    del ckpt[MODEL_RECORD]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    assert Recommender.from_checkpoint(old).recommend(["3"], k=3) == Recommender.from_checkpoint(cf_ckpts["sasrec"]).recommend(["3"], k=3)
    ckpt["datamodule_hyper_parameters"]["data_dir"] = str(tmp_path / "gone")
    torch.save(ckpt, old)
    with pytest.raises(ConfigError, match=r"does not carry its items' raw ids.*pass the prepared dataset"):
        Recommender.from_checkpoint(old)


def test_export_item_vectors_for_sasrec(cf_ckpts, tmp_path):
    path = export_item_vectors(cf_ckpts["sasrec"], tmp_path / "sas.safetensors")
    vecs = load_file(str(path))["item_vectors"]
    meta = json.loads(path.with_suffix(".json").read_text())
    model = SASRec.load_from_checkpoint(cf_ckpts["sasrec"], map_location="cpu")
    assert torch.equal(vecs, model.item_weight.detach())
    assert meta["kind"] == "sasrec" and meta["num_rows"] == len(meta["item_raw_ids"]) == model.num_items + 1


def test_recommend_cli_table_has_headers_for_any_model(cf_ckpts, capsys):
    for kind in ("sasrec", "lightgcn", "popularity"):
        assert main(["recommend", "--ckpt", str(cf_ckpts[kind]), "--history", "3,7", "--k", "3"]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert lines[0].split() == ["rank", "item", "id", "score", "title"] and len(lines) == 4, kind
        assert [ln.split()[0] for ln in lines[1:]] == ["1", "2", "3"]


def test_recommend_cli_refuses_bad_arguments_before_loading(cf_ckpts, capsys, monkeypatch):
    def never(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Recommender, "from_checkpoint", never)
    with pytest.raises(SystemExit) as bad_k:
        main(["recommend", "--ckpt", str(cf_ckpts["sasrec"]), "--history", "3", "--k", "0"])
    assert bad_k.value.code == 2 and "--k: must be at least 1, got 0" in capsys.readouterr().err
    assert main(["recommend", "--ckpt", str(cf_ckpts["sasrec"]), "--history", " , "]) == 2
    assert capsys.readouterr().err.strip() == "error: --history is empty; give comma-separated raw item ids, oldest first"
    assert main(["recommend", "--ckpt", "missing.ckpt", "--history", "3"]) == 2
    assert capsys.readouterr().err.strip() == "error: missing.ckpt: no such checkpoint"


def test_a_checkpoint_of_no_darec_model_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, MODEL_RECORD: {"class_path": "collections.OrderedDict"}}, path)
    assert main(["recommend", "--ckpt", str(path), "--history", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {path} was written by collections.OrderedDict, which is not a darec model (RecModule)"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    assert main(["recommend", "--ckpt", str(path), "--history", "3"]) == 2
    assert "does not say which model wrote it" in capsys.readouterr().err
