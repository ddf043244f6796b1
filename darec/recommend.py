"""Recommending from any trained darec checkpoint, adding items to a DARec model, exporting item vectors.

A checkpoint says which model wrote it and carries its items' raw ids and titles
(:data:`darec.modules.base.MODEL_RECORD`; DARec: its item sentences), so none of this needs the prepared
dataset. Items are scored as in evaluation, by a dot product of a user vector with an item table:

- SASRec: the encoder's state after the history, against the item embeddings;
- LightGCN: the mean of the history items' propagated vectors, against those vectors (LightGCN has a trained
  vector only for users of its training graph);
- popularity: the training counts, the same for every history;
- DARec: ``<W_o h, e_j>`` with ``e_j = W_p [s_j ; c_j]``. DARec reads item text, so it also ranks cold items
  (text, no training interaction) and items added later with :meth:`Recommender.add_items`; they have ``c_j = 0``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from darec.atomic import atomic_path, atomic_write_text
from darec.data.pipeline import TextOptions, item_sentence
from darec.modules.text import tokenize_sentences
from darec.errors import ConfigError, DataError
from darec.modules.base import ItemCatalog, RecModule, checkpoint_model_class

TEXT_MODEL = "darec.modules.darec"
"""The module of DARec, the model that reads item text (cold and added items); others score by their vectors."""


def _reads_text(model: RecModule) -> bool:
    # Checked through sys.modules so that recommending from a SASRec does not import DARec (and transformers):
    # a model can only be a DARec if that module is loaded.
    module = sys.modules.get(TEXT_MODEL)
    return module is not None and isinstance(model, module.DARec)


def _title(sentence: str) -> str:
    first = sentence.split(";")[0]
    return first.split(":", 1)[1].strip() if first.startswith("title:") else first


class _VectorItems:
    """Items of a model that scores with :meth:`RecModule.item_vectors`: its catalogue and nothing more."""

    def __init__(self, model: RecModule, catalog: ItemCatalog):
        self.model = model
        self.raw_ids = list(catalog.raw_ids)
        self.titles = list(catalog.titles)

    def table(self) -> torch.Tensor:
        return self.model.item_vectors().detach().float()

    def user(self, ids: list[int]) -> torch.Tensor:
        return self.model.history_user_vectors(torch.tensor([ids])).detach().float()[0]

    def add(self, items: Sequence[dict[str, Any]], text: TextOptions | None) -> list[int]:
        kind = type(self.model).__name__
        raise ConfigError(f"a {kind} model scores items by vectors it learned from interactions; only a model that "
                          "reads item text (DARec) can add items without retraining")


class _TextItems:
    """Items of DARec: catalogue, cold and added items, encoded from their sentences."""

    def __init__(self, model: Any):
        if not getattr(model, "_ready", False):
            raise ConfigError("the DARec model has no item data attached; load it with Recommender.from_checkpoint")
        self.model = model
        self.raw_ids: list[str] = list(model.item_raw_ids)
        self.sentences: list[str] = list(model.item_sentences)
        self.titles = [_title(s) for s in self.sentences]
        self._sem: torch.Tensor | None = None

    def table(self) -> torch.Tensor:
        m = self.model
        m.refresh_cache()
        n, total = m.num_items, len(self.raw_ids) - 1
        sem = m.sem_cache.float()
        if total > n:
            sem = torch.cat([sem, m.encoder.encode(torch.arange(n + 1, total + 1)).float()], 0)
        self._sem = sem
        return m.item_table(sem)

    def user(self, ids: list[int]) -> torch.Tensor:
        assert self._sem is not None, "table() first"
        return self.model.user_vectors(torch.tensor([ids]), self._sem)[0]

    def add(self, items: Sequence[dict[str, Any]], text: TextOptions | None) -> list[int]:
        known = set(self.raw_ids[1:])
        new_ids = []
        opts = text or TextOptions()
        for rec in items:
            rec = dict(rec)
            raw = str(rec.pop("item", "") or "")
            if not raw:
                raise DataError("every added item needs an 'item' raw id")
            if raw in known:
                raise DataError(f"item {raw!r} already exists")
            known.add(raw)
            sentence = item_sentence(rec, opts) or f"item: {raw}"
            self.raw_ids.append(raw)
            self.sentences.append(sentence)
            self.titles.append(_title(sentence))
            new_ids.append(len(self.raw_ids) - 1)
        m = self.model
        m.encoder.set_tokens(tokenize_sentences(self.sentences, m.backbone.tokenizer, m.max_item_tokens, framing=m.item_framing))
        return new_ids


class Recommender:
    """Top-k recommendation for raw-id histories from any darec model (SASRec, LightGCN, popularity, DARec).

    Load one with :meth:`from_checkpoint`; :meth:`recommend` ranks the catalogue for a history of raw item ids,
    :meth:`item_table` gives the vectors items are scored with, and a DARec model can take new items
    (:meth:`add_items`) without retraining.
    """

    def __init__(self, model: RecModule):
        self.model = model.eval()
        self.kind = type(model).__name__
        if _reads_text(model):
            self._items: _VectorItems | _TextItems = _TextItems(model)
        elif model.item_catalog is None:
            raise ConfigError(f"this {self.kind} model does not carry its items' raw ids; load it with "
                              "Recommender.from_checkpoint(path, data_dir=...)")
        else:
            self._items = _VectorItems(model, model.item_catalog)
        self._index = {r: i for i, r in enumerate(self._items.raw_ids) if i > 0}
        self._table: torch.Tensor | None = None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> "Recommender":
        """Load the model a checkpoint holds, whichever darec model wrote it.

        ``data_dir`` is needed only for checkpoints that do not carry their items' raw ids (written before they
        did); it defaults to the data directory the checkpoint records.
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such checkpoint")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        model_cls = checkpoint_model_class(checkpoint, str(path))
        model = model_cls.load_from_checkpoint(str(path), map_location="cpu")
        if model.item_catalog is None and not _reads_text(model):
            model.item_catalog = _catalog_from_data(checkpoint, model, path, data_dir)
        return cls(model)

    @property
    def raw_ids(self) -> list[str]:
        """Raw item id of every internal id (index 0: padding)."""
        return self._items.raw_ids

    @property
    def num_items(self) -> int:
        """Catalogue items (ids ``1..num_items``); cold and added items follow."""
        return int(self.model.num_items)

    @property
    def num_total_items(self) -> int:
        return len(self._items.raw_ids) - 1

    @torch.no_grad()
    def item_table(self) -> torch.Tensor:
        """The vector of every known item (catalogue, cold, added; row 0 padding); cached until items change."""
        if self._table is None:
            self._table = self._items.table()
        return self._table

    def _ids(self, history: Sequence[str]) -> list[int]:
        if not history:
            raise DataError("the history is empty; give at least one item id")
        missing = [h for h in history if str(h) not in self._index]
        if missing:
            raise DataError(f"unknown item id(s) in the history: {missing[:5]}")
        return [self._index[str(h)] for h in history]

    @torch.no_grad()
    def recommend(self, history: Sequence[str], k: int = 10, include_cold: bool = False) -> list[dict[str, Any]]:
        """The ``k`` best items for a user with this chronological ``history`` of raw item ids.

        Each is ``{"item": internal id, "raw_id", "title", "score", "cold"}``, best first. History items are never
        recommended. ``include_cold`` also ranks items with text but no training interaction (and items added
        with :meth:`add_items`); only DARec has any.
        """
        check_k(k)
        ids = self._ids(history)
        table = self.item_table()
        scores = table[: (self.num_total_items if include_cold else self.num_items) + 1] @ self._items.user(ids)
        scores[0] = float("-inf")
        scores[[i for i in ids if i < len(scores)]] = float("-inf")
        top = torch.topk(scores, min(k, int(torch.isfinite(scores).sum())))
        return [
            {"item": int(i), "raw_id": self._items.raw_ids[i], "title": self._items.titles[i], "score": float(s),
             "cold": int(i) > self.num_items}
            for s, i in zip(top.values, top.indices)
        ]

    def add_items(self, items: Sequence[dict[str, Any]], text: TextOptions | None = None) -> list[int]:
        """Add new items (dicts with ``item`` = raw id plus attributes) without retraining; returns their ids.

        DARec only. Their sentences are built like prepared items' (``text`` defaults to title, year, genres
        when present, else all attributes), they get ``c_j = 0``, and :meth:`recommend` ranks them with
        ``include_cold=True``.
        """
        new_ids = self._items.add(items, text)
        self._index.update({self._items.raw_ids[i]: i for i in new_ids})
        self._table = None
        return new_ids


