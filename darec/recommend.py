"""Recommending from a trained DARec checkpoint, adding items without retraining, exporting item vectors.

A DARec checkpoint carries the item sentences and raw ids, so none of this needs the prepared
dataset. Items are scored as in evaluation: ``<W_o h, e_j>`` with ``e_j = W_p [s_j ; c_j]``.
Cold items (text, no training interaction) and items added later have ``c_j = 0``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from darec.data.pipeline import TextOptions, item_sentence
from darec.atomic import atomic_path, atomic_write_text
from darec.data.text import tokenize_sentences
from darec.errors import ConfigError, DataError


class Recommender:
    """Top-k recommendation for raw-id histories from a DARec model."""

    def __init__(self, model: Any):
        if not getattr(model, "_ready", False):
            raise ConfigError("the model has no item data attached; load it with Recommender.from_checkpoint")
        self.model = model.eval()
        self.raw_ids: list[str] = list(model.item_raw_ids)
        self.sentences: list[str] = list(model.item_sentences)
        self._index = {r: i for i, r in enumerate(self.raw_ids) if i > 0}
        self._table: torch.Tensor | None = None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> "Recommender":
        from darec.modules.darec import DARec

        if not Path(path).is_file():
            raise ConfigError(f"{path}: no such checkpoint")
        return cls(DARec.load_from_checkpoint(str(path), map_location="cpu"))

    @property
    def num_items(self) -> int:
        """Catalogue items (ids ``1..num_items``); cold and added items follow."""
        return self.model.num_items

    @property
    def num_total_items(self) -> int:
        return len(self.raw_ids) - 1

    def _title(self, i: int) -> str:
        first = self.sentences[i].split(";")[0]
        return first.split(":", 1)[1].strip() if first.startswith("title:") else first

    @torch.no_grad()
    def item_table(self) -> torch.Tensor:
        """``e_j`` for every known item (catalogue, cold, added), row 0 zero; cached until items change."""
        if self._table is None:
            m = self.model
            m.refresh_cache()
            n, total = self.num_items, self.num_total_items
            sem = m.sem_cache.float()
            if total > n:
                extra = m.encoder.encode(torch.arange(n + 1, total + 1)).float()
                sem = torch.cat([sem, extra], 0)
            self._sem = sem
            self._table = m.item_table(sem)
        return self._table

    def _ids(self, history: Sequence[str]) -> list[int]:
        missing = [h for h in history if str(h) not in self._index]
        if missing:
            raise DataError(f"unknown item id(s) in the history: {missing[:5]}")
        return [self._index[str(h)] for h in history]

    @torch.no_grad()
    def recommend(self, history: Sequence[str], k: int = 10, include_cold: bool = False) -> list[dict[str, Any]]:
        """The ``k`` best items for a user with this chronological ``history`` of raw item ids.

        History items are never recommended. ``include_cold`` also ranks items with text but no
        training interaction (and items added with :meth:`add_items`).
        """
        if k < 1:
            raise ConfigError(f"k must be positive, got {k}")
        ids = self._ids(history)
        table = self.item_table()
        m = self.model
        seq = torch.tensor([ids[-m.max_len :]]) if ids else torch.zeros(1, 1, dtype=torch.long)
        user = m.user_vectors(seq, self._sem)[0]
        limit = self.num_total_items if include_cold else self.num_items
        scores = table[: limit + 1] @ user
        scores[0] = float("-inf")
        scores[[i for i in ids if i <= limit]] = float("-inf")
        top = torch.topk(scores, min(k, int(torch.isfinite(scores).sum())))
        return [
            {"item": int(i), "raw_id": self.raw_ids[i], "title": self._title(int(i)), "score": float(s), "cold": int(i) > self.num_items}
            for s, i in zip(top.values, top.indices)
        ]

    def add_items(self, items: Sequence[dict[str, Any]], text: TextOptions | None = None) -> list[int]:
        """Add new items (dicts with ``item`` = raw id plus attributes) without retraining; returns their ids.

        Their sentences are built like prepared items' (``text`` defaults to title, year, genres when
        present, else all attributes), they get ``c_j = 0``, and :meth:`recommend` ranks them with
        ``include_cold=True``.
        """
        new_ids = []
        opts = text or TextOptions()
        for rec in items:
            rec = dict(rec)
            raw = str(rec.pop("item", "") or "")
            if not raw:
                raise DataError("every added item needs an 'item' raw id")
            if raw in self._index:
                raise DataError(f"item {raw!r} already exists")
            self.raw_ids.append(raw)
            self.sentences.append(item_sentence(rec, opts) or f"item: {raw}")
            self._index[raw] = len(self.raw_ids) - 1
            new_ids.append(len(self.raw_ids) - 1)
        m = self.model
        tokens = tokenize_sentences(self.sentences, m.backbone.tokenizer, m.max_item_tokens)
        m.encoder.set_tokens(tokens)
        self._table = None
        return new_ids


def export_item_vectors(ckpt: str | os.PathLike, out: str | os.PathLike, include_cold: bool = True) -> Path:
    """Write ``e_j`` (safetensors ``item_vectors [N+1, d]``) plus a JSON sidecar for a nearest-neighbour index."""
    from safetensors.torch import save_file

    rec = Recommender.from_checkpoint(ckpt)
    table = rec.item_table()
    n = rec.num_total_items if include_cold else rec.num_items
    out = Path(out)
    with atomic_path(out) as tmp:
        save_file({"item_vectors": table[: n + 1].contiguous()}, str(tmp))
    meta = {
        "format": "darec-item-vectors",
        "kind": "darec",
        "fingerprint": rec.model.data_fingerprint,
        "dim": int(table.shape[1]),
        "num_items": rec.num_items,
        "num_rows": n + 1,
        "item_raw_ids": rec.raw_ids[: n + 1],
        "score": "dot product with DARec user vectors (W_o h)",
        "checkpoint": str(ckpt),
    }
    atomic_write_text(out.with_suffix(".json"), json.dumps(meta, indent=1))
    return out


def recommend_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="darec recommend", description="Top-k items for a history of raw item ids.")
    p.add_argument("--ckpt", required=True, help="a DARec checkpoint")
    p.add_argument("--history", required=True, help='comma-separated raw item ids, oldest first, e.g. "1,50,181"')
    p.add_argument("--k", type=int, default=10, help="how many items")
    p.add_argument("--include-cold", action="store_true", help="also rank items with text but no training interaction")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rec = Recommender.from_checkpoint(a.ckpt)
    out = rec.recommend([h.strip() for h in a.history.split(",") if h.strip()], a.k, a.include_cold)
    if a.json:
        print(json.dumps(out))
    else:
        for r, o in enumerate(out, 1):
            print(f"{r:>3}  {o['raw_id']:>8}  {o['score']:8.3f}  {o['title']}{'  (cold)' if o['cold'] else ''}")
    return 0


def export_item_vectors_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="darec export-item-vectors", description=export_item_vectors.__doc__)
    p.add_argument("--ckpt", required=True, help="a DARec checkpoint")
    p.add_argument("--out", required=True, help="output .safetensors (a .json sidecar is written beside it)")
    p.add_argument("--no-cold", action="store_true", help="only the evaluation catalogue")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = export_item_vectors(a.ckpt, a.out, include_cold=not a.no_cold)
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0
