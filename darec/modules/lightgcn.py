"""LightGCN (He et al., SIGIR 2020), following RecBole 1.2.1's training recipe.

User and item embeddings are propagated ``num_layers`` times over the symmetric-normalised
training user–item graph; the representations are the mean over layers ``0..K``. Training uses
BPR with one uniform negative per interaction (never a training positive of the user) plus L2
regularisation of the batch's layer-0 embeddings.

The graph comes from :class:`darec.data.datamodules.interaction.InteractionDataModule` when the trainer sets up
(training interactions only). The propagated representations are cached in the buffers
``user_rep``/``item_rep``: recomputed at the start of every validation, test and predict epoch and
whenever a checkpoint is saved, so a checkpoint alone can evaluate and export without the graph.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from darec.errors import ConfigError
from darec.modules.base import EvalBatch, EvalConfig, RecModule
from darec.modules.cf import CFExport


class _SymmetricSpMM(torch.autograd.Function):
    """``A @ x`` for a symmetric sparse ``A``: the backward is ``A @ grad`` (no transpose needed)."""

    @staticmethod
    def forward(ctx, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.adj = adj
        return adj @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:  # type: ignore[override]
        return None, ctx.adj @ grad


def to_csr(adjacency: torch.Tensor) -> torch.Tensor:
    """Sparse CSR copy of ``adjacency`` (the fastest CPU sparse-dense product), without the beta warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return adjacency.coalesce().to_sparse_csr()


