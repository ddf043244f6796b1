"""Readers for Amazon review dumps (JSON lines) and for any CSV / TSV / Parquet table.

Importing :mod:`darec.data.readers` registers these as ``amazon`` and ``csv``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from darec.data.coded import CodeBuilder
from darec.data.rawio import RawTable, iter_json_lines, parse_times, read_delimited, read_parquet
from darec.data.readers import ReaderResult, _blank_to_none, _inputs, _interactions, _items_frame, register_reader
from darec.errors import ConfigError, DataError

log = logging.getLogger(__name__)

AMAZON_FIELDS = {
    "2018": {"user": "reviewerID", "item": "asin", "timestamp": "unixReviewTime", "rating": "overall", "scale": 1.0},
    "2023": {"user": "user_id", "item": "parent_asin", "timestamp": "timestamp", "rating": "rating", "scale": 1e-3},
}
"""Review field names per dump; ``scale`` turns the timestamp into seconds (2023 has milliseconds)."""

AMAZON_META = {
    "2018": {"item": "asin", "brand": "brand", "categories": ("category", "categories")},
    "2023": {"item": "parent_asin", "brand": "store", "categories": ("categories",)},
}


def _detect_amazon(path: Path, rec: dict[str, Any], line: int) -> str:
    if "reviewerID" in rec:
        return "2018"
    if "user_id" in rec or "parent_asin" in rec:
        return "2023"
    raise DataError(
        f"{path}, line {line}: cannot tell the Amazon dump's year from fields {sorted(rec)}; "
        "set the reader option `flavour: 2018` or `flavour: 2023`"
    )


def _flat_categories(value: Any) -> list[str]:
    """Flatten a category list (or list of lists), dropping duplicates, keeping order."""
    out: list[str] = []
    stack = [value] if not isinstance(value, list) else list(value)
    for v in stack:
        if isinstance(v, list):
            out.extend(str(x).strip() for x in v if isinstance(x, (str, int, float)))
        elif v is not None and str(v).strip():
            out.append(str(v).strip())
    return [c for c in dict.fromkeys(out) if c]


def _number(path: Path, line: int, rec: dict[str, Any], key: str, what: str, required: bool) -> float:
    value = rec.get(key)
    if value is None and not required:
        return math.nan
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        out = math.nan
    if not math.isfinite(out):
        raise DataError(f"{path}, line {line}: {what} {value!r} (field {key!r}) is not a number")
    return out


@register_reader("amazon")
def read_amazon(reviews: str, meta: str | None = None, flavour: str = "auto", encoding: str = "utf-8") -> ReaderResult:
    """Amazon reviews (JSON lines, optionally ``.gz``) plus an optional metadata file.

    ``flavour``: ``2018`` (reviewerID / asin / unixReviewTime / overall), ``2023`` (user_id /
    parent_asin / timestamp in ms / rating) or ``auto`` (from the first record's fields). Item
    attributes: ``title``, ``brand`` (``store`` in 2023) and ``categories`` (a flat list).
    Files are streamed line by line into a :class:`~darec.data.coded.CodedInteractions` (integer
    codes per distinct id, numpy columns), so memory grows with the distinct ids, not the rows.
    """
    flavour = str(flavour)
    if flavour not in ("auto", "2018", "2023"):
        raise ConfigError(f"amazon reader: flavour must be auto, 2018 or 2023, got {flavour!r}")
    rpath = Path(reviews)
    rows = CodeBuilder()
    fields: dict[str, Any] = {}
    for line, rec in iter_json_lines(rpath, encoding):
        if not fields:
            flavour = _detect_amazon(rpath, rec, line) if flavour == "auto" else flavour
            fields = AMAZON_FIELDS[flavour]
            log.info("%s: Amazon %s review dump", rpath, flavour)
        for key in ("user", "item"):
            v = rec.get(fields[key])
            if v is None or not str(v).strip():
                raise DataError(f"{rpath}, line {line}: missing field {fields[key]!r} ({key} id)")
        rows.add(
            str(rec[fields["user"]]).strip(),
            str(rec[fields["item"]]).strip(),
            _number(rpath, line, rec, fields["timestamp"], "timestamp", True) * fields["scale"],
            _number(rpath, line, rec, fields["rating"], "rating", False),
        )
    inter = rows.finish()
    if meta is None:
        return inter, None, _inputs(rpath)
    mpath = Path(meta)
    mf = AMAZON_META[flavour]
    rows = []
    for line, rec in iter_json_lines(mpath, encoding):
        key = rec.get(mf["item"])
        if key is None or not str(key).strip():
            raise DataError(f"{mpath}, line {line}: missing field {mf['item']!r} (item id)")
        cats = next((rec[c] for c in mf["categories"] if rec.get(c)), None)
        title = rec.get("title")
        brand = rec.get(mf["brand"])
        rows.append(
            {
                "item": str(key).strip(),
                "title": _blank_to_none(str(title)) if title is not None else None,
                "brand": _blank_to_none(str(brand)) if brand is not None else None,
                "categories": _flat_categories(cats) if cats is not None else [],
            }
        )
    return inter, _items_frame(rows), _inputs(rpath, mpath)


def _default_sep(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    return "\t" if suffixes and suffixes[-1] in (".tsv", ".tab", ".txt") else ","


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _table(path: Path, sep: str | None, header: bool, encoding: str) -> RawTable:
    if _is_parquet(path):
        df = read_parquet(path)
        if len(df) == 0:
            raise DataError(f"{path}: the file has no rows")
        if len(df.columns) and not isinstance(df.columns[0], str):
            df.columns = [str(c) for c in df.columns]
        return RawTable(path, df, "", 1)
    return read_delimited(path, sep or _default_sep(path), header=header, encoding=encoding)


def _column_key(name: Any, header: bool, where: str) -> Any:
    if header:
        return str(name)
    if isinstance(name, int) and not isinstance(name, bool):
        return name
    raise ConfigError(f"{where}: with `header: false`, columns are given as 0-based positions, got {name!r}")


def _cell(v: Any, split: str | None) -> Any:
    if v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, str):
        v = v.strip()
        if split is not None:
            return [p.strip() for p in v.split(split) if p.strip()]
        return v or None
    return _blank_to_none(v)


@register_reader("csv")
def read_table(
    interactions: str,
    columns: dict[str, Any] | None = None,
    sep: str | None = None,
    header: bool = True,
    encoding: str = "utf-8",
    timestamp_format: str = "numeric",
    items: str | None = None,
    item_columns: dict[str, Any] | list[Any] | None = None,
    item_sep: str | None = None,
    list_columns: list[str] | None = None,
    list_sep: str = "|",
) -> ReaderResult:
    """Any CSV / TSV (optionally ``.gz``) or Parquet table, with a column mapping.

    ``columns`` maps ``user``, ``item``, ``timestamp`` and optionally ``rating`` to column names
    (positions when ``header`` is false). ``sep`` defaults to tab for .tsv/.txt, else comma.
    ``timestamp_format``: ``numeric``, ``ms``, ``iso`` or a strptime pattern. ``items`` is an
    optional item table; ``item_columns`` maps attribute names to its columns (``item`` names the
    id column, default the interaction item column) or lists the attribute columns (default: all).
    ``list_columns`` are attributes split on ``list_sep`` into lists.
    """
    cols = {"user": "user", "item": "item", "timestamp": "timestamp", **(columns or {})}
    unknown = sorted(set(cols) - {"user", "item", "timestamp", "rating"})
    if unknown:
        raise ConfigError(f"csv reader: unknown key(s) {unknown} in `columns`; valid keys: user, item, timestamp, rating")
    keys = {k: _column_key(v, header, "csv reader `columns`") for k, v in cols.items()}
    try:
        parse_times(pd.Series(["0"]), timestamp_format)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"csv reader: bad timestamp_format {timestamp_format!r} ({e})") from None
    ipath = Path(interactions)
    t = _table(ipath, sep, header, encoding)
    inter = _interactions(t, keys["user"], keys["item"], keys["timestamp"], keys.get("rating"), timestamp_format)
    if items is None:
        return inter, None, _inputs(ipath)
    mpath = Path(items)
    m = _table(mpath, item_sep or sep, header, encoding)
    if isinstance(item_columns, dict):
        mapping = {str(k): _column_key(v, header, "csv reader `item_columns`") for k, v in item_columns.items()}
        mapping.setdefault("item", keys["item"])
    else:
        id_col = keys["item"]
        attrs = item_columns if item_columns is not None else [c for c in m.df.columns if c != id_col]
        mapping = {"item": id_col, **{str(c): _column_key(c, header, "csv reader `item_columns`") for c in attrs}}
    m.require(list(dict.fromkeys(mapping.values())))
    lists = set(list_columns or [])
    ids = m.nonempty(mapping["item"], "item id").tolist()
    attr_names = [k for k in mapping if k != "item"]
    data: dict[str, list[Any]] = {"item": ids}
    for name in attr_names:
        split = list_sep if name in lists else None
        data[name] = [_cell(v, split) for v in m.df[mapping[name]].tolist()]
    rows = [{k: data[k][i] for k in data} for i in range(len(ids))]
    return inter, _items_frame(rows), _inputs(ipath, mpath)
