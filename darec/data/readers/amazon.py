"""The Amazon review reader: 2018 and 2023 dumps (JSON lines, optionally gzipped) with their metadata."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from darec.data.coded import CodeBuilder
from darec.data.rawio import iter_json_lines
from darec.data.readers.columns import blank_to_none, file_hashes, items_table
from darec.data.readers.registry import ReaderResult, register_reader
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
        return inter, None, file_hashes(rpath)
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
                "title": blank_to_none(str(title)) if title is not None else None,
                "brand": blank_to_none(str(brand)) if brand is not None else None,
                "categories": _flat_categories(cats) if cats is not None else [],
            }
        )
    return inter, items_table(rows), file_hashes(rpath, mpath)
