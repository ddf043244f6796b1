"""Training windows and BPR pairs: coverage, leakage, negatives and determinism."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from darec.data.dataset import Ragged
from darec.data.synth import SynthConfig, write_synthetic
from darec.data.datamodules.training import EpochSampler
from darec.data.datamodules.interaction import InteractionDataModule
from darec.data.datamodules.sequence import make_windows, SequenceDataModule
from darec.data.datamodules.training import PositiveSets
from darec.errors import ConfigError




@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic(out, SynthConfig(num_users=80, num_items=40, min_len=3, max_len=70, seed=3))
    return str(out)


def _check_windows(rows: list[list[int]], max_len: int, stride: int) -> None:
    train = Ragged.from_lists([[]] + rows)
    users, inputs, targets = make_windows(train, max_len, stride)
    assert inputs.shape == targets.shape == (len(users), max_len)
    for u, row in enumerate(rows, start=1):
        mine = np.nonzero(users == u)[0]
        seen: list[tuple[int, int]] = []
        for w in mine:
            inp, tgt = inputs[w], targets[w]
            real = inp > 0
            assert not real[: real.argmax()].any() if real.any() else True
            assert (tgt[~real] == 0).all(), "padding positions carry no target"
            for c in np.nonzero(tgt)[0]:
                seen.append((int(inp[c]), int(tgt[c])))
            if len(mine) > 1:
                assert real.all(), "only a user's single short window is padded"
        expected = list(zip(row[:-1], row[1:]))
        assert seen == expected, f"user {u}: each (input, next) pair is a target exactly once, in order"


@pytest.mark.parametrize("max_len,stride", [(4, 2), (5, 2), (6, 6), (7, 1), (50, 25)])
def test_every_pair_is_a_target_exactly_once(max_len: int, stride: int) -> None:
    rng = np.random.default_rng(max_len * 31 + stride)
    lengths = [0, 1, 2, max_len, max_len + 1, max_len + 2, 2 * max_len + 3, *rng.integers(1, 4 * max_len, 12)]
    rows = [list(rng.permutation(np.arange(1, 1000))[:n] + 0) for n in lengths]
    _check_windows(rows, max_len, stride)


def test_context_is_at_least_max_len_minus_stride() -> None:
    row = list(range(1, 101))
    users, inputs, targets = make_windows(Ragged.from_lists([[], row]), 10, 5)
    for w in range(1, len(users)):
        first_loss = int(np.nonzero(targets[w])[0][0])
        assert first_loss >= 10 - 5


def test_bad_window_config() -> None:
    with pytest.raises(ConfigError):
        make_windows(Ragged.from_lists([[], [1, 2]]), 4, 5)


def _epoch(dl) -> list[dict[str, torch.Tensor]]:
    return list(dl)


def test_sequence_epoch_targets_are_training_items_once(synth_dir: str) -> None:
    dm = SequenceDataModule(synth_dir, batch_size=16, max_len=8, num_negatives=1, seed=5)
    data = dm.data
    assert data.train.lengths.max() > 8, "the fixture must need several windows per user"
    dl = dm.train_dataloader()
    dl.sampler.set_epoch(0)
    got: Counter = Counter()
    for b in _epoch(dl):
        assert b["input"].shape[1] == 8 and b["target"].shape == b["input"].shape
        r, c = torch.nonzero(b["target"], as_tuple=True)
        got.update(zip(b["user"][r].tolist(), b["target"][r, c].tolist()))
        neg = b["negative"]
        assert ((neg > 0) == (b["target"] > 0)).all()
        users = b["user"][r].numpy()
        assert not dm.windows.positives.contains(users, neg[r, c].numpy()).any(), "a negative is a positive"
    expected: Counter = Counter()
    for u in range(1, data.num_users + 1):
        expected.update((u, int(i)) for i in data.train.row(u)[1:])
    assert got == expected
    for u in range(1, data.num_users + 1):
        held_out = set(data.valid.row(u).tolist()) | set(data.test.row(u).tolist())
        train_items = set(data.train.row(u).tolist())
        assert not any(got[(u, i)] for i in held_out - train_items), "a validation/test item is a target"


def test_sequence_order_is_deterministic(synth_dir: str) -> None:
    def first_batches(seed: int, epoch: int) -> list[torch.Tensor]:
        dm = SequenceDataModule(synth_dir, batch_size=16, max_len=8, seed=seed)
        dl = dm.train_dataloader()
        dl.sampler.set_epoch(epoch)
        return [torch.cat([b["input"].flatten(), b["negative"].flatten()]) for b in dl]

    a, b = first_batches(1, 0), first_batches(1, 0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = first_batches(1, 1)
    assert not torch.equal(a[0], c[0]), "a new epoch reshuffles"
    d = first_batches(2, 0)
    assert not torch.equal(a[0], d[0]), "another seed reshuffles"


@pytest.mark.parametrize("n", [12, 13])
def test_ranks_split_one_seeded_permutation(n: int) -> None:
    def shares(epoch: int, world: int = 2) -> list[list[int]]:
        out = []
        for rank in range(world):
            s = EpochSampler(n, seed=3, num_replicas=world, rank=rank)
            s.set_epoch(epoch)
            out.append(list(s))
        return out

    one = EpochSampler(n, seed=3)
    one.set_epoch(1)
    a, b = shares(1)
    assert len(a) == len(b) == -(-n // 2)
    assert set(a) | set(b) == set(range(n)) and (n % 2 == 1 or not set(a) & set(b))
    assert [x for pair in zip(a, b) for x in pair][:n] == list(one), "rank r takes positions r, r+2, ... of the order"
    assert shares(1) == [a, b] and shares(2) != [a, b], "a function of (seed, epoch, world size)"
    assert isinstance(one, torch.utils.data.DistributedSampler), "Lightning must neither wrap it nor skip set_epoch"


def test_pairs_cover_training_once_with_valid_negatives(synth_dir: str) -> None:
    dm = InteractionDataModule(synth_dir, batch_size=64, seed=0)
    data = dm.data
    dl = dm.train_dataloader()
    negs = []
    for epoch in (0, 1):
        dl.sampler.set_epoch(epoch)
        pairs: Counter = Counter()
        neg_epoch = []
        for b in dl:
            pairs.update(zip(b["user"].tolist(), b["pos"].tolist()))
            assert not dm.pairs.positives.contains(b["user"].numpy(), b["neg"].numpy()).any()
            assert ((b["neg"] >= 1) & (b["neg"] <= data.num_items)).all()
            neg_epoch.append(b["neg"])
        expected = Counter((u, int(i)) for u in range(1, data.num_users + 1) for i in data.train.row(u))
        assert pairs == expected
        negs.append(torch.cat(neg_epoch))
    assert not torch.equal(negs[0], negs[1]), "negatives are redrawn every epoch"


def test_positive_sets_sampling_rejects_positives() -> None:
    train = Ragged.from_lists([[], [1, 2, 3], [4]])
    ps = PositiveSets(train, num_items=4)
    rng = np.random.default_rng(0)
    neg = ps.sample(rng, np.ones(200, dtype=np.int64))
    assert (neg == 4).all()
    assert ps.contains(np.array([1, 2, 2]), np.array([3, 4, 1])).tolist() == [True, True, False]
