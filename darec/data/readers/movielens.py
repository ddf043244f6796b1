"""MovieLens readers: ml-100k (GroupLens or RecBole files) and ml-1m, with canonical title / year / genres."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from darec.data.rawio import read_delimited, read_text
from darec.data.readers.columns import file_hashes, interactions_table, items_table
from darec.data.readers.movies import ML100K_GENRES, movie_attrs
from darec.data.readers.recbole import read_recbole
from darec.data.readers.registry import ReaderResult, register_reader
from darec.errors import ConfigError, DataError

log = logging.getLogger(__name__)

GROUPLENS_FILES = ("u.data", "u.item")
RECBOLE_FILES = ("ml-100k.inter", "ml-100k.item")


def read_ml100k_grouplens(directory: Path) -> ReaderResult:
    """ml-100k as distributed by GroupLens: ``u.data`` (tab) and ``u.item`` (pipe, latin-1)."""
    data, item = directory / "u.data", directory / "u.item"
    t = read_delimited(data, "\t", header=False, expected_columns=4, quoting=False)
    inter = interactions_table(t, 0, 1, 3, 2)
    it = read_delimited(item, "|", header=False, expected_columns=5 + len(ML100K_GENRES), encoding="latin-1", quoting=False)
    rows = []
    for r, rec in enumerate(it.df.itertuples(index=False, name=None)):
        flags = rec[5 : 5 + len(ML100K_GENRES)]
        if any(f.strip() not in ("0", "1") for f in flags):
            raise DataError(f"{it.where(r)}: genre flags must be 0 or 1, got {'|'.join(flags)!r}")
        genres = [g for g, f in zip(ML100K_GENRES, flags, strict=True) if f.strip() == "1"]
        rows.append({"item": rec[0].strip(), **movie_attrs(rec[1], genres, rec[2])})
    return inter, items_table(rows), file_hashes(data, item)


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
    inter = interactions_table(t, 0, 1, 3, 2)
    text = read_text(movies, "latin-1").replace("::", "\t")
    m = read_delimited(movies, "\t", header=False, expected_columns=3, quoting=False, text=text, sep_label="'::'")
    rows = [
        {"item": rec[0].strip(), **movie_attrs(rec[1], [g for g in rec[2].strip().split("|") if g])}
        for rec in m.df.itertuples(index=False, name=None)
    ]
    return inter, items_table(rows), file_hashes(ratings, movies)
