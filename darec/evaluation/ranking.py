"""Chunked full-catalogue scoring: exact target ranks and top-K, in memory bounded by one score chunk.

Both walk item ids ``1..num_items`` in chunks of ``chunk_size``; ``score_chunk(lo, hi)`` returns the
``[B, hi-lo]`` scores of ids ``lo..hi-1``. Each chunk is read by a few passes that allocate at most
one ``[B, chunk]`` boolean. History masking is a *correction*: rather than writing into the chunk,
the history columns are gathered and their contribution is taken back. Non-finite scores are
detected by one sum per chunk (finite iff every score is finite, barring overflow); only a chunk
whose sum is not finite is inspected item by item. The rules (ties against the target, history
masked, target never masked, non-finite unmasked scores raise) are in :mod:`darec.evaluation`.

Chunks of about 1-4M scores (for example 1024 users x 2048 items) stay in the CPU cache between the
matmul that writes them and the passes that read them.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from darec.errors import EvaluationError

ScoreChunkFn = Callable[[int, int], Tensor]


def check_targets(targets: Tensor, history: Tensor | None, num_items: int) -> None:
    if targets.dim() != 1 or targets.dtype.is_floating_point:
        raise EvaluationError(f"targets must be a 1-D integer tensor, got {tuple(targets.shape)}")
    if targets.numel() and (int(targets.min()) < 1 or int(targets.max()) > num_items):
        raise EvaluationError(f"target ids must lie in [1, {num_items}]")
    _check_history(history, targets.shape[0], num_items)


def _check_history(history: Tensor | None, batch: int, num_items: int) -> None:
    if history is None:
        return
    if history.dim() != 2 or history.shape[0] != batch or history.dtype.is_floating_point:
        raise EvaluationError(f"history must be an integer [B, L] tensor with B={batch}, got {tuple(history.shape)}")
    if history.numel() and (int(history.min()) < 0 or int(history.max()) > num_items):
        raise EvaluationError(f"history ids must lie in [0, {num_items}] (0 = padding)")


def _columns(ids: Tensor, lo: int, hi: int) -> Tensor:
    """Boolean ``[B, hi-lo]`` with True where a row's ids (any shape ``[B, L]``) fall in ``[lo, hi)``."""
    w = hi - lo
    idx = torch.where((ids >= lo) & (ids < hi), ids - lo, torch.full_like(ids, w))
    out = torch.zeros(ids.shape[0], w + 1, dtype=torch.bool, device=ids.device)
    return out.scatter_(1, idx, True)[:, :w]


def _chunk(score_chunk: ScoreChunkFn, lo: int, hi: int, batch: int) -> Tensor:
    s = score_chunk(lo, hi)
    if s.shape != (batch, hi - lo):
        raise EvaluationError(f"score_chunk({lo}, {hi}) returned {tuple(s.shape)}, expected {(batch, hi - lo)}")
    return s


def raise_non_finite(bad: Tensor) -> None:
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise EvaluationError(
            f"non-finite score on an unmasked item in {len(rows)} of {bad.numel()} rows (first: row {rows[0]})"
        )


def _all_finite(s: Tensor) -> bool:
    """One sum: finite iff every score is finite, unless finite scores overflow it (then False, harmlessly)."""
    return bool(torch.isfinite(s.sum()))


def _unmasked_rows(bad_scores: Tensor, lo: int, hi: int, masked_ids: Tensor | None) -> Tensor:
    """Per row: is any of the flagged scores ``bad_scores`` [B, hi-lo] outside ``masked_ids``?"""
    if masked_ids is not None:
        bad_scores &= ~_columns(masked_ids, lo, hi)
    return bad_scores.any(1)


def _unmasked_non_finite(s: Tensor, lo: int, hi: int, masked_ids: Tensor | None, all_finite: bool) -> Tensor:
    """Per row: does the chunk hold a non-finite score outside ``masked_ids``? Free when ``all_finite``."""
    if all_finite:
        return torch.zeros(s.shape[0], dtype=torch.bool, device=s.device)
    return _unmasked_rows(~torch.isfinite(s), lo, hi, masked_ids)


