"""Training-data order: an epoch-seeded, rank-sharded sampler and a loader that resumes mid-epoch.

Order is a function of (seed, epoch, world size) alone; see :class:`EpochSampler` and :class:`ResumableLoader`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

__all__ = ["EpochSampler", "ResumableLoader", "identity_collate"]


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
