"""Interaction logs as compact arrays: integer codes for raw ids, numpy columns for the rest.

A log of tens of millions of rows held as Python strings in a DataFrame costs tens of GB. Here each
row costs 24 bytes (int32 user and item codes, float64 timestamp and rating), and the raw id
strings are stored once per *distinct* id, in order of first appearance. Streaming readers build
a :class:`CodedInteractions` with :class:`CodeBuilder`; any DataFrame converts with
:meth:`CodedInteractions.from_frame`. The pipeline (:mod:`darec.data.pipeline`) works on this form.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import numpy as np
import pandas as pd

from darec.errors import DataError


@dataclass
class CodedInteractions:
    """Rows of (user, item, timestamp[, rating]) in source order; ``user[i]`` indexes ``user_vocab``."""

    user: np.ndarray  # int32 codes into user_vocab
    item: np.ndarray  # int32 codes into item_vocab
    timestamp: np.ndarray  # float64 seconds
    rating: np.ndarray | None  # float64, NaN where missing; None when the source has no rating
    user_vocab: list[str]  # raw user ids, in order of first appearance
    item_vocab: list[str]  # raw item ids, in order of first appearance

    def __len__(self) -> int:
        return int(self.user.shape[0])

    @classmethod
    def from_frame(cls, df: pd.DataFrame, source: str = "interactions") -> "CodedInteractions":
        """Codes for a canonical DataFrame (``user``, ``item``, ``timestamp``, optional ``rating``)."""
        missing = {"user", "item", "timestamp"} - set(df.columns)
        if missing:
            raise DataError(f"{source}: missing required column(s) {sorted(missing)}")
        user, user_vocab = pd.factorize(df["user"].astype(str), sort=False)
        item, item_vocab = pd.factorize(df["item"].astype(str), sort=False)
        rating = df["rating"].to_numpy(dtype=np.float64, na_value=np.nan) if "rating" in df.columns else None
        return cls(user.astype(np.int32), item.astype(np.int32), df["timestamp"].to_numpy(),
                   rating, list(user_vocab), list(item_vocab))

    def to_frame(self) -> pd.DataFrame:
        """The canonical DataFrame (raw id strings); for inspection and small logs only."""
        users = np.asarray(self.user_vocab, dtype=object)[self.user] if len(self) else []
        items = np.asarray(self.item_vocab, dtype=object)[self.item] if len(self) else []
        df = pd.DataFrame({"user": list(users), "item": list(items), "timestamp": self.timestamp})
        if self.rating is not None:
            df["rating"] = self.rating
        return df


class CodeBuilder:
    """Appends rows one at a time: raw ids go through dicts (memory grows with distinct ids, not rows)."""

    def __init__(self) -> None:
        self._users: dict[str, int] = {}
        self._items: dict[str, int] = {}
        self._u, self._i = array("i"), array("i")
        self._t, self._r = array("d"), array("d")

    def add(self, user: str, item: str, timestamp: float, rating: float) -> None:
        users, items = self._users, self._items
        u = users.get(user)
        if u is None:
            u = users[user] = len(users)
        i = items.get(item)
        if i is None:
            i = items[item] = len(items)
        self._u.append(u)
        self._i.append(i)
        self._t.append(timestamp)
        self._r.append(rating)

    def finish(self) -> CodedInteractions:
        """The rows so far; ``rating`` is None when every rating is missing (NaN)."""
        rating = np.frombuffer(self._r, dtype=np.float64).copy()
        out = CodedInteractions(
            user=np.frombuffer(self._u, dtype=np.int32).copy(),
            item=np.frombuffer(self._i, dtype=np.int32).copy(),
            timestamp=np.frombuffer(self._t, dtype=np.float64).copy(),
            rating=None if np.isnan(rating).all() else rating,
            user_vocab=list(self._users),
            item_vocab=list(self._items),
        )
        self.__init__()  # type: ignore[misc]  # release the buffers
        return out