def _nan_or_inf(x: Tensor) -> bool:
    return bool((torch.isnan(x) | torch.isposinf(x)).any())


class _ByChunk:
    """The (row, id) pairs of ``ids`` [B, L] (0 = none) grouped by chunk, to read one chunk's entries."""

    def __init__(self, ids: Tensor, chunk_size: int, num_items: int) -> None:
        rows, cols = (ids > 0).nonzero(as_tuple=True)
        values = ids[rows, cols] - 1
        chunk = values // chunk_size
        order = torch.argsort(chunk, stable=True)
        self.rows, self.cols, chunk = rows[order], (values % chunk_size)[order], chunk[order]
        n_chunks = (num_items + chunk_size - 1) // chunk_size
        counts = torch.bincount(chunk, minlength=n_chunks).tolist() if chunk.numel() else [0] * n_chunks
        self.offsets = [0]
        for c in counts:
            self.offsets.append(self.offsets[-1] + c)
        self.chunk_size = chunk_size

    def entries(self, lo: int) -> tuple[Tensor, Tensor]:
        """Rows and in-chunk columns of the entries whose id lies in the chunk starting at ``lo``."""
        c = (lo - 1) // self.chunk_size
        a, b = self.offsets[c], self.offsets[c + 1]
        return self.rows[a:b], self.cols[a:b]

    def max_per_row(self, lo: int, batch: int) -> int:
        rows, _ = self.entries(lo)
        return int(torch.bincount(rows, minlength=batch).max()) if rows.numel() else 0


