"""Training data for the collaborative models: sequence windows (SASRec, DARec) and BPR pairs (LightGCN).

**Windows.** A user's training sequence ``x_0 … x_{n-1}`` gives ``n - 1`` (input, target) pairs
``(x_p, x_{p+1})`` for ``p = 0 … n-2``: every training item except the user's first is a target
(the first has no history to be predicted from). The pairs are cut into windows of ``max_len``
input positions starting at ``0, stride, 2·stride, …``, the last window right-aligned to end at the
last pair. A window puts its loss only on the pairs the previous window did not cover, so each pair
is a target exactly once per epoch and every target sees at least ``max_len - stride`` items of
context (except near the start of the sequence). Windows are stored once as two
``[num_windows, max_len]`` arrays, about twice the size of the training split; prefixes are never
materialised.

A training batch of :class:`SequenceDataModule` is a dict of LongTensors:

- ``user`` [B]: internal user ids;
- ``input`` [B, max_len]: item ids, left-padded with 0;
- ``target`` [B, max_len]: the next training item at loss positions, 0 elsewhere (padding too);
- ``negative`` [B, max_len] (when ``num_negatives=1``): a uniformly drawn item that is never a
  training item of that user, at loss positions, 0 elsewhere.

A training batch of :class:`InteractionDataModule` holds ``user``, ``pos`` and ``neg`` [B]: every
training interaction once per epoch, with a fresh negative per epoch.

Order and negatives are deterministic given ``seed`` and the epoch (Lightning calls
:meth:`EpochSampler.set_epoch` every epoch), and independent of ``num_workers``.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from darec.data.datamodules import RecDataModule
from darec.data.loading import EpochSampler, ResumableLoader, identity_collate
from darec.data.prepared import Ragged
from darec.errors import ConfigError, DataError


def resolve_seed(seed: int | None) -> int:
    """``seed``, else the seed given to ``seed_everything`` (``PL_GLOBAL_SEED``), else 0."""
    return int(seed) if seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))


class PositiveSets:
    """Each user's set of training items, for vectorised membership tests and negative sampling."""

    def __init__(self, train: Ragged, num_items: int):
        self.num_items = num_items
        users = np.repeat(np.arange(train.num_rows, dtype=np.int64), train.lengths)
        keys = np.unique(users * (num_items + 1) + train.items.astype(np.int64))
        self._keys = keys
        distinct = np.bincount(keys // (num_items + 1), minlength=train.num_rows)
        full = np.nonzero(distinct >= num_items)[0]
        if len(full):
            raise DataError(f"user id {int(full[0])} has every item as a training positive; no negative exists")

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Boolean array: is ``items[k]`` a training item of ``users[k]`` (same shapes)."""
        q = users.astype(np.int64) * (self.num_items + 1) + items.astype(np.int64)
        pos = np.searchsorted(self._keys, q)
        pos = np.minimum(pos, len(self._keys) - 1)
        return self._keys[pos] == q if len(self._keys) else np.zeros(q.shape, dtype=bool)

    def sample(self, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
        """One uniform negative in ``1..num_items`` per entry of ``users`` that is not a positive."""
        neg = rng.integers(1, self.num_items + 1, size=users.shape)
        bad = self.contains(users, neg)
        while bad.any():
            neg[bad] = rng.integers(1, self.num_items + 1, size=int(bad.sum()))
            bad[bad] = self.contains(users[bad], neg[bad])
        return neg


def make_windows(train: Ragged, max_len: int, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut every user's training sequence into windows (see the module docstring).

    Returns ``users [W]``, ``inputs [W, max_len]`` and ``targets [W, max_len]`` (int64, left-padded,
    0 where there is no loss).
    """
    if max_len < 1 or not 1 <= stride <= max_len:
        raise ConfigError(f"need max_len >= 1 and 1 <= stride <= max_len, got max_len={max_len}, stride={stride}")
    m = np.maximum(train.lengths - 1, 0)
    counts = np.where(m <= 0, 0, np.where(m <= max_len, 1, -((max_len - m) // stride) + 1))
    users = np.repeat(np.arange(train.num_rows, dtype=np.int64), counts)
    first = np.cumsum(counts) - counts
    j = np.arange(len(users)) - np.repeat(first, counts)
    mu = m[users]
    start = np.where(mu <= max_len, 0, np.minimum(j * stride, mu - max_len))
    wlen = np.minimum(mu, max_len)
    loss_from = np.where(j == 0, 0, (j - 1) * stride + max_len - start)
    col = np.arange(max_len)[None, :]
    rel = col - (max_len - wlen)[:, None]
    valid = rel >= 0
    idx = train.offsets[users][:, None] + start[:, None] + np.maximum(rel, 0)
    items = train.items.astype(np.int64)
    inputs = np.where(valid, items[np.where(valid, idx, 0)], 0)
    has_loss = valid & (rel >= loss_from[:, None])
    targets = np.where(has_loss, items[np.where(has_loss, idx + 1, 0)], 0)
    return users, inputs, targets


class _BatchDataset(Dataset):
    """Base of datasets whose ``__getitems__`` builds a whole batch, with randomness per (seed, epoch, batch)."""

    users: np.ndarray
    seed: int
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        return {k_: v[0] for k_, v in self.__getitems__([k]).items()}

    def _rng(self, ix: np.ndarray) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(ix[0]) if len(ix) else 0, len(ix)])


class WindowDataset(_BatchDataset):
    """Training windows; ``__getitems__`` returns a whole batch dict (collate is the identity)."""

    def __init__(self, train: Ragged, num_items: int, max_len: int, stride: int, num_negatives: int, seed: int):
        self.users, self.inputs, self.targets = make_windows(train, max_len, stride)
        self.num_negatives = num_negatives
        self.positives = PositiveSets(train, num_items) if num_negatives else None
        self.seed = seed
        self.epoch = 0

    def __getitems__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        ix = np.asarray(idx, dtype=np.int64)
        users, targets = self.users[ix], self.targets[ix]
        batch = {
            "user": torch.from_numpy(users),
            "input": torch.from_numpy(self.inputs[ix]),
            "target": torch.from_numpy(targets),
        }
        if self.positives is not None:
            rng = self._rng(ix)
            neg = np.zeros_like(targets)
            r, c = np.nonzero(targets)
            neg[r, c] = self.positives.sample(rng, users[r])
            batch["negative"] = torch.from_numpy(neg)
        return batch


class PairDataset(_BatchDataset):
    """Every training interaction ``(user, pos)`` with a negative drawn per batch, epoch and seed."""

    def __init__(self, train: Ragged, num_items: int, seed: int):
        self.users = np.repeat(np.arange(train.num_rows, dtype=np.int64), train.lengths)
        self.items = train.items.astype(np.int64)
        self.positives = PositiveSets(train, num_items)
        self.seed = seed
        self.epoch = 0

    def __getitems__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        ix = np.asarray(idx, dtype=np.int64)
        users = self.users[ix]
        rng = self._rng(ix)
        return {
            "user": torch.from_numpy(users),
            "pos": torch.from_numpy(self.items[ix]),
            "neg": torch.from_numpy(self.positives.sample(rng, users)),
        }


class _TrainLoaderMixin:
    """Builds the shuffled, epoch-seeded training DataLoader over a window or pair dataset."""

    batch_size: int
    num_workers: int
    shuffle: bool

    def _train_loader(self, dataset: WindowDataset | PairDataset) -> DataLoader:
        sampler = EpochSampler(len(dataset), dataset.seed, self.shuffle, on_epoch=dataset.set_epoch)
        return ResumableLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=identity_collate,
            persistent_workers=False,
            progress=self._processed_in_epoch,
        )

    def _processed_in_epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed) if trainer is not None else 0