class LightGCN(RecModule):
    """LightGCN as a darec recommender.

    Args:
        num_items, num_users, data_fingerprint: linked from the datamodule by the CLI.
        embedding_size: embedding dimension.
        num_layers: propagation layers ``K``.
        reg_weight: weight of the L2 term on the batch's layer-0 embeddings.
        squared_reg: ``False`` (RecBole's default): the term is the sum of the Frobenius norms of the
            user, positive and negative batch embeddings divided by the batch size; ``True``: half
            the sum of squared norms divided by the batch size (the LightGCN paper's form).
        lr: Adam learning rate.
        evaluation: the shared evaluation settings (:class:`~darec.modules.base.EvalConfig`).
    """

    def __init__(
        self,
        num_items: int = 0,
        num_users: int = 0,
        data_fingerprint: str = "",
        embedding_size: int = 64,
        num_layers: int = 3,
        reg_weight: float = 1e-4,
        squared_reg: bool = False,
        lr: float = 1e-3,
        evaluation: EvalConfig | None = None,
    ):
        super().__init__(num_items, num_users, data_fingerprint, evaluation)
        if num_layers < 0:
            raise ConfigError(f"num_layers must be >= 0, got {num_layers}")
        self.save_hyperparameters()
        self.num_layers = num_layers
        self.reg_weight = reg_weight
        self.squared_reg = squared_reg
        self.lr = lr
        self.user_embedding = nn.Embedding(num_users + 1, embedding_size)
        self.item_embedding = nn.Embedding(num_items + 1, embedding_size)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.register_buffer("user_rep", torch.zeros(num_users + 1, embedding_size))
        self.register_buffer("item_rep", torch.zeros(num_items + 1, embedding_size))
        self.register_buffer("reps_ready", torch.zeros((), dtype=torch.bool))
        self._adj: torch.Tensor | None = None

    def setup(self, stage: str) -> None:
        dm = self.attached_datamodule()
        adj = getattr(dm, "adjacency", None)
        if adj is not None:
            self.set_graph(adj)
        elif stage == "fit":
            raise ConfigError("LightGCN needs a datamodule with an adjacency (darec.data.datamodules.interaction.InteractionDataModule)")

    def set_graph(self, adjacency: torch.Tensor) -> None:
        """Use ``adjacency`` (sparse, ``[num_users + num_items + 2]²``, node ids as in the datamodule)."""
        n = self.num_users + self.num_items + 2
        if tuple(adjacency.shape) != (n, n):
            raise ConfigError(f"adjacency has shape {tuple(adjacency.shape)}, expected {(n, n)} for this model")
        self._adj = to_csr(adjacency)

    @property
    def has_graph(self) -> bool:
        return self._adj is not None

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """User ``[num_users + 1, d]`` and item ``[num_items + 1, d]`` representations (mean over layers)."""
        if self._adj is None:
            raise ConfigError("LightGCN has no graph: call set_graph() or train with InteractionDataModule")
        x = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        if self._adj.device != x.device or self._adj.dtype != x.dtype:  # moved, or trained in another precision
            self._adj = self._adj.to(device=x.device, dtype=x.dtype)
        acc = x
        for _ in range(self.num_layers):
            x = _SymmetricSpMM.apply(self._adj, x)
            acc = acc + x
        acc = acc / (self.num_layers + 1)
        return acc[: self.num_users + 1], acc[self.num_users + 1 :]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.reps_ready.fill_(False)
        user, pos, neg = batch["user"], batch["pos"], batch["neg"]
        users, items = self.propagate()
        u = users[user]
        diff = (u * items[pos]).sum(-1) - (u * items[neg]).sum(-1)
        bpr = -F.logsigmoid(diff).mean()
        ego = (self.user_embedding(user), self.item_embedding(pos), self.item_embedding(neg))
        if self.squared_reg:
            reg = sum(e.pow(2).sum() for e in ego) / (2 * len(user))
        else:
            reg = sum(e.norm(2) for e in ego) / len(user)
        loss = bpr + self.reg_weight * reg
        # reduced across DDP processes (sync_dist), step and epoch values alike; a no-op in one process
        self.log("train/bpr", bpr, on_step=False, on_epoch=True, batch_size=len(user), sync_dist=True)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(user), sync_dist=True)
        return loss

    @torch.no_grad()
    def cf_export(self, data: Any, has_cf: torch.Tensor, include_user_emb: bool = False) -> CFExport:
        """LightGCN as a CF source: its propagated item representations over the training graph of ``data`` (and,
        when asked, its user representations, which summarise whole histories and so are not causal)."""
        from darec.data.datamodules.interaction import normalized_adjacency

        if not self.has_graph:
            self.set_graph(normalized_adjacency(data.train, int(self.num_users), int(self.num_items)))
        self.refresh_representations()
        user = self.user_rep.detach().cpu().float().clone() if include_user_emb else None
        return CFExport(kind="lightgcn", item_emb=self.item_rep.detach().cpu().float().clone(), user_emb=user)

    def refresh_representations(self) -> None:
        """Recompute the cached ``user_rep``/``item_rep`` from the current weights (needs the graph)."""
        users, items = self.propagate()
        self.user_rep.copy_(users)
        self.item_rep.copy_(items)
        self.reps_ready.fill_(True)

    def on_eval_start(self) -> None:
        if self.has_graph:
            self.refresh_representations()
        elif not bool(self.reps_ready):
            raise ConfigError("LightGCN has neither a graph nor cached representations to evaluate with")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.has_graph:
            self.refresh_representations()
            state = checkpoint["state_dict"]
            for name in ("user_rep", "item_rep", "reps_ready"):
                state[name] = getattr(self, name).detach().clone()

    def prepare_eval_batch(self, batch: EvalBatch) -> EvalBatch:
        return {**batch, "user_vec": self.user_rep[batch["user"]]}

    def item_vectors(self) -> torch.Tensor:
        if not bool(self.reps_ready):
            raise ConfigError("this LightGCN model holds no propagated item vectors (saved without its graph)")
        return self.item_rep

    def history_user_vectors(self, history: torch.Tensor) -> torch.Tensor:
        """The mean of the history items' propagated vectors.

        LightGCN learns a vector only for the users in its training graph (evaluation uses those). A user known
        only by a history is placed at the mean of their items' vectors, the user vector DARec's injection
        derives from LightGCN too.
        """
        items = self.item_vectors()
        mask = (history > 0).unsqueeze(-1).to(items.dtype)
        return (items[history] * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)
