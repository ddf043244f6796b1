"""Building blocks every reader uses: canonical interaction and item tables, input hashes, blank cells."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from darec.data.dataset import sha256_file
from darec.data.rawio import RawTable


def file_hashes(*paths: Path | None) -> dict[str, str]:
    """``{path: sha256}`` of every path given (``None`` skipped): a reader's ``inputs``."""
    return {str(p): sha256_file(p) for p in paths if p is not None}


def interactions_table(t: RawTable, user: Any, item: Any, timestamp: Any, rating: Any = None, ts_format: str = "numeric") -> pd.DataFrame:
    """Canonical interactions from the named columns of ``t``; bad values name their line."""
    t.require([c for c in (user, item, timestamp, rating) if c is not None])
    out = pd.DataFrame(
        {
            "user": t.nonempty(user, "user id").to_numpy(),
            "item": t.nonempty(item, "item id").to_numpy(),
            "timestamp": t.numbers(timestamp, "timestamp", ts_format).to_numpy(),
        }
    )
    if rating is not None:
        out["rating"] = t.numbers(rating, "rating", allow_missing=True).to_numpy()
    return out


def blank_to_none(v: Any) -> Any:
    """A cell value with blank strings and NaN turned into ``None`` (strings are stripped)."""
    if isinstance(v, str):
        v = v.strip()
        return v or None
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def items_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """An item DataFrame of python objects (no numpy scalars, no NaN for missing ints)."""
    cols: dict[str, list[Any]] = {}
    for r in rows:
        for k in r:
            cols.setdefault(k, [])
    data = {k: pd.Series([r.get(k) for r in rows], dtype=object) for k in cols}
    return pd.DataFrame(data)
