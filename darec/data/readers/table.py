"""The ``csv`` reader: any CSV / TSV / Parquet table of interactions, with an optional item table."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from darec.data.rawio import RawTable, parse_times, read_delimited, read_parquet
from darec.data.readers.columns import blank_to_none, file_hashes, interactions_table, items_table
from darec.data.readers.registry import ReaderResult, register_reader
from darec.errors import ConfigError, DataError

log = logging.getLogger(__name__)


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
    return blank_to_none(v)


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
    inter = interactions_table(t, keys["user"], keys["item"], keys["timestamp"], keys.get("rating"), timestamp_format)
    if items is None:
        return inter, None, file_hashes(ipath)
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
    return inter, items_table(rows), file_hashes(ipath, mpath)
