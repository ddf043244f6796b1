"""The prepared-directory contract: round trip, fingerprint, evaluation splits, synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from darec.data.pipeline import PrepareOptions, build_tables
from darec.data.dataset import fingerprint_of, PreparedData, Ragged, save_prepared
from darec.data.synth import SynthConfig, make_synthetic, write_synthetic
from darec.errors import DataError, FingerprintError


def test_round_trip_and_eval_splits(synth_dir):
    d = PreparedData(synth_dir)
    assert (d.num_users, d.num_items, d.num_cold) == (300, 120, 5)
    assert d.num_total_items == 125
    for u in (1, 17, 300):
        tr, va, te = d.train.row(u), d.valid.row(u), d.test.row(u)
        assert len(va) == 1 and len(te) == 1
        assert va[0] not in tr.tolist() and te[0] not in tr.tolist()
        assert d.train.row_times(u).tolist() == sorted(d.train.row_times(u).tolist())
    ev = d.eval_split("validation")
    assert len(ev) == 300
    assert ev.targets[0] == d.valid.row(int(ev.users[0]))[0]
    assert ev.history_of(0).tolist() == d.train.row(int(ev.users[0])).tolist()
    te = d.eval_split("test")
    u = int(te.users[5])
    assert te.history_of(5).tolist() == d.train.row(u).tolist() + d.valid.row(u).tolist()
    assert all(d.item_id(d.item_raw_ids[i]) == i for i in range(1, d.num_total_items + 1))
    assert all(d.user_id(d.user_raw_ids[u]) == u for u in range(1, d.num_users + 1))
    cold = range(d.num_items + 1, d.num_total_items + 1)
    assert all(d.sentences[i] for i in cold)
    assert d.train_item_counts()[d.num_items + 1 :].sum() == 0


def test_fingerprint_stable_and_sensitive(tmp_path):
    a = write_synthetic(tmp_path / "a", SynthConfig(num_users=50, num_items=30))
    b = write_synthetic(tmp_path / "b", SynthConfig(num_users=50, num_items=30))
    c = write_synthetic(tmp_path / "c", SynthConfig(num_users=50, num_items=30, seed=3))
    assert a["fingerprint"] == b["fingerprint"] != c["fingerprint"]
    assert a["text_hash"] == b["text_hash"]
    d = PreparedData(tmp_path / "a")
    d.check_fingerprint(a["fingerprint"], "x")
    with pytest.raises(FingerprintError, match="different prepared dataset"):
        d.check_fingerprint(c["fingerprint"], "embeddings")


def test_fingerprint_changes_when_a_split_changes():
    inter, items = make_synthetic(SynthConfig(num_users=40, num_items=20))
    t = build_tables(inter, items, PrepareOptions())
    fp = fingerprint_of(t)
    t.splits["test"].items[0] = t.splits["test"].items[1]
    assert fingerprint_of(t) != fp


def test_refuses_foreign_output_dir(tmp_path):
    inter, items = make_synthetic(SynthConfig(num_users=40, num_items=20))
    t = build_tables(inter, items, PrepareOptions())
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a darec prepared dataset"):
        save_prepared(t, foreign, {}, {})
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]


def test_ragged_from_lists():
    r = Ragged.from_lists([[], [3, 4], [], [5]])
    assert r.row(1).tolist() == [3, 4] and r.row(2).tolist() == [] and r.row(3).tolist() == [5]
    assert r.lengths.tolist() == [0, 2, 0, 1]


def test_synthetic_is_deterministic_and_structured():
    a, ia = make_synthetic(SynthConfig(seed=5))
    b, ib = make_synthetic(SynthConfig(seed=5))
    assert a.equals(b) and ia.equals(ib)
    genre = {r.item: r.genres[0] for r in ia.itertuples()}
    seqs = a.groupby("user")["item"].apply(list)
    same = np.mean([genre[s[i]] == genre[s[i + 1]] for s in seqs for i in range(len(s) - 1)])
    assert same > 0.45  # planted stay probability 0.6 (minus resampling), far above 1/6 by chance


def test_stats_json(synth_dir):
    stats = json.loads((synth_dir / "stats.json").read_text())
    assert stats["users"] == 300 and stats["items"] == 120 and stats["cold_items"] == 5
    assert stats["interactions"] == stats["train_interactions"] + 600
    assert set(stats["dropped"]) >= {"duplicate", "user_too_short", "item_core", "user_core"}