class SequenceDataModule(_TrainLoaderMixin, RecDataModule):
    """Windows of training sequences for next-item models (SASRec, DARec).

    Args:
        data_dir: a prepared dataset directory.
        batch_size: windows per training batch.
        eval_batch_size: users per evaluation batch.
        num_workers: DataLoader worker processes.
        predict_split: split whose histories ``predict`` uses (``validation`` or ``test``).
        max_len: window length (the model's input length); never deletes stored data.
        stride: window start step; default ``max_len // 2``.
        num_negatives: 1 adds a ``negative`` per loss position (for BCE losses), 0 omits it.
        shuffle: shuffle windows every epoch.
        seed: seeds order and negatives (with the epoch); default: ``seed_everything``'s seed, else 0.
    """

    def __init__(
        self,
        data_dir: str = "data/ml-100k",
        batch_size: int = 256,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        predict_split: str = "test",
        max_len: int = 50,
        stride: int | None = None,
        num_negatives: int = 1,
        shuffle: bool = True,
        seed: int | None = None,
    ):
        super().__init__(data_dir, batch_size, eval_batch_size, num_workers, predict_split)
        if num_negatives not in (0, 1):
            raise ConfigError(f"num_negatives must be 0 or 1, got {num_negatives}")
        self.save_hyperparameters()
        self.max_len = max_len
        self.stride = stride if stride is not None else max(1, max_len // 2)
        self.num_negatives = num_negatives
        self.shuffle = shuffle
        self.seed = seed
        self._windows: WindowDataset | None = None

    @property
    def windows(self) -> WindowDataset:
        """The training windows (built on first use)."""
        if self._windows is None:
            self._windows = WindowDataset(
                self.data.train, self.num_items, self.max_len, self.stride, self.num_negatives, resolve_seed(self.seed)
            )
        return self._windows

    def train_dataloader(self) -> DataLoader:
        return self._train_loader(self.windows)


class InteractionDataModule(_TrainLoaderMixin, RecDataModule):
    """BPR training pairs plus the normalised user–item graph for graph CF models (LightGCN).

    The graph is built once, from training interactions only, and exposed as :attr:`adjacency`.
    Node ids: user ``u`` is node ``u`` (``0..num_users``, 0 = padding), item ``i`` is node
    ``num_users + 1 + i`` (``i = 0`` is padding). Padding nodes are isolated.

    Args:
        data_dir: a prepared dataset directory.
        batch_size: interactions per training batch.
        eval_batch_size: users per evaluation batch.
        num_workers: DataLoader worker processes.
        predict_split: split whose histories ``predict`` uses.
        shuffle: shuffle interactions every epoch.
        seed: seeds order and negatives (with the epoch); default: ``seed_everything``'s seed, else 0.
    """

    def __init__(
        self,
        data_dir: str = "data/ml-100k",
        batch_size: int = 2048,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        predict_split: str = "test",
        shuffle: bool = True,
        seed: int | None = None,
    ):
        super().__init__(data_dir, batch_size, eval_batch_size, num_workers, predict_split)
        self.save_hyperparameters()
        self.shuffle = shuffle
        self.seed = seed
        self._pairs: PairDataset | None = None
        self._adjacency: torch.Tensor | None = None

    @property
    def pairs(self) -> PairDataset:
        if self._pairs is None:
            self._pairs = PairDataset(self.data.train, self.num_items, resolve_seed(self.seed))
        return self._pairs

    @property
    def adjacency(self) -> torch.Tensor:
        """``D^-1/2 A D^-1/2`` of the training user–item graph, a coalesced sparse COO float32 tensor."""
        if self._adjacency is None:
            self._adjacency = normalized_adjacency(self.data.train, self.num_users, self.num_items)
        return self._adjacency

    def train_dataloader(self) -> DataLoader:
        return self._train_loader(self.pairs)


def normalized_adjacency(train: Ragged, num_users: int, num_items: int) -> torch.Tensor:
    """Symmetric-normalised bipartite adjacency of the distinct training (user, item) pairs.

    Shape ``[num_users + num_items + 2]²`` with the node ids of :class:`InteractionDataModule`.
    Nodes with no edge keep an all-zero row.
    """
    users = np.repeat(np.arange(train.num_rows, dtype=np.int64), train.lengths)
    items = train.items.astype(np.int64)
    if len(items) and (items.min() < 1 or items.max() > num_items or users.max() > num_users):
        raise DataError("training interactions reference ids outside the catalogue")
    keys = np.unique(users * (num_items + 1) + items)
    u, i = keys // (num_items + 1), keys % (num_items + 1) + num_users + 1
    n = num_users + num_items + 2
    deg = np.bincount(np.concatenate([u, i]), minlength=n).astype(np.float64)
    inv = np.zeros(n)
    inv[deg > 0] = deg[deg > 0] ** -0.5
    rows, cols = np.concatenate([u, i]), np.concatenate([i, u])
    vals = inv[rows] * inv[cols]
    adj = torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([rows, cols])), torch.from_numpy(vals.astype(np.float32)), (n, n), check_invariants=True
    )
    return adj.coalesce()
