"""What the training loaders share: an epoch-seeded, rank-sharded order that resumes mid-epoch, per-epoch batches,
and negatives drawn against each user's training items.

Order is a function of (seed, epoch, world size) alone (:class:`EpochSampler`, :class:`ResumableLoader`), and
independent of ``num_workers``; negatives are deterministic given ``seed`` and the epoch.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from darec.data.dataset import Ragged
from darec.errors import DataError



class EpochSampler(DistributedSampler):
    """Shuffles ``0..n-1`` with a generator seeded by ``(seed, epoch)`` and takes this rank's share.

    Every rank draws the same permutation and keeps positions ``rank, rank + world, ...`` of it (wrapped
    around so each rank gets ``ceil(n / world)``), so the order is a function of (seed, epoch, world size)
    alone. It subclasses ``DistributedSampler`` so that Lightning neither wraps it under DDP nor loses
    :meth:`set_epoch`, which also tells ``on_epoch`` (the dataset's per-epoch negatives) the epoch.
    ``num_replicas``/``rank`` default to the initialised process group, else one process.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        shuffle: bool = True,
        on_epoch: Callable[[int], None] | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.on_epoch = on_epoch
        self._replicas, self._rank = num_replicas, rank

    def _world(self) -> tuple[int, int]:
        if self._replicas is not None:
            return self._replicas, self._rank or 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.on_epoch is not None:
            self.on_epoch(self.epoch)

    def __len__(self) -> int:
        world, _ = self._world()
        return -(-self.n // world)

    def __iter__(self) -> Iterator[int]:
        world, rank = self._world()
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        if world == 1:
            return iter(order.tolist())
        per_rank = -(-self.n // world)
        padded = np.resize(order, per_rank * world) if self.n else order
        return iter(padded[rank::world].tolist())


def identity_collate(batch: Any) -> Any:
    return batch


class ResumableLoader(DataLoader):
    """A training DataLoader that Lightning checkpoints mid-epoch and resumes without replaying batches.

    ``state_dict`` records how many batches of the current epoch the trainer has processed
    (``progress``); after ``load_state_dict`` the next epoch iteration skips exactly those. The epoch's
    order is a function of (seed, epoch), so the remaining batches are the ones an uninterrupted run sees.
    """

    def __init__(self, *args: Any, progress: Callable[[], int] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.progress = progress
        self._skip = 0

    def state_dict(self) -> dict[str, int]:
        epoch = getattr(self.sampler, "epoch", 0)
        return {"processed": int(self.progress()) if self.progress is not None else 0, "epoch": int(epoch)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # Lightning does not re-seed samplers when it restarts mid-epoch: the epoch comes back from here.
        self._skip = int(state.get("processed", 0))
        self._epoch = state.get("epoch")

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        epoch, self._epoch = getattr(self, "_epoch", None), None
        if epoch is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(int(epoch))
        it = super().__iter__()
        for _ in range(skip):
            next(it, None)
        return it


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


class BatchDataset(Dataset):
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


class TrainLoaderMixin:
    """Builds the shuffled, epoch-seeded training DataLoader over a window or pair dataset."""

    batch_size: int
    num_workers: int
    shuffle: bool

    def _train_loader(self, dataset: BatchDataset) -> DataLoader:
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
