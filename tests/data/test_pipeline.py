"""build_tables on hand-built cases: k-core, leave-one-out, id maps, cold items, duplicates, time split."""

from __future__ import annotations

import pandas as pd
import pytest

from darec.data.pipeline import FilterOptions, PrepareOptions, SplitOptions, build_tables
from darec.errors import DataError


def _df(rows: list[tuple]) -> pd.DataFrame:
    cols = ["user", "item", "timestamp", "rating"][: len(rows[0])]
    return pd.DataFrame(rows, columns=cols)


def _seq(t, split: str, raw_user: str) -> list[str]:
    u = t.user_raw_ids.index(raw_user)
    return [t.item_raw_ids[i] for i in t.splits[split].row(u)]


def test_iterative_k_core() -> None:
    # item-core 2 drops "z" (1 interaction); then user "c" has 2 < 3 (user core) and goes too, which
    # leaves item "y" with 1 interaction, so "y" goes, and then user "b" falls to 2 and goes.
    rows = [
        ("a", "x", 1), ("a", "w", 2), ("a", "v", 3), ("a", "u", 4),
        ("b", "x", 1), ("b", "w", 2), ("b", "y", 3),
        ("c", "y", 1), ("c", "v", 2), ("c", "z", 3),
        ("d", "x", 1), ("d", "w", 2), ("d", "v", 3), ("d", "u", 4),
    ]  # fmt: skip
    t = build_tables(_df(rows), None, PrepareOptions(filter=FilterOptions(user_core=3, item_core=2)))
    assert t.user_raw_ids[1:] == ["a", "d"]
    assert sorted(t.item_raw_ids[1:]) == ["u", "v", "w", "x"]
    assert t.stats["dropped"]["item_core"] == 2  # z, then y (b's)
    assert t.stats["dropped"]["user_core"] == 4  # c's two left after z, then b's two left after y
    assert t.stats["interactions"] == 8
    assert sum(t.stats["dropped"].values()) + t.stats["interactions"] == len(rows)


def test_leave_one_out_with_ties_keeps_row_order() -> None:
    rows = [("u1", "a", 5), ("u1", "b", 1), ("u1", "c", 5), ("u1", "d", 3), ("u2", "a", 1), ("u2", "b", 2), ("u2", "e", 3)]
    t = build_tables(_df(rows), None, PrepareOptions())
    assert _seq(t, "train", "u1") == ["b", "d"]
    assert _seq(t, "validation", "u1") == ["a"]  # a and c tie at 5; a comes first in the file
    assert _seq(t, "test", "u1") == ["c"]
    assert _seq(t, "train", "u2") == ["a"] and _seq(t, "validation", "u2") == ["b"] and _seq(t, "test", "u2") == ["e"]
    for name in ("validation", "test"):
        assert t.splits[name].lengths[1:].tolist() == [1, 1]
    for u in ("u1", "u2"):
        assert not set(_seq(t, "train", u)) & (set(_seq(t, "validation", u)) | set(_seq(t, "test", u)))


def test_id_map_round_trip_and_padding() -> None:
    rows = [("10", "7", 1), ("10", "3", 2), ("10", "12", 3), ("2", "3", 1), ("2", "7", 2), ("2", "5", 3)]
    t = build_tables(_df(rows), None, PrepareOptions())
    assert t.user_raw_ids == ["", "2", "10"]  # numeric raw ids sort numerically; 0 is padding
    assert t.item_raw_ids == ["", "3", "5", "7", "12"]
    to_internal = {r: i for i, r in enumerate(t.item_raw_ids) if i}
    for raw_user, raw_items in (("10", ["7", "3", "12"]), ("2", ["3", "7", "5"])):
        u = t.user_raw_ids.index(raw_user)
        internal = [*t.splits["train"].row(u), *t.splits["validation"].row(u), *t.splits["test"].row(u)]
        assert [t.item_raw_ids[i] for i in internal] == raw_items
        assert internal == [to_internal[r] for r in raw_items]
    assert 0 not in t.splits["train"].items


def test_cold_items_kept_with_text_and_counted() -> None:
    rows = [("u", "a", 1), ("u", "b", 2), ("u", "c", 3)]
    items = pd.DataFrame({"item": ["a", "b", "c", "zz", "yy"], "title": ["A", "B", "C", "Zed", "Why"]})
    t = build_tables(_df(rows), items, PrepareOptions())
    assert t.num_items == 3 and t.num_cold == 2 and t.stats["cold_items"] == 2
    assert t.item_raw_ids[4:] == ["yy", "zz"]
    assert t.sentences[4:] == ["title: Why", "title: Zed"]
    assert max(t.splits["train"].items.max(), t.splits["test"].items.max()) <= t.num_items


