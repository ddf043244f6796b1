"""Lightning DataModules built from a prepared dataset directory.

Evaluation batches are dictionaries of tensors:

- ``user``: LongTensor [B], internal user ids;
- ``history``: LongTensor [B, L], the user's whole history before the target, left-padded with 0
  (models read the last ``max_len`` columns; the evaluator masks all of it);
- ``target``: LongTensor [B], the item to rank (0 in predict batches, which have no target).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from darec.data.dataset import EvalSplit, PreparedData


def left_pad(rows: list[np.ndarray], length: int | None = None) -> torch.Tensor:
    """Stack 1-D integer arrays into a [B, L] LongTensor, left-padded with 0 (keeps the last L)."""
    L_ = max((len(r) for r in rows), default=0) if length is None else length
    out = np.zeros((len(rows), max(L_, 1)), dtype=np.int64)
    for k, r in enumerate(rows):
        r = r[-L_:] if L_ else r[:0]
        if len(r):
            out[k, out.shape[1] - len(r) :] = r
    return torch.from_numpy(out)


class EvalDataset(Dataset):
    """One evaluation example per user: (user, history, target)."""

    def __init__(self, split: EvalSplit):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, k: int) -> tuple[int, np.ndarray, int]:
        return int(self.split.users[k]), self.split.history_of(k), int(self.split.targets[k])


class ShardedEvalSampler(DistributedSampler):
    """Evaluation sampler that counts every user exactly once across processes.

    Rank ``r`` of ``W`` takes examples ``r, r+W, r+2W, ...``: no padding, so unlike Lightning's default
    ``DistributedSampler`` no user is duplicated into the metric, and the summed rank histograms equal
    the single-process ones exactly. Being a ``DistributedSampler``, Lightning leaves it in place.
    """

    def __init__(self, dataset: Dataset):
        initialised = dist.is_available() and dist.is_initialized()
        world, rank = (dist.get_world_size(), dist.get_rank()) if initialised else (1, 0)
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


def eval_collate(batch: list[tuple[int, np.ndarray, int]]) -> dict[str, torch.Tensor]:
    users, hists, targets = zip(*batch)
    return {
        "user": torch.tensor(users, dtype=torch.long),
        "history": left_pad(list(hists)),
        "target": torch.tensor(targets, dtype=torch.long),
    }


class RecDataModule(L.LightningDataModule):
    """Shared base: loads the prepared dataset and serves validation, test and predict batches.

    Subclasses add the training loader. ``num_items`` / ``num_users`` are linked into the model
    by the CLI.
    """

    def __init__(
        self,
        data_dir: str = "data/ml-100k",
        batch_size: int = 256,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        predict_split: str = "test",
    ):
        super().__init__()
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.predict_split = predict_split
        self._data: PreparedData | None = None

    @property
    def data(self) -> PreparedData:
        if self._data is None:
            self._data = PreparedData(Path(self.data_dir))
        return self._data

    @property
    def num_items(self) -> int:
        return self.data.num_items

    @property
    def num_users(self) -> int:
        return self.data.num_users

    @property
    def fingerprint(self) -> str:
        return self.data.fingerprint

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = EvalDataset(self.data.eval_split(split))
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            sampler=ShardedEvalSampler(dataset),
            num_workers=self.num_workers,
            collate_fn=eval_collate,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self.predict_split)

    def state_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.data.fingerprint}
