"""Hard-negative mining for the "distinguish hard samples" task.

A hard negative of item ``i`` is an item whose vector is close to ``i``'s (frozen mean-pooled
backbone text vectors, or exported CF vectors) but which never co-occurs with ``i`` within
``±window`` positions in any *training* history. Items whose sentence equals ``i``'s are excluded.
Mining reads training sequences only, so validation and test interactions cannot leak into it.

Results are cached outside the prepared directory, keyed by (dataset fingerprint, vector hash, k).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from darec.atomic import atomic_path

log = logging.getLogger(__name__)


@dataclass
class HardNegatives:
    """``negatives[i]`` holds up to ``k`` hard negatives of item ``i`` (0 pads missing ones)."""

    negatives: torch.Tensor  # long [num_items + 1, k]
    share_without: float  # share of catalogue items left with no hard negative
    share_targets_without: float  # the same, weighted by training-target frequency

    @property
    def k(self) -> int:
        return self.negatives.shape[1]


def vector_hash(vectors: torch.Tensor) -> str:
    """sha256 of a vector table (float32 little-endian bytes and shape)."""
    arr = np.ascontiguousarray(vectors.detach().cpu().float().numpy(), dtype="<f4")
    h = hashlib.sha256(str(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def cooccurrence_keys(seqs: list[np.ndarray], num_items: int, window: int = 5) -> np.ndarray:
    """Sorted unique keys ``i * (num_items + 1) + j`` of items within ``±window`` in one sequence."""
    base = num_items + 1
    parts = []
    for s in seqs:
        s = np.asarray(s, dtype=np.int64)
        for d in range(1, window + 1):
            if len(s) > d:
                a, b = s[:-d], s[d:]
                parts.append(a * base + b)
                parts.append(b * base + a)
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate(parts))


def mine_hard_negatives(
    vectors: torch.Tensor,
    train_seqs: list[np.ndarray],
    sentences: list[str],
    num_items: int,
    k: int = 10,
    window: int = 5,
    chunk_size: int = 1024,
) -> HardNegatives:
    """Mine ``k`` hard negatives for every catalogue item ``1..num_items``.

    Args:
        vectors: [>= num_items + 1, d] item vectors (row = item id; row 0 ignored).
        train_seqs: each user's training sequence (validation/test items must not be in them).
        sentences: item sentences by id; identical sentences are never each other's negatives.
        num_items: catalogue size.
        k: negatives per item.
        window: co-occurrence window in positions.
    """
    base = num_items + 1
    v = torch.nn.functional.normalize(vectors[:base].detach().float().cpu(), dim=-1)
    keys = cooccurrence_keys(train_seqs, num_items, window)
    text_groups: dict[str, list[int]] = {}
    for i in range(1, base):
        text_groups.setdefault(sentences[i], []).append(i)
    dup_pairs = [(a, b) for g in text_groups.values() if len(g) > 1 for a in g for b in g if a != b]
    if dup_pairs:
        dk = np.array([a * base + b for a, b in dup_pairs], dtype=np.int64)
        keys = np.union1d(keys, dk)
    out = torch.zeros(base, k, dtype=torch.long)
    for lo in range(1, base, chunk_size):
        hi = min(base, lo + chunk_size)
        sim = v[lo:hi] @ v.T
        sim[:, 0] = float("-inf")
        rows = torch.arange(lo, hi)
        sim[rows - lo, rows] = float("-inf")
        left, right = np.searchsorted(keys, [lo * base, hi * base])
        blk = keys[left:right]
        if len(blk):
            sim[torch.from_numpy(blk // base - lo), torch.from_numpy(blk % base)] = float("-inf")
        kk = min(k, base - 1)
        val, idx = torch.topk(sim, kk, dim=1)
        idx[~torch.isfinite(val)] = 0
        out[lo:hi, :kk] = idx
    has = (out[1:] > 0).any(1)
    counts = np.bincount(np.concatenate(train_seqs) if train_seqs else np.zeros(0, np.int64), minlength=base)[1:base]
    share = float(1.0 - has.float().mean()) if num_items else 0.0
    tot = counts.sum()
    share_t = float(counts[~has.numpy()].sum() / tot) if tot else 0.0
    log.info("hard negatives: k=%d, %.1f%% of items (%.1f%% of training targets) have none", k, 100 * share, 100 * share_t)
    return HardNegatives(out, share, share_t)


def cached_hard_negatives(
    cache_dir: str | os.PathLike,
    fingerprint: str,
    vectors: torch.Tensor | Callable[[], torch.Tensor],
    train_seqs: list[np.ndarray],
    sentences: list[str],
    num_items: int,
    k: int = 10,
    window: int = 5,
    source_key: str | None = None,
) -> HardNegatives:
    """:func:`mine_hard_negatives` with an on-disk cache keyed by (fingerprint, vector source, k, window).

    ``vectors`` may be a function that computes them: with ``source_key`` (a hash that identifies what the vectors
    are computed from, e.g. the backbone's weights and the item texts) a cache hit never calls it. Without
    ``source_key`` the key is the hash of the vectors themselves.
    """
    if source_key is None:
        vectors = vectors() if callable(vectors) else vectors
        source_key = vector_hash(vectors)
    key = f"{fingerprint[:16]}-{source_key[:16]}-k{k}-w{window}"
    path = Path(cache_dir) / f"hardneg-{key}.pt"
    if path.is_file():
        blob = torch.load(path, weights_only=True)
        return HardNegatives(blob["negatives"], float(blob["share_without"]), float(blob["share_targets_without"]))
    vectors = vectors() if callable(vectors) else vectors
    hn = mine_hard_negatives(vectors, train_seqs, sentences, num_items, k, window)
    with atomic_path(path) as tmp:
        torch.save(
            {
                "negatives": hn.negatives,
                "share_without": torch.tensor(hn.share_without),
                "share_targets_without": torch.tensor(hn.share_targets_without),
            },
            tmp,
        )
    return hn
