"""Additive 4D attention masks for context masking (item level) and item-causal attention (sequence level).

Every mask returned here has shape ``(B, 1, L, L)`` in a floating dtype: ``0`` where query ``i`` may attend key
``j`` and ``torch.finfo(dtype).min`` where it may not. Hugging Face models in transformers 5 pass such a 4D mask
through unchanged to the eager and SDPA attention kernels. Every row allows at least one key (padding rows attend
themselves), so the softmax never sees an all-blocked row and no NaN appears.
"""

from __future__ import annotations

import torch

__all__ = ["segment_mask", "item_causal_mask", "position_ids_from_segments", "bool_to_additive"]


def bool_to_additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Turn a boolean ``(B, L, L)`` "may attend" matrix into the additive ``(B, 1, L, L)`` float mask."""
    if not dtype.is_floating_point:
        raise TypeError(f"mask dtype must be floating point, got {dtype}")
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)


def segment_mask(
    segment_ids: torch.Tensor,
    causal: bool,
    dtype: torch.dtype = torch.float32,
    attend_earlier: bool = False,
    hide_last: bool = False,
) -> torch.Tensor:
    """Block-diagonal mask over packed item sentences.

    Token ``i`` may attend token ``j`` iff ``seg[i] == seg[j] >= 0`` (and ``j <= i`` when ``causal``). Padding tokens
    carry ``seg == -1`` and attend only themselves; no real token attends padding.

    With ``attend_earlier=True`` (the "context masking off" ablation) token ``i`` also attends every real token
    ``j < i`` of an earlier segment (``0 <= seg[j] < seg[i]``) in the same row. Segment ids are assumed to increase
    along a row, as :func:`darec.modules.text.pack_items` produces them.

    With ``hide_last=True`` the last token of every segment (the item's ``[ALIGN]``) is attended by no other
    token: it reads its item, and the item's text tokens compute exactly what they would without it.
    """
    if segment_ids.dim() != 2:
        raise ValueError(f"segment_ids must be [B, L], got shape {tuple(segment_ids.shape)}")
    seg = segment_ids.long()
    length = seg.shape[1]
    idx = torch.arange(length, device=seg.device)
    q_seg = seg[:, :, None]
    k_seg = seg[:, None, :]
    real_q = q_seg >= 0
    allowed = (q_seg == k_seg) & real_q
    if causal:
        allowed &= (idx[None, :] <= idx[:, None])[None]
    if attend_earlier:
        earlier = (k_seg >= 0) & (k_seg < q_seg) & (idx[None, :] < idx[:, None])[None]
        allowed |= earlier & real_q
    eye = torch.eye(length, dtype=torch.bool, device=seg.device)[None]
    if hide_last:
        nxt = torch.cat([seg[:, 1:], seg.new_full((seg.shape[0], 1), -1)], 1)
        last = (seg >= 0) & (nxt != seg)
        allowed &= ~last[:, None, :] | eye
    allowed |= eye & ~real_q
    return bool_to_additive(allowed, dtype)


def item_causal_mask(item_positions_valid: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Causal mask over one-position-per-item sequences (left or right padding allowed).

    Position ``i`` attends ``j`` iff ``j <= i`` and ``j`` is valid; a padding position attends only itself.
    """
    if item_positions_valid.dim() != 2:
        raise ValueError(f"item_positions_valid must be [B, L], got shape {tuple(item_positions_valid.shape)}")
    valid = item_positions_valid.bool()
    length = valid.shape[1]
    idx = torch.arange(length, device=valid.device)
    causal = (idx[None, :] <= idx[:, None])[None]
    allowed = causal & valid[:, None, :] & valid[:, :, None]
    eye = torch.eye(length, dtype=torch.bool, device=valid.device)[None]
    allowed |= eye & ~valid[:, :, None]
    return bool_to_additive(allowed, dtype)


def position_ids_from_segments(segment_ids: torch.Tensor) -> torch.Tensor:
    """Position ids restarting at 0 at the first token of every segment; padding (``seg < 0``) gets 0.

    Segments must be contiguous runs within a row.
    """
    seg = segment_ids.long()
    length = seg.shape[1]
    idx = torch.arange(length, device=seg.device).expand_as(seg)
    starts = torch.ones_like(seg, dtype=torch.bool)
    starts[:, 1:] = seg[:, 1:] != seg[:, :-1]
    start_idx = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    pos = idx - start_idx
    return pos.masked_fill(seg < 0, 0)
