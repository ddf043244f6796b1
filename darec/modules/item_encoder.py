"""Item level of DARec: item sentences packed under context masking give semantic vectors ``s_i``."""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import torch

from darec.modules.text import layout_rows, pack_items, PackedBatch, tokenize_sentences
from darec.errors import ConfigError
from darec.modules.backbone import Backbone, BackboneConfig, load_backbone
from darec.modules.frozen_prefix import FrozenPrefix
from darec.modules.wrapping import adapters_bypassed

ITEM_VECTORS = ("auto", "align", "mean", "align_mean")


class ItemEncoder:
    """Encodes items from their token ids through the (adapted) backbone.

    Every item's tokens are followed by ``[ALIGN]``; items are packed densely into rows of
    ``pack_len`` tokens under a block-diagonal mask with positions restarting per item, so the
    result equals encoding each item alone.

    The semantic vector ``s_i`` (``item_vector``):

    - ``"align"``: the final ``[ALIGN]`` state (the paper's choice);
    - ``"mean"``: the mean of the item's sentence-token states, ``[ALIGN]`` excluded and hidden from them, which is
      how sentence encoders such as all-MiniLM-L6-v2 were trained to represent a sentence;
    - ``"align_mean"``: the sum of the two;
    - ``"auto"``: ``"mean"`` for encoder (bidirectional) families, ``"align"`` for decoders, whose last token is
      the one that has read the whole sentence (a mean over causal states weights the shared prefix heavily).

    A plain helper, not an ``nn.Module``: the backbone it uses is owned (and saved) by the model.

    Args:
        backbone: the frozen backbone (with adapters applied).
        token_lists: token ids of every item id (index = item id; index 0 unused).
        pack_len: tokens per packed row.
        rows_per_pass: packed rows sent through the backbone at once.
        item_vector: ``"auto"``, ``"align"``, ``"mean"`` or ``"align_mean"`` (above).
        adapter_layers: how many of the top layers' adapters act at the item level: ``None`` all (the method),
            ``0`` none (items are encoded by the frozen backbone and their vectors never go stale), ``k`` the top
            ``k`` (below them the item level is frozen, so frozen-prefix caching can skip those layers).
    """

    def __init__(
        self,
        backbone: Backbone,
        token_lists: list[list[int]],
        pack_len: int = 128,
        rows_per_pass: int = 64,
        item_vector: str = "align",
        adapter_layers: int | None = None,
    ):
        if item_vector not in ITEM_VECTORS:
            raise ConfigError(f"item_vector must be one of {ITEM_VECTORS}, got {item_vector!r}")
        self.backbone = backbone
        self.token_lists = token_lists
        self.pack_len = pack_len
        self.rows_per_pass = rows_per_pass
        if item_vector == "auto":
            item_vector = "align" if backbone.is_decoder else "mean"
        self.item_vector = item_vector
        n = backbone.num_layers
        if adapter_layers is not None and not 0 <= adapter_layers <= n:
            raise ConfigError(f"item adapter layers must be null or in 0..{n}, got {adapter_layers}")
        self.bypass_below = 0 if adapter_layers is None else n - adapter_layers
        self.prefix: FrozenPrefix | None = None
        self._prefix_states: torch.Tensor | None = None
        self._prefix_offsets: torch.Tensor | None = None

    @property
    def num_items(self) -> int:
        return len(self.token_lists) - 1

    @property
    def hide_align(self) -> bool:
        """No text token attends ``[ALIGN]`` (so the text-token states do not depend on its trainable embedding)."""
        return self.item_vector == "mean"

    @property
    def frozen(self) -> bool:
        """No adapter acts at the item level."""
        return self.bypass_below >= self.backbone.num_layers

    def _bypass(self) -> Any:
        layers = list(self.backbone.layers)[: self.bypass_below]
        return adapters_bypassed(layers) if layers else contextlib.nullcontext()

    def set_tokens(self, token_lists: list[list[int]]) -> None:
        self.token_lists = token_lists
        self._prefix_states = self._prefix_offsets = None

    def enable_frozen_prefix(self, cut: int) -> None:
        """Cache the item-level states entering layer ``cut`` (the first adapted layer); see
        :mod:`darec.modules.frozen_prefix`. Needs ``item_vector="mean"``, the only choice that reads no
        state depending on the trainable ``[ALIGN]`` embedding below the cut."""
        if not self.hide_align:
            raise ConfigError(
                f"frozen-prefix caching needs item_vector 'mean' (got {self.item_vector!r}): the [ALIGN] embedding "
                "trains, so its states below the first adapted layer are not frozen"
            )
        self.prefix = FrozenPrefix(self.backbone.layers, cut)

    def _device(self) -> torch.device:
        return self.backbone.special_embeddings.device

    def _pack(self, ids: list[int]) -> PackedBatch:
        return pack_items([self.token_lists[i] for i in ids], ids, self.backbone.align_id, self.pack_len).to(self._device())

    def _run(self, packed: PackedBatch, lo: int, hi: int) -> torch.Tensor:
        with self._bypass():
            return self.backbone.encode_segments(
                packed.input_ids[lo:hi], packed.segment_ids[lo:hi], packed.position_ids[lo:hi], hide_last=self.hide_align
            )

    def _token_index(self, packed: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Item id and token position of every packed token (``-1`` item on padding)."""
        seg, rows, cols = packed.segment_ids, packed.align_index[:, 0], packed.align_index[:, 1]
        table = torch.full((packed.num_rows, int(seg.max()) + 2), -1, dtype=torch.long, device=seg.device)
        table[rows, seg[rows, cols]] = packed.item_ids.to(seg.device)
        item_at = torch.where(seg >= 0, table.gather(1, seg.clamp(min=0)), torch.full_like(seg, -1))
        return item_at, packed.position_ids

    @torch.no_grad()
    def _capture_prefix(self, chunk_items: int = 512) -> None:
        """Run every item once up to the cut and keep its token states there, flat, in item-id order."""
        assert self.prefix is not None
        n = self.num_items
        lengths = torch.tensor([0] + [min(len(self.token_lists[i]), self.pack_len - 1) + 1 for i in range(1, n + 1)])
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(self._device())
        flat: torch.Tensor | None = None
        for lo in range(1, n + 1, chunk_items):
            packed = self._pack(list(range(lo, min(n + 1, lo + chunk_items))))
            for r in range(0, packed.num_rows, self.rows_per_pass):
                hi = min(packed.num_rows, r + self.rows_per_pass)
                states = self.prefix.run_capturing(lambda: self._run(packed, r, hi))
                if flat is None:
                    flat = states.new_zeros(int(offsets[-1]), states.shape[-1])
                item_at, pos = self._token_index(packed)
                item_at, pos = item_at[r:hi], pos[r:hi]
                real = item_at >= 0
                flat[offsets[item_at[real]] + pos[real]] = states[real]
        self._prefix_states, self._prefix_offsets = flat, offsets

    def _encode_rows(self, packed: PackedBatch) -> torch.Tensor:
        """All token states ``[R, L, H]`` of a packed batch, resuming from the frozen prefix when it is on."""
        cached = self.prefix is not None and int(packed.item_ids.max()) <= self.num_items
        if cached and self._prefix_states is None:
            self._capture_prefix()
        outs = []
        for lo in range(0, packed.num_rows, self.rows_per_pass):
            hi = min(packed.num_rows, lo + self.rows_per_pass)
            if not cached:
                outs.append(self._run(packed, lo, hi))
                continue
            item_at, pos = self._token_index(packed)
            item_at, pos = item_at[lo:hi], pos[lo:hi]
            start = self._prefix_states.new_zeros(*item_at.shape, self._prefix_states.shape[-1])
            real = item_at >= 0
            start[real] = self._prefix_states[self._prefix_offsets[item_at[real]] + pos[real]]
            with self.prefix.resume(start):
                outs.append(self._run(packed, lo, hi))
        if not outs:
            return torch.zeros(0, self.pack_len, self.backbone.hidden_size, device=self._device())
        return torch.cat(outs, 0)

    def encode(self, item_ids: torch.Tensor, mean_pool: bool | None = None) -> torch.Tensor:
        """Semantic vectors [M, H] of ``item_ids`` (each id once, in the given order).

        ``mean_pool`` overrides the configured vector: True gives the mean of each item's sentence-token
        states, False the ``[ALIGN]`` state.
        """
        ids = item_ids.tolist()
        if not ids:
            return torch.zeros(0, self.backbone.hidden_size, device=self._device())
        packed = self._pack(ids)
        kind = self.item_vector if mean_pool is None else ("mean" if mean_pool else "align")
        return self._pool(self._encode_rows(packed), packed.segment_ids, packed.align_index, kind)

    def _pool(self, states: torch.Tensor, seg: torch.Tensor, align_index: torch.Tensor, kind: str) -> torch.Tensor:
        """Item vectors [M, H] from token states [R, L, H]: the ``[ALIGN]`` state at ``align_index`` [M, 2], the
        mean of the tokens before it in its segment, or their sum (``kind``)."""
        rows, cols = align_index[:, 0], align_index[:, 1]
        align = states[rows, cols]
        if kind == "align":
            return align
        member = (seg[rows] == seg[rows, cols][:, None]) & (torch.arange(seg.shape[1], device=seg.device)[None] < cols[:, None])
        w = member.to(states.dtype)
        mean = torch.einsum("ml,mlh->mh", w, states[rows]) / w.sum(1, keepdim=True).clamp(min=1)
        return mean if kind == "mean" else align + mean

    @torch.no_grad()
    def encode_all(self, num_items: int | None = None, chunk_items: int = 512, mean_pool: bool | None = None) -> torch.Tensor:
        """Vectors of item ids ``0..num_items`` (row 0 zero), encoded in chunks without gradient."""
        n = self.num_items if num_items is None else num_items
        out = torch.zeros(n + 1, self.backbone.hidden_size, device=self._device())
        for lo in range(1, n + 1, chunk_items):
            ids = torch.arange(lo, min(n + 1, lo + chunk_items))
            out[lo : lo + len(ids)] = self.encode(ids, mean_pool=mean_pool).float()
        return out

    def encode_histories(self, seq: torch.Tensor, sem: torch.Tensor, history_tokens: int) -> torch.Tensor:
        """``s_i`` [B, L, H] of each window's items encoded as one concatenated text (context masking off).

        Row ``b`` holds the window's most recent items that fit in ``history_tokens`` tokens, each followed
        by ``[ALIGN]``; a token attends to its own item (causally for decoders) and to every earlier item's
        tokens. Positions still restart per item. Older items that do not fit take their vector from ``sem``.
        """
        device = seq.device
        out = sem[seq].clone()
        rows: list[list[tuple[int, list[int]]]] = []
        for b in range(seq.shape[0]):
            kept: list[tuple[int, list[int]]] = []
            room = history_tokens
            for col in range(seq.shape[1] - 1, -1, -1):
                item = int(seq[b, col])
                if item == 0:
                    break
                toks = self.token_lists[item]
                if len(toks) + 1 > room:
                    break
                kept.append((col, toks))
                room -= len(toks) + 1
            rows.append(kept[::-1])
        width = max((sum(len(t) + 1 for _, t in r) for r in rows), default=0)
        if width == 0:
            return out
        where = [(b, col) for b, kept in enumerate(rows) for col, _ in kept]
        counter = itertools.count()
        numbered = [[(next(counter), toks) for _, toks in kept] for kept in rows]
        ids, segs, pos, align = layout_rows(numbered, len(where), width, self.backbone.align_id)
        segs = segs.to(device)
        with self._bypass():
            states = self.backbone.encode_segments(
                ids.to(device), segs, pos.to(device), attend_earlier=True, hide_last=self.hide_align
            )
        b_idx, cols = (torch.tensor(v, device=device) for v in zip(*where))
        out[b_idx, cols] = self._pool(states, segs, align.to(device), self.item_vector).to(out.dtype)
        return out


@torch.no_grad()
def frozen_text_vectors(
    sentences: list[str],
    backbone: BackboneConfig | None = None,
    max_tokens: int = 64,
    pack_len: int = 128,
    cache_dir: str | None = None,
    text_hash: str | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Unit-length item vectors ``[len(sentences), H]`` of the frozen backbone (no adapters), row = item id, row 0 zero.

    Each sentence is read with the backbone's own framing tokens and mean-pooled over its tokens (the sentence
    embedding all-MiniLM-L6-v2 was trained for). With ``cache_dir`` and ``text_hash`` the tokenisation is cached.
    The encoding runs on ``device``; the vectors are returned on the CPU.
    """
    bb = load_backbone(backbone or BackboneConfig()).eval().to(device)
    tokens = tokenize_sentences(sentences, bb.tokenizer, max_tokens, cache_dir, text_hash, framing=True)
    vectors = ItemEncoder(bb, tokens, pack_len, item_vector="mean").encode_all()
    vectors = torch.nn.functional.normalize(vectors.cpu(), dim=-1)
    vectors[0] = 0.0
    return vectors
