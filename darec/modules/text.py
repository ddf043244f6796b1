"""Item text: tokenising sentences once (cached with HF ``datasets``) and packing them into dense rows.

An item is its sentence's tokens followed by the backbone's ``[ALIGN]`` id. With ``framing=True`` the sentence
tokens carry the tokenizer's own framing (``[CLS] … [SEP]`` for BERT-family models, BOS for LLaMA-family ones),
as the backbone saw text in pretraining; with ``framing=False`` they are the bare word pieces. Either way the
same item has the same tokens whether it is encoded alone (:func:`pad_items`) or packed with others
(:func:`pack_items`), which makes packed == unpacked hold under context masking.

This module does not import ``darec.modules``; the ``[ALIGN]`` id is passed in.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, fields
from typing import Any

import torch

from darec.errors import ConfigError

__all__ = [
    "PackedBatch",
    "tokenize_sentences",
    "pack_items",
    "pad_items",
    "items_per_row",
    "mean_items_per_row",
    "tokens_cache_key",
]


@dataclass
class PackedBatch:
    """Item sentences laid out in rows, each item's tokens followed by its ``[ALIGN]`` token.

    Attributes:
        input_ids: ``[R, L]`` token ids, padding 0.
        segment_ids: ``[R, L]``; ``-1`` on padding, ``0, 1, 2, ...`` for the items of a row in order.
        position_ids: ``[R, L]``; restart at 0 for every item, 0 on padding.
        align_index: ``[n_items, 2]`` (row, column) of each item's ``[ALIGN]`` token, in the order of ``item_ids``.
        item_ids: ``[n_items]`` the item ids given.
        n_truncated: items whose sentence was cut to fit a row.
    """

    input_ids: torch.Tensor
    segment_ids: torch.Tensor
    position_ids: torch.Tensor
    align_index: torch.Tensor
    item_ids: torch.Tensor
    n_truncated: int = 0

    @property
    def num_rows(self) -> int:
        """Number of rows ``R``."""
        return int(self.input_ids.shape[0])

    @property
    def num_items(self) -> int:
        """Number of items."""
        return int(self.item_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens, ``[ALIGN]`` included."""
        return int((self.segment_ids >= 0).sum())

    def to(self, device: torch.device | str) -> "PackedBatch":
        """A copy with every tensor on ``device``."""
        moved = {
            f.name: (v.to(device) if isinstance(v := getattr(self, f.name), torch.Tensor) else v) for f in fields(self)
        }
        return PackedBatch(**moved)


def tokens_cache_key(text_hash: str, tokenizer_name: str, max_tokens: int, framing: bool = False) -> str:
    """Cache key of tokenised sentences: sha256 of (text hash, tokenizer name or path, max_tokens, framing)."""
    extra = "\x00framed" if framing else ""
    return hashlib.sha256(f"{text_hash}\x00{tokenizer_name}\x00{max_tokens}{extra}".encode()).hexdigest()[:32]