class _AtOrAbove:
    """Per row, ``#(s >= t)`` in a chunk. NaN never counts.

    The comparison is written as 0/1 into a reused float buffer and summed as floats (exact below
    2**24 per row, hence float64 for wider chunks): on CPUs this is several times faster than
    summing a boolean tensor.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple, Tensor] = {}

    def __call__(self, s: Tensor, t: Tensor) -> Tensor:
        dtype = torch.float32 if s.shape[1] < 2**24 else torch.float64
        key = (tuple(s.shape), dtype, s.device)
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = torch.empty(s.shape, dtype=dtype, device=s.device)
        return torch.ge(s, t, out=buf).sum(1).long()


def _distinct_history(history: Tensor | None, targets: Tensor) -> Tensor | None:
    """History with repeats and the target itself replaced by 0, so each masked item is taken back once."""
    if history is None:
        return None
    h = history.sort(1).values
    repeat = torch.zeros_like(h, dtype=torch.bool)
    repeat[:, 1:] = h[:, 1:] == h[:, :-1]
    return h.masked_fill(repeat | (h == targets[:, None]), 0)


def _target_scores_from_chunks(score_chunk: ScoreChunkFn, num_items: int, targets: Tensor, chunk_size: int,
                               cached: dict[int, Tensor]) -> Tensor:
    """Read each target's score from the chunk that holds it (cached when the catalogue is one chunk)."""
    batch = targets.shape[0]
    if num_items <= chunk_size:
        cached[1] = _chunk(score_chunk, 1, num_items + 1, batch)
    out: Tensor | None = None
    for c in ((targets - 1) // chunk_size).unique().tolist():
        lo = 1 + c * chunk_size
        hi = min(lo + chunk_size, num_items + 1)
        s = cached.get(lo)
        s = _chunk(score_chunk, lo, hi, batch) if s is None else s
        inside = (targets >= lo) & (targets < hi)
        col = torch.where(inside, targets - lo, torch.zeros_like(targets))
        t = s.gather(1, col[:, None]).squeeze(1)
        out = t if out is None else torch.where(inside, t, out)
    return out if out is not None else torch.zeros(batch, device=targets.device)


def chunked_target_ranks(
    score_chunk: ScoreChunkFn,
    num_items: int,
    targets: Tensor,
    history: Tensor | None,
    target_scores: Tensor | None = None,
    chunk_size: int = 4096,
) -> Tensor:
    """0-based full-ranking target ranks, scoring item ids ``[lo, hi)`` one chunk at a time.

    ``score_chunk(lo, hi)`` returns ``[B, hi-lo]`` scores for item ids ``lo..hi-1`` (ids start at 1).
    Peak memory is ~``B * chunk_size``. Without ``target_scores``, the target scores are read from
    the chunks that hold the targets (one extra pass over those chunks, none when the catalogue fits
    in one chunk). Per chunk, every score ``>= t`` is counted, then the distinct history items and the
    target are gathered and those scoring ``>= t`` are taken back. So the target never counts against
    itself, even when ``target_scores`` differ from the chunk scores by float rounding.
    """
    if chunk_size < 1:
        raise EvaluationError(f"chunk_size must be >= 1, got {chunk_size}")
    check_targets(targets, history, num_items)
    batch, device = targets.shape[0], targets.device
    targets = targets.long()
    history = None if history is None else history.long()
    cached: dict[int, Tensor] = {}
    if target_scores is None:
        target_scores = _target_scores_from_chunks(score_chunk, num_items, targets, chunk_size, cached)
    elif target_scores.shape != (batch,):
        raise EvaluationError(f"target_scores shape {tuple(target_scores.shape)} != ({batch},)")
    t = target_scores[:, None]
    bad = ~torch.isfinite(target_scores)
    hist = _distinct_history(history, targets)
    taken_back = targets[:, None] if hist is None else torch.cat([hist, targets[:, None]], 1)
    by_chunk = _ByChunk(taken_back, chunk_size, num_items)
    masked = None if hist is None else hist  # never the target: _distinct_history zeroed it
    ranks = torch.zeros(batch, dtype=torch.long, device=device)
    counter = _AtOrAbove()
    for lo in range(1, num_items + 1, chunk_size):
        hi = min(lo + chunk_size, num_items + 1)
        s = cached.pop(lo, None)
        s = _chunk(score_chunk, lo, hi, batch) if s is None else s
        ranks += counter(s, t)
        rows, cols = by_chunk.entries(lo)
        ranks.index_add_(0, rows, (s[rows, cols] >= target_scores[rows]).long(), alpha=-1)
        bad |= _unmasked_non_finite(s, lo, hi, masked, _all_finite(s))
    raise_non_finite(bad)
    return ranks


def dot_product_ranks(
    user_vecs: Tensor,
    item_vecs: Tensor,
    targets: Tensor,
    history: Tensor | None,
    chunk_size: int = 4096,
    item_bias: Tensor | None = None,
) -> Tensor:
    """Chunked ranks for ``score = user_vecs @ item_vecs.T (+ item_bias)``; ``item_vecs`` row 0 is padding.

    The target scores are row-wise dot products, computed once.
    """
    if user_vecs.dim() != 2 or item_vecs.dim() != 2 or user_vecs.shape[1] != item_vecs.shape[1]:
        raise EvaluationError(f"user_vecs {tuple(user_vecs.shape)} and item_vecs {tuple(item_vecs.shape)} mismatch")
    if item_bias is not None and item_bias.shape != (item_vecs.shape[0],):
        raise EvaluationError(f"item_bias must have shape ({item_vecs.shape[0]},), got {tuple(item_bias.shape)}")

    def score_chunk(lo: int, hi: int) -> Tensor:
        s = user_vecs @ item_vecs[lo:hi].T
        return s if item_bias is None else s.add_(item_bias[lo:hi])

    check_targets(targets, history, item_vecs.shape[0] - 1)
    target_scores = (user_vecs * item_vecs[targets.long()]).sum(-1)
    if item_bias is not None:
        target_scores = target_scores + item_bias[targets.long()]
    return chunked_target_ranks(
        score_chunk, item_vecs.shape[0] - 1, targets, history, target_scores=target_scores, chunk_size=chunk_size
    )


def _in_sorted_rows(sorted_rows: Tensor, ids: Tensor) -> Tensor:
    """Per row, is each of ``ids`` [B, M] present in that row of ``sorted_rows`` [B, L]?"""
    if sorted_rows.shape[1] == 0:
        return torch.zeros_like(ids, dtype=torch.bool)
    pos = torch.searchsorted(sorted_rows, ids).clamp(max=sorted_rows.shape[1] - 1)
    return sorted_rows.gather(1, pos) == ids


def _best_first(scores: Tensor, ids: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The first ``k`` columns by score descending, ties by id ascending."""
    ids, order = ids.sort(dim=1, stable=True)
    scores, order = scores.gather(1, order).sort(dim=1, descending=True, stable=True)
    return scores[:, :k], ids.gather(1, order)[:, :k]


def _at_or_above(s: Tensor, thr: Tensor, block: int = 64) -> tuple[Tensor, Tensor, bool]:
    """Coordinates (row-major order) of the scores ``>= thr`` per row in chunk ``s``, and whether the
    chunk is free of NaN and +inf.

    The maximum of each block of ``block`` columns is taken first (a fast float reduction), and only
    blocks whose maximum reaches the threshold are compared item by item. The block maxima also
    reveal NaN and +inf (a maximum propagates both); since a NaN hides its block's other scores,
    such a chunk is compared directly.
    """
    batch, width = s.shape
    n_blocks = width // block if s.stride(1) == 1 else 0
    if n_blocks:
        blocks = s.as_strided((batch, n_blocks, block), (s.stride(0), block, 1))
        b_max = blocks.amax(2)
        tail = n_blocks * block
        if not _nan_or_inf(b_max) and not _nan_or_inf(s[:, tail:]):
            b_rows, b_idx = (b_max >= thr[:, None]).nonzero(as_tuple=True)
            if s.is_contiguous() and tail == width:  # one flat row per block: index_select beats 2-D indexing
                picked = s.view(batch * n_blocks, block).index_select(0, b_rows * n_blocks + b_idx)
            else:
                picked = blocks[b_rows, b_idx]
            hit_at, in_block = (picked >= thr.index_select(0, b_rows)[:, None]).nonzero(as_tuple=True)
            rows, cols = b_rows[hit_at], b_idx[hit_at] * block + in_block
            if tail < width:
                t_rows, t_cols = (s[:, tail:] >= thr[:, None]).nonzero(as_tuple=True)
                rows, cols = torch.cat([rows, t_rows]), torch.cat([cols, t_cols + tail])
                order = torch.argsort(rows, stable=True)
                rows, cols = rows[order], cols[order]
            return rows, cols, True
    rows, cols = (s >= thr[:, None]).nonzero(as_tuple=True)
    return rows, cols, not _nan_or_inf(s)


class _RunningTopK:
    """Per row, the best ``k`` (score, id) so far; candidates are queued and merged in batches."""

    def __init__(self, batch: int, k: int, sentinel: int, hist: Tensor, dtype: torch.dtype, device: torch.device,
                 pending_cap: int) -> None:
        self.k, self.sentinel, self.hist, self.cap = k, sentinel, hist, max(pending_cap, 1)
        self.scores = torch.full((batch, k), float("-inf"), dtype=dtype, device=device)  # -inf + sentinel: empty
        self.items = torch.full((batch, k), sentinel, dtype=torch.long, device=device)
        self.pending: list[tuple[Tensor, Tensor, Tensor]] = []
        self.n_pending = 0

    def threshold(self) -> Tensor:
        return self.scores[:, -1]

    def add(self, rows: Tensor, ids: Tensor, scores: Tensor) -> None:
        if rows.numel():
            self.pending.append((rows, ids, scores))
            self.n_pending += rows.numel()

    def pending_full(self) -> bool:
        return self.n_pending >= self.cap

    def merge(self) -> None:
        """Drop queued history items and merge the rest into the best ``k`` of their rows."""
        if not self.pending:
            return
        rows, ids, scores = (torch.cat(x) for x in zip(*self.pending))
        self.pending, self.n_pending = [], 0
        keep = ~_in_sorted_rows(self.hist[rows], ids[:, None]).squeeze(1)
        rows, ids, scores = rows[keep], ids[keep], scores[keep]
        if rows.numel() == 0:
            return
        rows, order = rows.sort(stable=True)
        ids, scores = ids[order], scores[order]
        touched, counts = torch.unique_consecutive(rows, return_counts=True)
        slot = torch.repeat_interleave(torch.arange(touched.numel(), device=rows.device), counts)
        pos = torch.arange(rows.numel(), device=rows.device) - (torch.cumsum(counts, 0) - counts)[slot]
        shape = (touched.numel(), int(counts.max()))
        cand_s = torch.full(shape, float("-inf"), dtype=scores.dtype, device=rows.device)
        cand_i = torch.full(shape, self.sentinel, dtype=torch.long, device=rows.device)
        cand_s[slot, pos], cand_i[slot, pos] = scores, ids
        merged = _best_first(torch.cat([self.scores[touched], cand_s], 1), torch.cat([self.items[touched], cand_i], 1), self.k)
        self.scores[touched], self.items[touched] = merged

    def ids(self) -> Tensor:
        """``[B, k]`` item ids, best first; 0 where a row has fewer than ``k`` unmasked items."""
        return self.items.masked_fill(self.items == self.sentinel, 0)


def chunked_topk(
    score_chunk: ScoreChunkFn, num_items: int, history: Tensor, k: int, chunk_size: int = 4096
) -> Tensor:
    """Top-``k`` item ids ``[B, min(k, num_items)]`` over ``1..num_items``, best first, history masked.

    Ties go to the lower item id, so the result is exact and deterministic. A row with fewer than
    ``k`` unmasked items is padded with id 0. A NaN or +inf unmasked score raises
    :class:`EvaluationError`; -inf is allowed (a model may use it to exclude items: such an item
    comes after every finite one).

    Each row keeps its running best ``k`` (score, id) and their ``k``-th score as a threshold. In a
    chunk only the items scoring at or above the threshold are candidates (found through per-block
    maxima, see :func:`_at_or_above`); while a row has no threshold yet, one ``topk`` of ``k`` plus
    the chunk's history count gives it one. Candidates are queued and merged (history items dropped)
    after chunks 1, 2, 4, 8, ... and the last, or when the queue reaches a quarter of a chunk, so the
    threshold lags a little but the merge runs only ~log2(#chunks) times.
    """
    if chunk_size < 1 or k < 1:
        raise EvaluationError(f"chunk_size and k must be >= 1, got {chunk_size} and {k}")
    batch = history.shape[0]
    _check_history(history, batch, num_items)
    device, kk = history.device, min(k, num_items)
    hist = history.long().sort(1).values
    by_chunk = _ByChunk(hist, chunk_size, num_items)
    top: _RunningTopK | None = None
    bad = torch.zeros(batch, dtype=torch.bool, device=device)
    starts = range(1, num_items + 1, chunk_size)
    merge_at = 1  # merge after chunks 1, 2, 4, 8, ...: the threshold lags, candidates stay few
    for n, lo in enumerate(starts, start=1):
        hi = min(lo + chunk_size, num_items + 1)
        s = _chunk(score_chunk, lo, hi, batch)
        top = top or _RunningTopK(batch, kk, num_items + 1, hist, s.dtype, device, pending_cap=batch * chunk_size // 4)
        thr = top.threshold()
        need = thr == float("-inf")
        if bool(need.any()):
            m = by_chunk.max_per_row(lo, batch)
            chunk_top = torch.topk(s, min(hi - lo, kk + m), dim=1, sorted=False).values
            thr = torch.where(need, torch.where(torch.isnan(chunk_top), float("inf"), chunk_top).amin(1), thr)
        rows, cols, clean = _at_or_above(s, thr)
        if not clean:
            bad |= _unmasked_rows(torch.isnan(s) | torch.isposinf(s), lo, hi, hist)
        top.add(rows, cols + lo, s[rows, cols])
        if n == merge_at or n == len(starts) or top.pending_full():
            top.merge()
            merge_at = merge_at * 2 if n == merge_at else merge_at
    raise_non_finite(bad)
    assert top is not None
    return top.ids()

