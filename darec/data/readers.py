"""Readers: raw dataset files to canonical tables.

Every reader returns ``(interactions, items, inputs)``:

* ``interactions``: DataFrame with ``user`` and ``item`` (raw ids, ``str``), ``timestamp`` (float,
  seconds where the source says what it is) and, when the source has one, ``rating``; in source
  row order; or, from a streaming reader (``amazon``), the same rows as a
  :class:`~darec.data.coded.CodedInteractions` (integer codes and numpy columns);
* ``items``: DataFrame with ``item`` (raw id) plus one column per attribute (a string, a number,
  a list of strings or ``None``), or ``None`` when the source has no item metadata;
* ``inputs``: ``{path: sha256}`` of every file read.

Readers are looked up by name in :data:`READERS`; :func:`register_reader` adds one, and
:func:`read_source` calls one with options from a config, checking the option names.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from darec.data.coded import CodedInteractions
from darec.data.prepared import sha256_file
from darec.data.rawio import RawTable, read_delimited, read_text
from darec.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ReaderResult = tuple["pd.DataFrame | CodedInteractions", "pd.DataFrame | None", dict[str, str]]
Reader = Callable[..., ReaderResult]
READERS: dict[str, Reader] = {}

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
"""The 19 genre flags of ml-100k's ``u.item``, in file order."""

GROUPLENS_FILES = ("u.data", "u.item")
RECBOLE_FILES = ("ml-100k.inter", "ml-100k.item")
_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)(?:\s*\([^()]*\))*\s*$")
_RECBOLE_TYPO = "unkonwn"


def register_reader(name: str) -> Callable[[Reader], Reader]:
    """Decorator registering ``fn(**options) -> (interactions, items, inputs)`` as reader ``name``."""

    def deco(fn: Reader) -> Reader:
        READERS[name] = fn
        return fn

    return deco


def reader_options(name: str) -> list[str]:
    """The option names reader ``name`` accepts (raises ConfigError for an unknown reader)."""
    if name not in READERS:
        raise ConfigError(f"unknown reader {name!r}; valid readers: {sorted(READERS)}")
    return [p for p in inspect.signature(READERS[name]).parameters]


def check_reader_options(name: str, options: dict[str, Any], where: str = "reader options") -> None:
    """Raise ConfigError for an unknown reader, an unknown option, or a missing required option."""
    valid = reader_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown} for reader {name!r}; valid options: {valid}")
    params = inspect.signature(READERS[name]).parameters
    missing = [p for p, v in params.items() if v.default is inspect.Parameter.empty and p not in options]
    if missing:
        raise ConfigError(f"{where}: reader {name!r} needs option(s) {missing}")


def read_source(name: str, options: dict[str, Any]) -> ReaderResult:
    """Run reader ``name`` with ``options`` (checked first)."""
    check_reader_options(name, options)
    log.info("reading %s data (%s)", name, ", ".join(f"{k}={v}" for k, v in options.items()))
    return READERS[name](**options)


def _inputs(*paths: Path | None) -> dict[str, str]:
    return {str(p): sha256_file(p) for p in paths if p is not None}


def _interactions(t: RawTable, user: Any, item: Any, timestamp: Any, rating: Any = None, ts_format: str = "numeric") -> pd.DataFrame:
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


def _blank_to_none(v: Any) -> Any:
    if isinstance(v, str):
        v = v.strip()
        return v or None
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


# --------------------------------------------------------------------------------------- MovieLens


def split_title_year(raw: str) -> tuple[str, int | None]:
    """``"Toy Story (1995)"`` -> ``("Toy Story", 1995)``; trailing tags such as ``(V)`` are dropped."""
    raw = " ".join(str(raw).split())
    m = _TITLE_YEAR.match(raw)
    if m is None:
        return raw, None
    return m.group("title"), int(m.group("year"))


def movie_attrs(full_title: str, genres: list[str], release_date: str = "") -> dict[str, Any]:
    """Canonical MovieLens attributes: ``title`` (no year), ``year`` (int or None), ``genres``."""
    title, year = split_title_year(full_title)
    if year is None:
        m = re.search(r"(\d{4})\s*$", release_date or "")
        year = int(m.group(1)) if m else None
    return {"title": title or None, "year": year, "genres": genres}


def _items_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """An item DataFrame of python objects (no numpy scalars, no NaN for missing ints)."""
    cols: dict[str, list[Any]] = {}
    for r in rows:
        for k in r:
            cols.setdefault(k, [])
    data = {k: pd.Series([r.get(k) for r in rows], dtype=object) for k in cols}
    return pd.DataFrame(data)


