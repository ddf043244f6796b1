"""Popularity baseline: every user gets the catalogue ranked by training interaction count."""

from __future__ import annotations

import torch

from darec.errors import ConfigError
from darec.modules.base import EvalBatch, EvalConfig, RecModule


class Popularity(RecModule):
    """Scores item ``j`` by its number of training interactions (validation and test never count).

    The counts are read from the datamodule's prepared dataset when the trainer sets up, so
    ``darec test`` needs no fit. Fitting is a no-op pass that only checks the data loads.
    """

    def __init__(
        self,
        num_items: int = 0,
        num_users: int = 0,
        data_fingerprint: str = "",
        evaluation: EvalConfig | None = None,
    ):
        super().__init__(num_items, num_users, data_fingerprint, evaluation)
        self.save_hyperparameters()
        self.register_buffer("counts", torch.zeros(num_items + 1))
        self.automatic_optimization = False

    def setup(self, stage: str) -> None:
        dm = self.attached_datamodule()
        if dm is not None and hasattr(dm, "data"):
            self.set_counts(torch.as_tensor(dm.data.train_item_counts()[: self.num_items + 1]))

    def set_counts(self, counts: torch.Tensor) -> None:
        """Use ``counts`` [num_items + 1] (index = item id) as the scores."""
        if counts.shape != (self.num_items + 1,):
            raise ValueError(f"counts must have shape ({self.num_items + 1},), got {tuple(counts.shape)}")
        self.counts = counts.to(self.counts.device, torch.float32)

    def training_step(self, batch, batch_idx: int) -> None:
        return None

    def configure_optimizers(self):
        return None

    def score_chunk(self, batch: EvalBatch, lo: int, hi: int) -> torch.Tensor:
        return self.counts[lo:hi].unsqueeze(0).expand(batch["target"].shape[0], -1)

    def item_vectors(self) -> torch.Tensor:
        """The counts as a one-column table: with the user vector ``[1]`` every history gets the same ranking."""
        if not bool(self.counts.any()):
            raise ConfigError("this popularity model holds no training counts (it was saved before it saw its data)")
        return self.counts[:, None]

    def history_user_vectors(self, history: torch.Tensor) -> torch.Tensor:
        return torch.ones(history.shape[0], 1, dtype=self.counts.dtype, device=self.counts.device)
