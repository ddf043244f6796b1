"""Hard-negative mining: training data only, co-occurrence window, identical text, cache."""

from __future__ import annotations

import numpy as np
import torch

from darec.data.prepared import PreparedData
from darec.modules.hard_negatives import cached_hard_negatives, cooccurrence_keys, mine_hard_negatives


def _train_seqs(d: PreparedData) -> list[np.ndarray]:
    return d.train_sequences()


def test_unchanged_when_validation_and_test_rows_are_deleted(synth_dir):
    d = PreparedData(synth_dir)
    vecs = torch.randn(d.num_total_items + 1, 8, generator=torch.Generator().manual_seed(0))
    a = mine_hard_negatives(vecs, _train_seqs(d), d.sentences, d.num_items, k=5)
    # the same mining with each user's full history (train + valid + test) would differ: the
    # miner must only ever be given training rows, which is what DARec does
    full = [np.concatenate([d.train.row(u), d.valid.row(u), d.test.row(u)]) for u in range(1, d.num_users + 1)]
    b = mine_hard_negatives(vecs, _train_seqs(d), d.sentences, d.num_items, k=5)
    c = mine_hard_negatives(vecs, full, d.sentences, d.num_items, k=5)
    assert torch.equal(a.negatives, b.negatives)
    assert not torch.equal(a.negatives, c.negatives)


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
