"""SASRec (Kang & McAuley, ICDM 2018), following RecBole 1.2.1's architecture and defaults.

:class:`SasrecEncoder` is the plain ``nn.Module``: item embeddings plus learned positions, LayerNorm
and dropout, then post-LN transformer blocks (causal multi-head self-attention, GELU feed-forward).
Inputs are left-padded with 0. Position ids count from the first non-padding item, and padding is
masked out of attention, so left padding never changes an output. The hidden state at position
``t`` sees only items ``≤ t``.

:class:`SASRec` is the Lightning module: trained on windows from
:class:`darec.data.datamodules.sequence.SequenceDataModule` with full-softmax cross-entropy (``ce``) or binary
cross-entropy against one sampled negative per position (``bce``); items are scored with the tied
item embedding.

With ``text_backbone`` (text-aware SASRec) an item's embedding is its ID row plus a learned linear map of its
frozen sentence vector (:func:`darec.modules.item_encoder.frozen_text_vectors`), in the input and in the tied
scoring table alike. A CF export folds the two into one table, so DARec injects it like any SASRec.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from darec.errors import ConfigError
from darec.modules.base import EvalConfig, RecModule
from darec.modules.cf import CFEmbeddings, CFExport, load_cf_embeddings
from darec.modules.losses import next_item_loss, seen_items


SASREC_PREFIX = "sasrec."
"""Prefix of the encoder weights in a SASRec CF export."""
USER_STATES = "sasrec_encoder"
"""``meta["causal"]["user_states"]`` of a SASRec export: :class:`SasrecUserEncoder` rebuilds causal user states."""

@dataclass
class SasrecConfig:
    """Architecture of :class:`SasrecEncoder` (RecBole 1.2.1 defaults)."""

    num_items: int
    hidden_size: int = 64
    num_blocks: int = 2
    num_heads: int = 2
    inner_size: int = 256
    hidden_dropout: float = 0.5
    attn_dropout: float = 0.5
    max_len: int = 50
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    text_dim: int = 0  # > 0: item embeddings add a learned map of frozen text vectors of this size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Block(nn.Module):
    def __init__(self, cfg: SasrecConfig):
        super().__init__()
        d = cfg.hidden_size
        self.heads = cfg.num_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.attn_out = nn.Linear(d, d)
        self.ln1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.ff1 = nn.Linear(d, cfg.inner_size)
        self.ff2 = nn.Linear(cfg.inner_size, d)
        self.ln2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.hidden_dropout)
        self.attn_dropout = cfg.attn_dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        p = self.attn_dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        a = a.transpose(1, 2).reshape(b, n, d)
        x = self.ln1(x + self.drop(self.attn_out(a)))
        return self.ln2(x + self.drop(self.ff2(F.gelu(self.ff1(x)))))


class SasrecEncoder(nn.Module):
    """Causal SASRec encoder: item ids ``[B, L]`` (left-padded with 0) to hidden states ``[B, L, d]``."""

    def __init__(self, cfg: SasrecConfig):
        super().__init__()
        if cfg.hidden_size % cfg.num_heads:
            raise ConfigError(f"hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}")
        self.cfg = cfg
        d = cfg.hidden_size
        self.item_embedding = nn.Embedding(cfg.num_items + 1, d, padding_idx=0)
        self.position_embedding = nn.Embedding(cfg.max_len, d)
        self.ln = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.hidden_dropout)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.num_blocks))
        self.text_proj = nn.Linear(cfg.text_dim, d, bias=False) if cfg.text_dim > 0 else None
        if cfg.text_dim > 0:  # filled by set_text_vectors; saved with the model
            self.register_buffer("item_text", torch.zeros(cfg.num_items + 1, cfg.text_dim))
        self.apply(self._init)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def set_text_vectors(self, vectors: torch.Tensor) -> None:
        """The frozen text vector of every item id (row 0: padding, zero)."""
        if self.text_proj is None:
            raise ConfigError("this SASRec has no text input (text_dim 0)")
        if tuple(vectors.shape) != tuple(self.item_text.shape):
            raise ConfigError(f"text vectors have shape {tuple(vectors.shape)}, the model expects "
                              f"{tuple(self.item_text.shape)} (num_items + 1, text_dim)")
        with torch.no_grad():
            self.item_text.copy_(vectors.to(self.item_text))
            self.item_text[0].zero_()

    def item_table(self) -> torch.Tensor:
        """Item embeddings ``[num_items + 1, d]`` for input and scoring: the ID rows, plus the mapped text vectors."""
        w = self.item_embedding.weight
        return w if self.text_proj is None else w + self.text_proj(self.item_text)

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, self.cfg.initializer_range)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[B, L, d]``; ``L <= max_len``. Rows at padding positions are unspecified."""
        b, n = item_seq.shape
        if n > self.cfg.max_len:
            raise ValueError(f"sequence length {n} exceeds max_len {self.cfg.max_len}; use causal_user_states")
        valid = item_seq > 0
        pos = (valid.long().cumsum(1) - 1).clamp(min=0)
        items = F.embedding(item_seq, self.item_table(), padding_idx=0)  # nn.Embedding's lookup, on the whole table
        x = self.drop(self.ln(items + self.position_embedding(pos)))
        eye = torch.eye(n, dtype=torch.bool, device=item_seq.device)
        mask = (torch.ones(n, n, dtype=torch.bool, device=item_seq.device).tril() & valid[:, None, :]) | eye
        mask = mask[:, None]
        for block in self.blocks:
            x = block(x, mask)
        return x

    def causal_user_states(self, item_seq: torch.Tensor) -> torch.Tensor:
        """Per-position user states ``[B, L, d]``: row ``t`` depends only on items at positions ``≤ t``.

        Padding positions get zero rows. Sequences longer than ``max_len`` are covered by windows of
        ``max_len`` with stride ``max_len // 2`` (as in training): each position takes its state from
        the earliest window in which it is not covered by the previous one.
        """
        b, n = item_seq.shape
        L = self.cfg.max_len
        if n <= L:
            out = self.forward(item_seq)
        else:
            stride = max(1, L // 2)
            starts = list(range(0, n - L, stride)) + [n - L]
            out = item_seq.new_zeros((b, n, self.cfg.hidden_size), dtype=self.item_embedding.weight.dtype)
            done = 0
            for s in starts:
                h = self.forward(item_seq[:, s : s + L])
                out[:, done : s + L] = h[:, done - s :]
                done = s + L
        return out * (item_seq > 0).unsqueeze(-1).to(out.dtype)

    def last_state(self, history: torch.Tensor) -> torch.Tensor:
        """The user vector ``[B, d]`` after a left-padded history (its last ``max_len`` items)."""
        return self.forward(history[:, -self.cfg.max_len :])[:, -1]


class SASRec(RecModule):
    """SASRec as a darec recommender.

    Args:
        num_items, num_users, data_fingerprint: linked from the datamodule by the CLI.
        hidden_size: embedding and hidden size.
        num_blocks: transformer blocks.
        num_heads: attention heads.
        inner_size: feed-forward inner size.
        hidden_dropout: dropout on embeddings and block outputs.
        attn_dropout: dropout on attention probabilities.
        max_len: longest input (positions); the datamodule's ``max_len`` must not exceed it.
        layer_norm_eps: LayerNorm epsilon.
        initializer_range: std of the normal initialisation.
        loss: ``ce`` (full softmax over the catalogue) or ``bce`` (one sampled negative per position).
        mask_seen: with ``ce``, leave the window's items up to each position out of that position's softmax (never its
            target), as full-ranking evaluation leaves out a user's history (DARec's ``losses.mask_seen``).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        evaluation: the shared evaluation settings (:class:`~darec.modules.base.EvalConfig`).
        text_backbone: ``None`` (plain SASRec) or a backbone (``minilm``, a local HF directory, ``tiny-*``) whose
            frozen sentence vectors of the item texts are mapped into the item embeddings (text-aware SASRec).
        text_dim: size of those vectors (the backbone's hidden size; 384 for MiniLM), checked at setup.
        text_cache_dir: where the item texts' tokenisation is cached (``None``: not cached).
    """

    def __init__(
        self,
        num_items: int = 0,
        num_users: int = 0,
        data_fingerprint: str = "",
        hidden_size: int = 64,
        num_blocks: int = 2,
        num_heads: int = 2,
        inner_size: int = 256,
        hidden_dropout: float = 0.5,
        attn_dropout: float = 0.5,
        max_len: int = 50,
        layer_norm_eps: float = 1e-12,
        initializer_range: float = 0.02,
        loss: Literal["ce", "bce"] = "ce",
        mask_seen: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        evaluation: EvalConfig | None = None,
        text_backbone: str | None = None,
        text_dim: int = 384,
        text_cache_dir: str | None = None,
    ):
        super().__init__(num_items, num_users, data_fingerprint, evaluation)
        if loss not in ("ce", "bce"):
            raise ConfigError(f"loss must be 'ce' or 'bce', got {loss!r}")
        if mask_seen and loss != "ce":
            raise ConfigError("mask_seen works on the full softmax: set loss: ce")
        if text_backbone is not None and text_dim < 1:
            raise ConfigError(f"text_dim must be positive with text_backbone {text_backbone!r}, got {text_dim}")
        self.save_hyperparameters()
        self.loss_kind = loss
        self.mask_seen = mask_seen
        self.lr = lr
        self.weight_decay = weight_decay
        self.config = SasrecConfig(
            num_items, hidden_size, num_blocks, num_heads, inner_size, hidden_dropout, attn_dropout,
            max_len, layer_norm_eps, initializer_range, text_dim if text_backbone is not None else 0,
        )
        self.encoder = SasrecEncoder(self.config)
        self.text_backbone = text_backbone
        self.text_cache_dir = text_cache_dir
        if text_backbone is not None:  # the text vectors are in (saved with the model; plain SASRec has no such key)
            self.register_buffer("text_ready", torch.tensor(False))

    @property
    def item_weight(self) -> torch.Tensor:
        """The tied item table ``[num_items + 1, d]`` used for input and scoring (row 0: padding)."""
        return self.encoder.item_table()

    def setup(self, stage: str) -> None:
        self.check_window_length(self.config.max_len)
        dm = self.attached_datamodule()
        if self.text_backbone is not None and not bool(self.text_ready) and dm is not None:
            self.attach_text(dm.data.sentences, dm.data.text_hash)

    def attach_text(self, sentences: list[str], text_hash: str | None = None) -> None:
        """Encode the item sentences with the frozen ``text_backbone`` and give them to the encoder (once)."""
        from darec.modules.backbone import BackboneConfig  # the language model is loaded only for a text-aware SASRec
        from darec.modules.item_encoder import frozen_text_vectors

        if len(sentences) != self.num_items + 1:
            raise ConfigError(f"{len(sentences)} item sentences for {self.num_items} items (+ padding row 0)")
        vectors = frozen_text_vectors(sentences, BackboneConfig(name=self.text_backbone), cache_dir=self.text_cache_dir,
                                      text_hash=text_hash)
        if vectors.shape[1] != self.config.text_dim:
            raise ConfigError(f"text_backbone {self.text_backbone!r} gives vectors of size {vectors.shape[1]}; set "
                              f"text_dim: {vectors.shape[1]}")
        self.encoder.set_text_vectors(vectors)
        self.text_ready.fill_(True)

    def causal_user_states(self, item_seq: torch.Tensor) -> torch.Tensor:
        """See :meth:`SasrecEncoder.causal_user_states`."""
        return self.encoder.causal_user_states(item_seq)

    def cf_export(self, data: Any, has_cf: torch.Tensor, include_user_emb: bool = False) -> CFExport:
        """SASRec as a CF source: its tied item table, and its encoder for causal per-position user states (the
        untrained rows of items without training interactions zeroed). It has no non-causal user table."""
        state = {k: v.detach().cpu().clone().float() for k, v in self.encoder.state_dict().items()
                 if k not in ("item_text", "text_proj.weight")}
        with torch.no_grad():  # a text-aware table is folded into plain ID rows: the export is an ordinary SASRec
            state["item_embedding.weight"] = self.encoder.item_table().detach().cpu().float().clone()
        state["item_embedding.weight"][~has_cf] = 0.0
        return CFExport(
            kind="sasrec", item_emb=state["item_embedding.weight"].clone(),
            tensors={SASREC_PREFIX + k: v for k, v in state.items()},
            meta={"causal": {"user_states": USER_STATES}, "sasrec": {
                "config": {**self.config.to_dict(), "text_dim": 0}, "tensor_prefix": SASREC_PREFIX,
                "usage": "darec.modules.sasrec.SasrecUserEncoder.from_export(path, fingerprint).causal_user_states(item_seq)"}},
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        target = batch["target"]
        sel = target > 0
        h = self.encoder(batch["input"])[sel]
        t = target[sel]
        w = self.item_weight
        if self.loss_kind == "ce":
            seen = seen_items(batch["input"], target, sel, w.shape[0] - 1) if self.mask_seen else None
            loss = next_item_loss(h, w, t, exclude=seen)
        else:
            if "negative" not in batch:
                raise ConfigError("loss 'bce' needs negatives: set data.init_args.num_negatives: 1")
            pos = (h * w[t]).sum(-1)
            neg = (h * w[batch["negative"][sel]]).sum(-1)
            loss = (F.softplus(-pos) + F.softplus(neg)).mean()
        # reduced across DDP processes (sync_dist), step and epoch values alike; a no-op in one process
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=int(t.numel()),
                 sync_dist=True)
        return loss

    def item_vectors(self) -> torch.Tensor:
        return self.item_weight

    def history_user_vectors(self, history: torch.Tensor) -> torch.Tensor:
        """The encoder's state after the history's last ``max_len`` items."""
        return self.encoder.last_state(history)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class SasrecUserEncoder(SasrecEncoder):
    """A SASRec encoder rebuilt from an export, for causal per-position user states.

    It starts frozen: no gradients and every dropout probability 0, so it computes the same function in
    train and eval mode and simply follows its parent's mode. :meth:`unfreeze` makes it trainable for joint
    fine-tuning and restores its dropout.
    """

    def _set_dropout(self, on: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Dropout):
                m.p = self.cfg.hidden_dropout if on else 0.0
            if isinstance(getattr(m, "attn_dropout", None), float):
                m.attn_dropout = self.cfg.attn_dropout if on else 0.0

    def freeze(self) -> "SasrecUserEncoder":
        """No gradients, no dropout."""
        self.requires_grad_(False)
        self._set_dropout(False)
        return self

    def unfreeze(self) -> "SasrecUserEncoder":
        """Make the weights trainable and restore the dropout of the SASRec they came from."""
        self.requires_grad_(True)
        self._set_dropout(True)
        return self

    @classmethod
    def from_export(cls, path: str | os.PathLike, expected_fingerprint: str | None) -> "SasrecUserEncoder":
        """The encoder of a SASRec export file (checked against the dataset's fingerprint), frozen."""
        return cls.from_cf(load_cf_embeddings(path, expected_fingerprint))

    @classmethod
    def from_cf(cls, cf: CFEmbeddings) -> "SasrecUserEncoder":
        """The encoder of a loaded SASRec export, frozen; a clear error for an export without one."""
        if cf.causal_user_states != USER_STATES:
            raise ConfigError(f"{cf.path}: a {cf.kind} export has no causal SASRec user encoder")
        enc = cls(SasrecConfig(**cf.meta["sasrec"]["config"]))
        n = len(SASREC_PREFIX)
        enc.load_state_dict({k[n:]: v for k, v in cf.extra.items() if k.startswith(SASREC_PREFIX)})
        return enc.freeze()