def check_k(k: int) -> None:
    if k < 1:
        raise ConfigError(f"k must be positive, got {k}")


def _catalog_from_data(checkpoint: dict[str, Any], model: RecModule, path: Path,
                       data_dir: str | os.PathLike | None) -> ItemCatalog:
    """The raw ids and titles of an older checkpoint's items, from its prepared dataset."""
    from darec.data.dataset import is_prepared_dir, PreparedData

    data_dir = data_dir or (checkpoint.get("datamodule_hyper_parameters") or {}).get("data_dir")
    if data_dir is None or not is_prepared_dir(data_dir):
        where = f" (it records {data_dir}, which is not a prepared dataset)" if data_dir else ""
        raise ConfigError(f"{path} does not carry its items' raw ids{where}; pass the prepared dataset it was "
                          "trained on (--data DIR, or data_dir=...)")
    data = PreparedData(data_dir)
    if model.data_fingerprint:
        data.check_fingerprint(model.data_fingerprint, f"{path}")
    return ItemCatalog.from_data(data, model.num_items)


def export_item_vectors(ckpt: str | os.PathLike, out: str | os.PathLike, include_cold: bool = True,
                        data_dir: str | os.PathLike | None = None) -> Path:
    """Write the item vectors (safetensors ``item_vectors [N+1, d]``) plus a JSON sidecar, for a nearest-neighbour
    index: a user's scores are the dot products of their user vector with these rows."""
    from safetensors.torch import save_file

    rec = Recommender.from_checkpoint(ckpt, data_dir)
    table = rec.item_table()
    n = rec.num_total_items if include_cold else rec.num_items
    out = Path(out)
    with atomic_path(out) as tmp:
        save_file({"item_vectors": table[: n + 1].contiguous()}, str(tmp))
    meta = {
        "format": "darec-item-vectors",
        "kind": rec.kind.lower(),
        "fingerprint": rec.model.data_fingerprint,
        "dim": int(table.shape[1]),
        "num_items": rec.num_items,
        "num_rows": n + 1,
        "item_raw_ids": rec.raw_ids[: n + 1],
        "score": f"dot product with {rec.kind} user vectors (darec.recommend.Recommender)",
        "checkpoint": str(ckpt),
    }
    atomic_write_text(out.with_suffix(".json"), json.dumps(meta, indent=1))
    return out