def read_ml100k_grouplens(directory: Path) -> ReaderResult:
    """ml-100k as distributed by GroupLens: ``u.data`` (tab) and ``u.item`` (pipe, latin-1)."""
    data, item = directory / "u.data", directory / "u.item"
    t = read_delimited(data, "\t", header=False, expected_columns=4, quoting=False)
    inter = _interactions(t, 0, 1, 3, 2)
    it = read_delimited(item, "|", header=False, expected_columns=5 + len(ML100K_GENRES), encoding="latin-1", quoting=False)
    rows = []
    for r, rec in enumerate(it.df.itertuples(index=False, name=None)):
        flags = rec[5 : 5 + len(ML100K_GENRES)]
        if any(f.strip() not in ("0", "1") for f in flags):
            raise DataError(f"{it.where(r)}: genre flags must be 0 or 1, got {'|'.join(flags)!r}")
        genres = [g for g, f in zip(ML100K_GENRES, flags, strict=True) if f.strip() == "1"]
        rows.append({"item": rec[0].strip(), **movie_attrs(rec[1], genres, rec[2])})
    return inter, _items_frame(rows), _inputs(data, item)


def recbole_ml100k_attrs(movie_title: str, release_year: str, classes: str) -> dict[str, Any]:
    """Canonical attributes of one ml-100k row of RecBole's ``ml-100k.item``.

    RecBole cut the GroupLens title at its last parenthesis, so the title is rebuilt and parsed
    exactly as a GroupLens one; the ``unkonwn`` typo becomes ``unknown`` (title) or missing (year).
    """
    title = (movie_title or "").strip()
    year = (release_year or "").strip()
    if title == _RECBOLE_TYPO:
        title = "unknown"
    full = f"{title} ({year})" if year and year != _RECBOLE_TYPO else title
    tokens = ["unknown" if g == _RECBOLE_TYPO else g for g in (classes or "").split()]
    order = {g: i for i, g in enumerate(ML100K_GENRES)}
    genres = sorted(dict.fromkeys(tokens), key=lambda g: order.get(g, len(order)))
    return movie_attrs(full, genres)


def _find_ml100k(path: Path, source: str) -> tuple[Path, str]:
    candidates = [path, path / "ml-100k"]
    for d in candidates:
        meta = d / "source.json"
        if source == "auto" and meta.is_file():
            try:
                recorded = json.loads(meta.read_text()).get("source")
            except (OSError, ValueError):
                recorded = None
            if recorded in ("grouplens", "recbole"):
                return d, recorded
        for name, files in (("grouplens", GROUPLENS_FILES), ("recbole", RECBOLE_FILES)):
            if source in ("auto", name) and all((d / f).is_file() for f in files):
                return d, name
    want = {"grouplens": " and ".join(GROUPLENS_FILES), "recbole": " and ".join(RECBOLE_FILES)}
    wanted = want.get(source) or f"{want['grouplens']} (GroupLens) or {want['recbole']} (RecBole)"
    raise DataError(
        f"{path}: no ml-100k files found (looked in {', '.join(str(c) for c in candidates)} for {wanted}); "
        f"run `darec data download ml-100k --dir {path.parent if path.name == 'ml-100k' else path}`"
    )


@register_reader("ml-100k")
def read_ml100k(path: str, source: str = "auto") -> ReaderResult:
    """MovieLens 100k from a directory holding either source's files.

    ``path``: the directory (or its parent holding ``ml-100k/``). ``source``: ``auto`` (what
    ``source.json`` records, else whichever files are there), ``grouplens`` or ``recbole``.
    """
    if source not in ("auto", "grouplens", "recbole"):
        raise ConfigError(f"ml-100k reader: source must be auto, grouplens or recbole, got {source!r}")
    directory, found = _find_ml100k(Path(path), source)
    log.info("ml-100k: reading the %s files in %s", found, directory)
    if found == "grouplens":
        return read_ml100k_grouplens(directory)
    return read_recbole(str(directory / RECBOLE_FILES[0]), str(directory / RECBOLE_FILES[1]), flavour="ml100k")


@register_reader("ml-1m")
def read_ml1m(path: str) -> ReaderResult:
    """MovieLens 1M: ``ratings.dat`` (``user::item::rating::ts``) and ``movies.dat`` (latin-1)."""
    base = Path(path)
    d = base / "ml-1m" if not (base / "ratings.dat").exists() and (base / "ml-1m").is_dir() else base
    ratings, movies = d / "ratings.dat", d / "movies.dat"
    text = read_text(ratings, "latin-1").replace("::", "\t")
    t = read_delimited(ratings, "\t", header=False, expected_columns=4, quoting=False, text=text, sep_label="'::'")
    inter = _interactions(t, 0, 1, 3, 2)
    text = read_text(movies, "latin-1").replace("::", "\t")
    m = read_delimited(movies, "\t", header=False, expected_columns=3, quoting=False, text=text, sep_label="'::'")
    rows = [
        {"item": rec[0].strip(), **movie_attrs(rec[1], [g for g in rec[2].strip().split("|") if g])}
        for rec in m.df.itertuples(index=False, name=None)
    ]
    return inter, _items_frame(rows), _inputs(ratings, movies)


# ----------------------------------------------------------------------------------------- RecBole


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
    interactions = _interactions(t, cols["user"], cols["item"], cols["timestamp"], rating)
    if item is None:
        return interactions, None, _inputs(Path(inter))
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
    return interactions, _items_frame(rows), _inputs(Path(inter), Path(item))


from darec.data import readers_generic as _readers_generic  # noqa: E402,F401  (registers amazon, csv)
