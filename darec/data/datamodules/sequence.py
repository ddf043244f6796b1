"""Sequence windows for SASRec and DARec: :class:`SequenceDataModule`.

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

Order and negatives are deterministic given ``seed`` and the epoch (:mod:`darec.data.datamodules.training`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from darec.data.datamodules.base import RecDataModule
from darec.data.datamodules.training import BatchDataset, PositiveSets, TrainLoaderMixin, resolve_seed
from darec.data.dataset import Ragged
from darec.errors import ConfigError


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


class WindowDataset(BatchDataset):
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


class SequenceDataModule(TrainLoaderMixin, RecDataModule):
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