def test_item_without_metadata_gets_raw_id_sentence() -> None:
    items = pd.DataFrame({"item": ["a", "b"], "title": ["A", "B"]})
    t = build_tables(_df([("u", "a", 1), ("u", "b", 2), ("u", "c", 3)]), items, PrepareOptions())
    assert t.sentences[t.item_raw_ids.index("c")] == "item: c"
    assert t.stats["items_without_metadata"] == 1


@pytest.mark.parametrize("policy, kept_ts, dropped", [("keep_first", 1, 1), ("keep_last", 4, 1), ("keep_all", None, 0)])
def test_duplicates_policy(policy: str, kept_ts: int | None, dropped: int) -> None:
    rows = [("u", "a", 1), ("u", "b", 2), ("u", "c", 3), ("u", "a", 4), ("u", "d", 5)]
    t = build_tables(_df(rows), None, PrepareOptions(filter=FilterOptions(duplicates=policy)))
    assert t.stats["dropped"]["duplicate"] == dropped
    u = 1
    all_ts = [*t.splits["train"].row_times(u), *t.splits["validation"].row_times(u), *t.splits["test"].row_times(u)]
    if kept_ts is None:
        assert all_ts == [1, 2, 3, 4, 5]
    else:
        assert kept_ts in all_ts and ({1, 4} - {kept_ts}).isdisjoint(all_ts)


def test_short_users_dropped_and_counted() -> None:
    rows = [("long", "a", 1), ("long", "b", 2), ("long", "c", 3), ("two", "a", 1), ("two", "b", 2), ("one", "c", 1)]
    t = build_tables(_df(rows), None, PrepareOptions())
    assert t.user_raw_ids[1:] == ["long"]
    assert t.stats["dropped"]["user_too_short"] == 3
    assert t.stats["input_rows"] == 6


def test_rating_threshold() -> None:
    rows = [("u", "a", 1, 5.0), ("u", "b", 2, 2.0), ("u", "c", 3, 4.0), ("u", "d", 4, 4.5)]
    t = build_tables(_df(rows), None, PrepareOptions(filter=FilterOptions(rating_threshold=4.0)))
    assert t.stats["dropped"]["below_rating_threshold"] == 1
    assert sorted(t.item_raw_ids[1:]) == ["a", "c", "d"]


def test_time_split_with_cut_dates() -> None:
    rows = [
        ("u1", "a", 10), ("u1", "b", 20), ("u1", "c", 30), ("u1", "d", 40),
        ("u2", "a", 15), ("u2", "c", 35),
        ("u3", "b", 32), ("u3", "d", 45),
    ]  # fmt: skip
    t = build_tables(_df(rows), None, PrepareOptions(split=SplitOptions(kind="time", valid_start=30, test_start=40)))
    assert _seq(t, "train", "u1") == ["a", "b"] and _seq(t, "validation", "u1") == ["c"] and _seq(t, "test", "u1") == ["d"]
    assert _seq(t, "train", "u2") == ["a"] and _seq(t, "validation", "u2") == ["c"] and _seq(t, "test", "u2") == []
    assert "u3" not in t.user_raw_ids  # nothing before valid_start
    assert t.stats["dropped"]["no_train_history"] == 2


def test_fewer_than_two_items_left() -> None:
    rows = [("u", "a", 1), ("u", "b", 2), ("u", "c", 3)]
    with pytest.raises(DataError, match=r"events\.csv: fewer than 2 items are left after filtering"):
        build_tables(_df(rows), None, PrepareOptions(filter=FilterOptions(item_core=2)), source="events.csv")


def test_attribute_names_that_are_not_identifiers_are_kept() -> None:
    items = pd.DataFrame({"item": ["a", "b", "c"], "release date": ["1995", None, "1990"], "_rank": [1, 2, 3]})
    t = build_tables(_df([("u", "a", 1), ("u", "b", 2), ("u", "c", 3)]), items, PrepareOptions())
    assert t.attrs[t.item_raw_ids.index("a")] == {"release date": "1995", "_rank": 1}
    assert t.sentences[t.item_raw_ids.index("b")] == "_rank: 2"
