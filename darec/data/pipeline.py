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

from darec.data.coded import CodedInteractions
from darec.data.dataset import PreparedTables, Ragged
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


def _sorted_codes(codes: np.ndarray, vocab: list[str]) -> list[int]:
    """``codes`` ordered by their raw id: numerically when every id is a number, else as strings."""
    values = [vocab[c] for c in codes.tolist()]
    if all(v.isdigit() for v in values):
        order = sorted(range(len(values)), key=lambda j: (int(values[j]), values[j]))
    else:
        order = sorted(range(len(values)), key=values.__getitem__)
    return [int(codes[j]) for j in order]


def _id_map(codes: np.ndarray, vocab: list[str]) -> tuple[list[str], np.ndarray]:
    """Raw ids of the codes present, in id order, and a lookup table code -> internal id (1-based)."""
    present = np.flatnonzero(np.bincount(codes, minlength=len(vocab)))
    ordered = _sorted_codes(present, vocab)
    lut = np.zeros(len(vocab), dtype=np.int64)
    lut[ordered] = np.arange(1, len(ordered) + 1)
    return [vocab[c] for c in ordered], lut


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


class _Rows:
    """The surviving rows as parallel arrays: source row, user and item codes, timestamp."""

    def __init__(self, row: np.ndarray, user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> None:
        self.row, self.user, self.item, self.ts = row, user, item, ts
        self.period: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.row.shape[0])

    def take(self, sel: np.ndarray) -> "_Rows":
        out = _Rows(self.row[sel], self.user[sel], self.item[sel], self.ts[sel])
        out.period = None if self.period is None else self.period[sel]
        return out

    def drop(self, bad: np.ndarray, dropped: dict[str, int], reason: str) -> "_Rows":
        n = int(bad.sum())
        dropped[reason] += n
        return self.take(~bad) if n else self


def _k_core(r: _Rows, user_min: int, user_core: int, item_core: int, dropped: dict[str, int]) -> _Rows:
    while True:
        before = len(r)
        if item_core > 1:
            r = r.drop(np.bincount(r.item)[r.item] < item_core, dropped, "item_core")
        for reason, k in (("user_core", user_core), ("user_too_short", user_min)):
            if k > 1:
                r = r.drop(np.bincount(r.user)[r.user] < k, dropped, reason)
        if len(r) == before:
            return r


def _filter(c: CodedInteractions, opts: PrepareOptions, source: str, dropped: dict[str, int]) -> _Rows:
    """Rating threshold, de-duplication, k-core and the time split's no-history rule, on arrays."""
    fo, so = opts.filter, opts.split
    row = np.arange(len(c), dtype=np.int64)
    if fo.rating_threshold is not None:
        if c.rating is None:
            raise DataError(f"{source}: rating_threshold is set but the data has no rating column")
        with np.errstate(invalid="ignore"):
            bad = ~(c.rating >= fo.rating_threshold)
        dropped["below_rating_threshold"] = int(bad.sum())
        row = row[~bad]
    r = _Rows(row, c.user[row], c.item[row], c.timestamp[row])
    r = r.take(np.lexsort((r.row, r.ts, r.user)))  # per user by time, ties in source order
    if fo.duplicates != "keep_all":
        pair = r.user.astype(np.int64) * max(1, len(c.item_vocab)) + r.item
        if fo.duplicates == "keep_first":
            first = np.unique(pair, return_index=True)[1]
        else:
            first = len(pair) - 1 - np.unique(pair[::-1], return_index=True)[1]
        keep = np.zeros(len(r), dtype=bool)
        keep[first] = True
        r = r.drop(~keep, dropped, "duplicate")
    user_min = MIN_LOO_LENGTH if so.kind == "leave_one_out" else 0
    r = _k_core(r, user_min, fo.user_core, fo.item_core, dropped)
    if so.kind == "time":
        if so.valid_start is None or so.test_start is None or so.valid_start > so.test_start:
            raise DataError(f"{source}: the time split needs valid_start <= test_start")
        r.period = np.where(r.ts < so.valid_start, 0, np.where(r.ts < so.test_start, 1, 2))
        has_train = np.bincount(r.user, weights=r.period == 0, minlength=len(c.user_vocab)) > 0
        r = r.drop(~has_train[r.user], dropped, "no_train_history")
    return r


def build_tables(
    interactions: pd.DataFrame | CodedInteractions,
    items: pd.DataFrame | None,
    opts: PrepareOptions,
    source: str = "interactions",
) -> PreparedTables:
    """Filter, split and remap canonical tables into :class:`PreparedTables`.

    ``interactions`` is a canonical DataFrame or, for logs too large for Python objects, the
    :class:`CodedInteractions` a streaming reader builds; both give the same result.
    """
    coded = interactions if isinstance(interactions, CodedInteractions) else CodedInteractions.from_frame(interactions, source)
    dropped = {k: 0 for k in ("below_rating_threshold", "duplicate", "item_core", "user_core", "user_too_short", "no_train_history")}
    r = _filter(coded, opts, source, dropped)
    so = opts.split
    if np.count_nonzero(np.bincount(r.item, minlength=len(coded.item_vocab))) < 2:
        raise DataError(f"{source}: fewer than 2 items are left after filtering ({dict(dropped)} rows dropped); relax the filters")
    user_raw, user_lut = _id_map(r.user, coded.user_vocab)
    warm_raw, item_lut = _id_map(r.item, coded.item_vocab)
    uid = user_lut[r.user]
    r = r.take(np.lexsort((r.row, r.ts, uid)))
    uid, iid = user_lut[r.user], item_lut[r.item].astype(np.int32)

    n_users = len(user_raw)
    counts = np.bincount(uid, minlength=n_users + 1)
    pos = np.arange(len(r)) - np.repeat(np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    if so.kind == "leave_one_out":
        from_end = np.repeat(counts, counts) - pos
        period = np.where(from_end == 1, 2, np.where(from_end == 2, 1, 0))
    else:
        period = r.period
    ts = r.ts
    if np.issubdtype(ts.dtype, np.floating):
        ts = np.round(ts)
    ts = ts.astype(np.int64)
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
    n_inter = len(r)
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
        "input_rows": len(coded),
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
