"""Hard-negative mining: training data only, co-occurrence window, identical text, cache."""

from __future__ import annotations

import numpy as np
import torch

from darec.data.dataset import PreparedData
from darec.modules.hard_negatives import cached_hard_negatives, cooccurrence_keys, mine_hard_negatives


def _train_seqs(d: PreparedData) -> list[np.ndarray]:
    return d.train_sequences()


def _prepared_variant(out, change: str) -> str:
    """The same synthetic log prepared as is (``change="none"``), with every user's validation and test
    interactions (the last two) replaced by other items (``"eval"``), or with one training interaction replaced
    (``"train"``)."""
    from darec.data.pipeline import PrepareOptions, build_tables
    from darec.data.dataset import save_prepared
    from darec.data.synth import SynthConfig, make_synthetic

    inter, items = make_synthetic(SynthConfig(num_users=60, num_items=30, num_clusters=4, min_len=8, max_len=12, seed=3))
    inter = inter.sort_values(["user", "timestamp"], kind="stable").reset_index(drop=True)
    last = inter.groupby("user").cumcount(ascending=False)
    pool = sorted(set(items["item"]))
    if change == "eval":
        for k in np.nonzero((last < 2).to_numpy())[0]:
            seen = set(inter.loc[inter["user"] == inter.at[k, "user"], "item"])
            inter.at[k, "item"] = next(i for i in reversed(pool) if i not in seen)
    elif change == "train":
        k = int(np.nonzero((last == 5).to_numpy())[0][0])
        seen = set(inter.loc[inter["user"] == inter.at[k, "user"], "item"])
        inter.at[k, "item"] = next(i for i in pool if i not in seen)
    save_prepared(build_tables(inter, items, PrepareOptions(), source="synthetic"), out, config={}, inputs={})
    return str(out)


def _mined_through_setup(data_dir: str, cache: str) -> torch.Tensor:
    import lightning as L

    from darec.data.datamodules.sequence import SequenceDataModule
    from darec.modules.backbone import BackboneConfig
    from darec.modules.darec import DARec

    dm = SequenceDataModule(data_dir, batch_size=8, max_len=8, num_negatives=0)
    m = DARec(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint,
              backbone=BackboneConfig(name="tiny-bert"), max_len=8, cache_dir=cache,
              losses={"hard_negative": True, "hard_k": 5})
    L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
              enable_checkpointing=False, enable_model_summary=False).fit(m, datamodule=dm)
    return m.hard_negs.clone()


def test_unchanged_when_validation_and_test_rows_change(tmp_path):
    """Hard negatives mined in ``DARec.setup`` read training rows only: rewriting every validation and test
    interaction leaves them as they were, while changing one training interaction does not."""
    base, evalchanged, trainchanged = (_prepared_variant(tmp_path / c, c) for c in ("none", "eval", "train"))
    fps = {PreparedData(p).fingerprint for p in (base, evalchanged, trainchanged)}
    assert len(fps) == 3  # three datasets: nothing is served from another's cache entry
    a = _mined_through_setup(base, str(tmp_path / "cache"))
    assert (a[1:] > 0).any()
    assert torch.equal(_mined_through_setup(evalchanged, str(tmp_path / "cache")), a)
    assert not torch.equal(_mined_through_setup(trainchanged, str(tmp_path / "cache")), a)


def test_negatives_never_cooccur_within_window(synth_dir):
    d = PreparedData(synth_dir)
    seqs = _train_seqs(d)
    vecs = torch.randn(d.num_total_items + 1, 8, generator=torch.Generator().manual_seed(1))
    hn = mine_hard_negatives(vecs, seqs, d.sentences, d.num_items, k=8, window=5)
    near: set[tuple[int, int]] = set()
    for s in seqs:
        for i in range(len(s)):
            for j in range(max(0, i - 5), min(len(s), i + 6)):
                if i != j:
                    near.add((int(s[i]), int(s[j])))
    negs = hn.negatives
    for i in range(1, d.num_items + 1):
        for n in negs[i].tolist():
            assert n == 0 or ((i, n) not in near and n != i and n <= d.num_items)
    assert 0.0 <= hn.share_without <= 1.0


def test_identical_text_excluded_and_similarity_respected():
    sentences = ["", "a", "a", "b", "c"]
    vecs = torch.tensor([[0.0, 0], [1, 0], [1, 0.01], [0.9, 0.1], [-1, 0]])
    hn = mine_hard_negatives(vecs, [np.array([1, 4])], sentences, num_items=4, k=2, window=1)
    assert hn.negatives[1].tolist() == [3, 0]  # 2 has the same text, 4 co-occurs
    assert hn.negatives[3][0].item() in (1, 2)


def test_cooccurrence_keys_symmetric():
    keys = cooccurrence_keys([np.array([1, 2, 3])], num_items=3, window=1)
    assert sorted(keys.tolist()) == sorted([1 * 4 + 2, 2 * 4 + 1, 2 * 4 + 3, 3 * 4 + 2])


def test_cache_keyed_and_reused(tmp_path, synth_dir):
    d = PreparedData(synth_dir)
    vecs = torch.randn(d.num_total_items + 1, 8, generator=torch.Generator().manual_seed(2))
    a = cached_hard_negatives(tmp_path, d.fingerprint, vecs, _train_seqs(d), d.sentences, d.num_items, k=4)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and d.fingerprint[:16] in files[0].name
    b = cached_hard_negatives(tmp_path, d.fingerprint, vecs, [], d.sentences, d.num_items, k=4)
    assert torch.equal(a.negatives, b.negatives)  # served from cache, not re-mined from []
    cached_hard_negatives(tmp_path, d.fingerprint, vecs * 2 + 1, _train_seqs(d), d.sentences, d.num_items, k=4)
    assert len(list(tmp_path.iterdir())) == 2
