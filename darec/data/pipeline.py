"""From canonical tables to a prepared dataset: filtering, splitting, id remapping, item sentences.

The canonical interaction table has the columns ``user``, ``item`` (raw ids, strings),
``timestamp`` (numeric) and optionally ``rating``, in source row order. The canonical item table
has an ``item`` column (raw id) and one column per attribute; a value may be a string, a number,
a list of strings, or missing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from darec.data.prepared import PreparedTables, Ragged
from darec.errors import DataError

log = logging.getLogger(__name__)

DuplicatePolicy = Literal["keep_first", "keep_last", "keep_all"]
MIN_LOO_LENGTH = 3


@dataclass
class FilterOptions:
    """Which interactions to keep."""

    rating_threshold: float | None = None  # keep rows with rating >= this (None: keep all)
    user_core: int = 0  # iterative k-core: every user keeps at least this many interactions
    item_core: int = 0  # iterative k-core: every item keeps at least this many interactions
    duplicates: DuplicatePolicy = "keep_first"  # repeated (user, item) pairs: keep first/last/all


@dataclass
class SplitOptions:
    """How interactions are split into train / validation / test."""

    kind: Literal["leave_one_out", "time"] = "leave_one_out"
    valid_start: float | None = None  # time split: first timestamp of the validation period
    test_start: float | None = None  # time split: first timestamp of the test period


@dataclass
class TextOptions:
    """How an item's attributes become its sentence."""

    fields: list[str] | None = None  # attributes to show, in order (None: all, table order)
    template: str | None = None  # python format string over attributes, e.g. "{title} ({year})"
    max_chars: int = 512  # sentences are cut to this many characters
    list_separator: str = ", "  # joins list-valued attributes


@dataclass
class PrepareOptions:
    filter: FilterOptions = field(default_factory=FilterOptions)
    split: SplitOptions = field(default_factory=SplitOptions)
    text: TextOptions = field(default_factory=TextOptions)


def _is_missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    if isinstance(v, (list, tuple, np.ndarray)):
        return len(v) == 0
    return isinstance(v, str) and not v.strip()


def _fmt(v: Any, sep: str) -> str:
    if isinstance(v, (list, tuple, np.ndarray)):
        return sep.join(str(x) for x in v if not _is_missing(x))
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def item_sentence(attrs: dict[str, Any], opts: TextOptions) -> str:
    """Flatten an attribute dictionary into ``field: value; field: value``; missing values skipped."""
    if opts.template is not None:

        class _Blank(dict):
            def __missing__(self, key: str) -> str:
                return ""

        values = _Blank({k: _fmt(v, opts.list_separator) for k, v in attrs.items() if not _is_missing(v)})
        text = opts.template.format_map(values)
    else:
        names = opts.fields if opts.fields is not None else list(attrs)
        parts = [f"{n}: {_fmt(attrs[n], opts.list_separator)}" for n in names if n in attrs and not _is_missing(attrs[n])]
        text = "; ".join(parts)
    return " ".join(text.split())[: opts.max_chars]


def _sort_key(raw_ids: pd.Series) -> list[str]:
    values = raw_ids.unique().tolist()
    if all(v.isdigit() for v in values):
        return sorted(values, key=lambda v: (int(v), v))
    return sorted(values)


def _percentiles(lengths: np.ndarray) -> dict[str, float]:
    if len(lengths) == 0:
        return {}
    q = np.percentile(lengths, [5, 25, 50, 75, 95])
    return {
        "min": int(lengths.min()),
        "p5": float(q[0]),
        "p25": float(q[1]),
        "median": float(q[2]),
        "p75": float(q[3]),
        "p95": float(q[4]),
        "max": int(lengths.max()),
        "mean": float(lengths.mean()),
    }


def _k_core(df: pd.DataFrame, user_min: int, user_core: int, item_core: int, dropped: dict[str, int]) -> pd.DataFrame:
    while True:
        before = len(df)
        if item_core > 1:
            cnt = df.groupby("item")["item"].transform("size")
            bad = cnt < item_core
            dropped["item_core"] += int(bad.sum())
            df = df[~bad]
        for reason, k in (("user_core", user_core), ("user_too_short", user_min)):
            if k > 1:
                cnt = df.groupby("user")["user"].transform("size")
                bad = cnt < k
                dropped[reason] += int(bad.sum())
                df = df[~bad]
        if len(df) == before:
            return df