def tokenize_sentences(
    sentences: list[str],
    tokenizer: Any,
    max_tokens: int = 64,
    cache_dir: str | None = None,
    text_hash: str | None = None,
    framing: bool = False,
) -> list[list[int]]:
    """Token ids of each sentence, truncated to ``max_tokens`` (framing tokens included when ``framing``).

    Runs once through ``datasets.Dataset.from_dict(...).map(batched=True)``. With ``cache_dir`` and ``text_hash``
    the result is saved under ``cache_dir/tokens-<key>`` (key from :func:`tokens_cache_key`) and reloaded from there.
    """
    if max_tokens < 1:
        raise ConfigError(f"max_tokens must be positive, got {max_tokens}")
    from datasets import Dataset, load_from_disk

    path = None
    if cache_dir is not None and text_hash is not None:
        name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
        path = os.path.join(cache_dir, f"tokens-{tokens_cache_key(text_hash, name, max_tokens, framing)}")
        if os.path.isdir(path):
            cached = load_from_disk(path)
            if len(cached) == len(sentences):
                return [list(ids) for ids in cached["input_ids"]]

    def _tok(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        enc = tokenizer(batch["text"], add_special_tokens=framing, truncation=True, max_length=max_tokens)
        return {"input_ids": enc["input_ids"]}

    from datasets.utils import logging as ds_logging

    bars = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        ds = Dataset.from_dict({"text": list(sentences)})
        ds = ds.map(_tok, batched=True, batch_size=1000, remove_columns=["text"])
    finally:
        if bars:
            ds_logging.enable_progress_bar()
    if path is not None:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        ds.save_to_disk(tmp)
        try:
            os.replace(tmp, path)
        except OSError:  # another process (a DDP rank) renamed its equal copy into place first
            shutil.rmtree(tmp, ignore_errors=True)
    return [list(ids) for ids in ds["input_ids"]]


def _check(token_lists: list[list[int]], item_ids: list[int], length: int) -> None:
    if len(token_lists) != len(item_ids):
        raise ValueError(f"{len(token_lists)} token lists for {len(item_ids)} item ids")
    if length < 2:
        raise ConfigError(f"row length must be at least 2 (one token plus [ALIGN]), got {length}")


def layout_rows(rows: list[list[tuple[int, list[int]]]], n_items: int, width: int, align_id: int) -> tuple:
    """Tensors ``(input_ids, segment_ids, position_ids, align_index)`` for rows of ``(item index, tokens)``.

    Each item's tokens are followed by ``align_id``; segments number the items of a row from 0 and
    positions restart per item. ``align_index[k]`` is the (row, column) of item ``k``'s ``[ALIGN]``.
    """
    n_rows = len(rows)
    input_ids = torch.zeros(n_rows, width, dtype=torch.long)
    segment_ids = torch.full((n_rows, width), -1, dtype=torch.long)
    position_ids = torch.zeros(n_rows, width, dtype=torch.long)
    align_index = torch.zeros(n_items, 2, dtype=torch.long)
    for r, row in enumerate(rows):
        col = 0
        for seg, (k, toks) in enumerate(row):
            n = len(toks) + 1
            input_ids[r, col : col + n - 1] = torch.tensor(toks, dtype=torch.long)
            input_ids[r, col + n - 1] = align_id
            segment_ids[r, col : col + n] = seg
            position_ids[r, col : col + n] = torch.arange(n)
            align_index[k, 0] = r
            align_index[k, 1] = col + n - 1
            col += n
    return input_ids, segment_ids, position_ids, align_index


def pack_items(
    token_lists: list[list[int]], item_ids: list[int], align_id: int, pack_len: int = 128
) -> PackedBatch:
    """Pack items (tokens + ``[ALIGN]``) first-fit, in the given order, into rows of ``pack_len`` tokens.

    Sentences longer than ``pack_len - 1`` tokens are truncated and counted in ``n_truncated``.
    """
    _check(token_lists, item_ids, pack_len)
    rows: list[list[tuple[int, list[int]]]] = []
    free: list[int] = []
    n_truncated = 0
    for k, toks in enumerate(token_lists):
        if len(toks) > pack_len - 1:
            toks = toks[: pack_len - 1]
            n_truncated += 1
        need = len(toks) + 1
        for r, room in enumerate(free):
            if room >= need:
                break
        else:
            rows.append([])
            free.append(pack_len)
            r = len(rows) - 1
        rows[r].append((k, list(toks)))
        free[r] -= need
    tensors = layout_rows(rows, len(token_lists), pack_len, align_id)
    return PackedBatch(*tensors, item_ids=torch.as_tensor(list(item_ids), dtype=torch.long), n_truncated=n_truncated)


def pad_items(
    token_lists: list[list[int]], item_ids: list[int], align_id: int, pad_len: int | None = None
) -> PackedBatch:
    """One item per row (the unpacked reference layout), padded to ``pad_len`` or else to the longest item.

    With ``pad_len`` given, sentences longer than ``pad_len - 1`` tokens are truncated and counted.
    """
    width = pad_len if pad_len is not None else max((len(t) for t in token_lists), default=0) + 1
    _check(token_lists, item_ids, max(width, 2))
    rows = []
    n_truncated = 0
    for k, toks in enumerate(token_lists):
        if len(toks) > width - 1:
            toks = toks[: width - 1]
            n_truncated += 1
        rows.append([(k, list(toks))])
    tensors = layout_rows(rows, len(token_lists), width, align_id)
    return PackedBatch(*tensors, item_ids=torch.as_tensor(list(item_ids), dtype=torch.long), n_truncated=n_truncated)


def items_per_row(packed: PackedBatch) -> float:
    """Mean number of items per row of a packed batch."""
    return packed.num_items / max(packed.num_rows, 1)


def mean_items_per_row(
    sentences: list[str], tokenizer: Any, pack_len: int = 128, max_tokens: int = 64, align_id: int | None = None
) -> float:
    """Tokenise ``sentences`` and pack them all; the mean items per row (packing density check)."""
    token_lists = tokenize_sentences(sentences, tokenizer, max_tokens=max_tokens)
    align = align_id if align_id is not None else int(getattr(tokenizer, "vocab_size", 0) or 0)
    return items_per_row(pack_items(token_lists, list(range(len(sentences))), align, pack_len))
