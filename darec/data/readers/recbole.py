"""The RecBole atomic-file reader (``.inter`` and ``.item``, tab-separated, typed headers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from darec.data.rawio import RawTable, read_delimited
from darec.data.readers.columns import file_hashes, interactions_table, items_table
from darec.data.readers.movies import recbole_ml100k_attrs
from darec.data.readers.registry import ReaderResult, register_reader
from darec.errors import ConfigError, DataError


def _recbole_table(path: str, encoding: str) -> tuple[RawTable, dict[str, str]]:
    """Read an atomic file; returns the table (columns renamed without type) and name -> type."""
    t = read_delimited(path, "\t", header=True, quoting=False, encoding=encoding)
    types: dict[str, str] = {}
    for col in t.df.columns:
        name, _, typ = str(col).partition(":")
        types[name.strip()] = typ.strip() or "token"
    t.df.columns = list(types)
    return t, types


def _recbole_value(t: RawTable, row: int, col: str, typ: str, value: str) -> Any:
    value = value.strip()
    if typ in ("token_seq", "float_seq"):
        parts = value.split()
        if typ == "token_seq":
            return parts
        try:
            return [float(x) for x in parts]
        except ValueError:
            raise DataError(f"{t.where(row, col)}: {value!r} is not a list of numbers") from None
    if typ == "float":
        if not value:
            return None
        try:
            return float(value)
        except ValueError:
            raise DataError(f"{t.where(row, col)}: {value!r} is not a number") from None
    return value or None


@register_reader("recbole")
def read_recbole(
    inter: str,
    item: str | None = None,
    flavour: str = "auto",
    columns: dict[str, str] | None = None,
    encoding: str = "utf-8",
) -> ReaderResult:
    """RecBole atomic files: ``.inter`` and optionally ``.item``, tab-separated, typed headers.

    ``columns`` maps canonical names to field names (default ``user_id``, ``item_id``,
    ``timestamp``, ``rating``). ``flavour``: ``generic`` (every item field an attribute,
    ``token_seq`` split on spaces), ``ml100k`` (title / year / genres as from GroupLens) or
    ``auto`` (``ml100k`` when the item file has movie_title, release_year and class).
    """
    if flavour not in ("auto", "generic", "ml100k"):
        raise ConfigError(f"recbole reader: flavour must be auto, generic or ml100k, got {flavour!r}")
    cols = {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "rating": "rating", **(columns or {})}
    t, types = _recbole_table(inter, encoding)
    rating = cols["rating"] if cols["rating"] in types else None
    interactions = interactions_table(t, cols["user"], cols["item"], cols["timestamp"], rating)
    if item is None:
        return interactions, None, file_hashes(Path(inter))
    it, itypes = _recbole_table(item, encoding)
    it.require([cols["item"]])
    ml100k = {"movie_title", "release_year", "class"} <= set(itypes)
    if flavour == "ml100k" and not ml100k:
        it.require(["movie_title", "release_year", "class"])
    ids = it.nonempty(cols["item"], "item id").tolist()
    rows = []
    if flavour == "ml100k" or (flavour == "auto" and ml100k):
        for i, rec in enumerate(it.df[["movie_title", "release_year", "class"]].itertuples(index=False, name=None)):
            rows.append({"item": ids[i], **recbole_ml100k_attrs(*rec)})
    else:
        attr_cols = [c for c in itypes if c != cols["item"]]
        for i, rec in enumerate(it.df[attr_cols].itertuples(index=False, name=None)):
            rows.append({"item": ids[i], **{c: _recbole_value(it, i, c, itypes[c], v) for c, v in zip(attr_cols, rec, strict=True)}})
    return interactions, items_table(rows), file_hashes(Path(inter), Path(item))
