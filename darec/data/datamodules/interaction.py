"""BPR pairs and the training graph for LightGCN: :class:`InteractionDataModule` and :func:`normalized_adjacency`.

A training batch of :class:`InteractionDataModule` holds ``user``, ``pos`` and ``neg`` [B]: every training
interaction once per epoch, with a fresh negative per epoch (deterministic given ``seed`` and the epoch).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from darec.data.datamodules.base import RecDataModule
from darec.data.datamodules.training import BatchDataset, PositiveSets, TrainLoaderMixin, resolve_seed
from darec.data.dataset import Ragged
from darec.errors import DataError


class PairDataset(BatchDataset):
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


class InteractionDataModule(TrainLoaderMixin, RecDataModule):
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