def build_tables(
    interactions: pd.DataFrame,
    items: pd.DataFrame | None,
    opts: PrepareOptions,
    source: str = "interactions",
) -> PreparedTables:
    """Filter, split and remap canonical tables into :class:`PreparedTables`."""
    required = {"user", "item", "timestamp"}
    missing = required - set(interactions.columns)
    if missing:
        raise DataError(f"{source}: missing required column(s) {sorted(missing)}")
    df = interactions.reset_index(drop=True).copy()
    df["user"] = df["user"].astype(str)
    df["item"] = df["item"].astype(str)
    df["_row"] = np.arange(len(df), dtype=np.int64)
    dropped = {k: 0 for k in ("below_rating_threshold", "duplicate", "item_core", "user_core", "user_too_short", "no_train_history")}
    fo = opts.filter
    if fo.rating_threshold is not None:
        if "rating" not in df.columns:
            raise DataError(f"{source}: rating_threshold is set but the data has no rating column")
        bad = ~(df["rating"] >= fo.rating_threshold)
        dropped["below_rating_threshold"] = int(bad.sum())
        df = df[~bad]
    df = df.sort_values(["user", "timestamp", "_row"], kind="stable")
    if fo.duplicates != "keep_all":
        dup = df.duplicated(["user", "item"], keep="first" if fo.duplicates == "keep_first" else "last")
        dropped["duplicate"] = int(dup.sum())
        df = df[~dup]
    so = opts.split
    user_min = MIN_LOO_LENGTH if so.kind == "leave_one_out" else 0
    df = _k_core(df, user_min, fo.user_core, fo.item_core, dropped)
    if so.kind == "time":
        if so.valid_start is None or so.test_start is None or so.valid_start > so.test_start:
            raise DataError(f"{source}: the time split needs valid_start <= test_start")
        period = np.where(df["timestamp"] < so.valid_start, 0, np.where(df["timestamp"] < so.test_start, 1, 2))
        df = df.assign(_period=period)
        has_train = df.groupby("user")["_period"].transform("min") == 0
        dropped["no_train_history"] = int((~has_train).sum())
        df = df[has_train]
    if df["item"].nunique() < 2:
        raise DataError(f"{source}: fewer than 2 items are left after filtering ({dict(dropped)} rows dropped); relax the filters")
    user_raw = _sort_key(df["user"])
    warm_raw = _sort_key(df["item"])
    user_idx = {u: i + 1 for i, u in enumerate(user_raw)}
    item_idx = {it: i + 1 for i, it in enumerate(warm_raw)}
    df = df.assign(uid=df["user"].map(user_idx).astype(np.int64), iid=df["item"].map(item_idx).astype(np.int32))
    df = df.sort_values(["uid", "timestamp", "_row"], kind="stable")

    n_users = len(user_raw)
    uid = df["uid"].to_numpy()
    counts = np.bincount(uid, minlength=n_users + 1)
    pos = np.arange(len(df)) - np.repeat(np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    if so.kind == "leave_one_out":
        from_end = np.repeat(counts, counts) - pos
        period = np.where(from_end == 1, 2, np.where(from_end == 2, 1, 0))
    else:
        period = df["_period"].to_numpy()
    ts = df["timestamp"].to_numpy()
    if np.issubdtype(ts.dtype, np.floating):
        ts = np.round(ts)
    ts = ts.astype(np.int64)
    iid = df["iid"].to_numpy().astype(np.int32)
    splits: dict[str, Ragged] = {}
    for p, name in enumerate(("train", "validation", "test")):
        sel = period == p
        c = np.bincount(uid[sel], minlength=n_users + 1)
        off = np.zeros(n_users + 2, dtype=np.int64)
        np.cumsum(c, out=off[1:])
        splits[name] = Ragged(off, iid[sel], ts[sel])

    attr_rows: dict[str, dict[str, Any]] = {}
    if items is not None and len(items):
        if "item" not in items.columns:
            raise DataError(f"{source}: item table has no 'item' column")
        for d in items.drop_duplicates("item", keep="first").to_dict("records"):
            attr_rows[str(d.pop("item"))] = d
    cold_raw = sorted(set(attr_rows) - set(warm_raw), key=lambda v: (0, int(v), v) if v.isdigit() else (1, 0, v))
    all_raw = [""] + warm_raw + cold_raw
    attrs: list[dict[str, Any]] = [{}]
    sentences = [""]
    no_meta = 0
    for raw in all_raw[1:]:
        a = attr_rows.get(raw)
        if a is None:
            no_meta += 1
            a = {}
        clean = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in a.items() if not _is_missing(v)}
        attrs.append(clean)
        sent = item_sentence(clean, opts.text)
        sentences.append(sent if sent else f"item: {raw}")
    if no_meta:
        log.warning("%d items have no metadata; their sentence is 'item: <raw id>'", no_meta)

    n_items = len(warm_raw)
    n_inter = int(len(df))
    stats = {
        "users": n_users,
        "items": n_items,
        "cold_items": len(cold_raw),
        "interactions": n_inter,
        "train_interactions": int(len(splits["train"].items)),
        "validation_interactions": int(len(splits["validation"].items)),
        "test_interactions": int(len(splits["test"].items)),
        "density": n_inter / max(1, n_users * n_items),
        "sequence_length": _percentiles(counts[1:]),
        "items_without_metadata": no_meta,
        "input_rows": int(len(interactions)),
        "dropped": dropped,
        "split": so.kind,
    }
    return PreparedTables(
        user_raw_ids=[""] + user_raw,
        item_raw_ids=all_raw,
        sentences=sentences,
        attrs=attrs,
        num_items=n_items,
        splits=splits,
        stats=stats,
    )
