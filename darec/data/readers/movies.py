"""What a movie item's attributes are: ``title`` (no year), ``year``, ``genres``, from MovieLens or RecBole rows."""

from __future__ import annotations

import re
from typing import Any

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
"""The 19 genre flags of ml-100k's ``u.item``, in file order."""

_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)(?:\s*\([^()]*\))*\s*$")
RECBOLE_TYPO = "unkonwn"
"""RecBole's spelling of "unknown" in its ml-100k files."""


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


def recbole_ml100k_attrs(movie_title: str, release_year: str, classes: str) -> dict[str, Any]:
    """Canonical attributes of one ml-100k row of RecBole's ``ml-100k.item``.

    RecBole cut the GroupLens title at its last parenthesis, so the title is rebuilt and parsed
    exactly as a GroupLens one; the ``unkonwn`` typo becomes ``unknown`` (title) or missing (year).
    """
    title = (movie_title or "").strip()
    year = (release_year or "").strip()
    if title == RECBOLE_TYPO:
        title = "unknown"
    full = f"{title} ({year})" if year and year != RECBOLE_TYPO else title
    tokens = ["unknown" if g == RECBOLE_TYPO else g for g in (classes or "").split()]
    order = {g: i for i, g in enumerate(ML100K_GENRES)}
    genres = sorted(dict.fromkeys(tokens), key=lambda g: order.get(g, len(order)))
    return movie_attrs(full, genres)
