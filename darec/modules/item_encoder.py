"""Item level of DARec: item sentences packed under context masking give semantic vectors ``s_i``."""

from __future__ import annotations

import itertools

import torch

from darec.data.text import layout_rows, pack_items
from darec.modules.backbone import Backbone


class ItemEncoder:
    """Encodes items from their token ids through the (adapted) backbone.

    Every item's tokens are followed by ``[ALIGN]``; items are packed densely into rows of
    ``pack_len`` tokens under a block-diagonal mask with positions restarting per item, so the
    result equals encoding each item alone. The ``[ALIGN]`` hidden state is ``s_i``.

    A plain helper, not an ``nn.Module``: the backbone it uses is owned (and saved) by the model.

    Args:
        backbone: the frozen backbone (with adapters applied).
        token_lists: token ids of every item id (index = item id; index 0 unused).
        pack_len: tokens per packed row.
        rows_per_pass: packed rows sent through the backbone at once.
    """

    def __init__(self, backbone: Backbone, token_lists: list[list[int]], pack_len: int = 128, rows_per_pass: int = 64):
        self.backbone = backbone
        self.token_lists = token_lists
        self.pack_len = pack_len
        self.rows_per_pass = rows_per_pass

    @property
    def num_items(self) -> int:
        return len(self.token_lists) - 1

    def set_tokens(self, token_lists: list[list[int]]) -> None:
        self.token_lists = token_lists

    def _device(self) -> torch.device:
        return self.backbone.special_embeddings.device

    def encode(self, item_ids: torch.Tensor, mean_pool: bool = False) -> torch.Tensor:
        """Semantic vectors [M, H] of ``item_ids`` (each id once, in the given order).

        ``mean_pool=True`` returns the mean of each item's sentence token states instead of
        ``[ALIGN]`` (the frozen text vectors used for hard-negative mining).
        """
        ids = item_ids.tolist()
        packed = pack_items([self.token_lists[i] for i in ids], ids, self.backbone.align_id, self.pack_len)
        packed = packed.to(self._device())
        out = torch.empty(len(ids), self.backbone.hidden_size, device=self._device(), dtype=self.backbone.dtype)
        outs = []
        for lo in range(0, packed.num_rows, self.rows_per_pass):
            hi = min(packed.num_rows, lo + self.rows_per_pass)
            states = self.backbone.encode_segments(
                packed.input_ids[lo:hi], packed.segment_ids[lo:hi], packed.position_ids[lo:hi]
            )
            outs.append(states)
        states = torch.cat(outs, 0) if outs else out.new_zeros(0, self.pack_len, self.backbone.hidden_size)
        rows, cols = packed.align_index[:, 0], packed.align_index[:, 1]
        if not mean_pool:
            return states[rows, cols]
        seg = packed.segment_ids
        seg_at_align = seg[rows, cols]
        member = (seg[rows] == seg_at_align[:, None]) & (torch.arange(seg.shape[1], device=seg.device)[None] < cols[:, None])
        w = member.to(states.dtype)
        summed = torch.einsum("ml,mlh->mh", w, states[rows])
        return summed / w.sum(1, keepdim=True).clamp(min=1)

    @torch.no_grad()
    def encode_all(self, num_items: int | None = None, chunk_items: int = 512, mean_pool: bool = False) -> torch.Tensor:
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
        states = self.backbone.encode_segments(ids.to(device), segs.to(device), pos.to(device), attend_earlier=True)
        b_idx, cols = (torch.tensor(v, device=device) for v in zip(*where))
        align = align.to(device)
        out[b_idx, cols] = states[align[:, 0], align[:, 1]].to(out.dtype)
        return out
