"""Small fixture files for the data tests, written into tmp_path.

The ml-100k fixtures hold the same movies in GroupLens format (``u.data``/``u.item``, latin-1)
and in RecBole format (``ml-100k.inter``/``ml-100k.item``, copied from the recbole 1.2.1 wheel).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]  # fmt: skip


CH = "Children's"


def _flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRES)


U_ITEM = [
    f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|{_flags('Animation', CH, 'Comedy')}",
    f"2|GoldenEye (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?GoldenEye%20(1995)|{_flags('Action', 'Adventure', 'Thriller')}",
    f"3|Four Rooms (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Four%20Rooms%20(1995)|{_flags('Thriller')}",
    f"64|Shawshank Redemption, The (1994)|01-Jan-1994||http://us.imdb.com/M/title-exact?Shawshank%20Redemption,%20The%20(1994)|{_flags('Drama')}",
    f"267|unknown||||{_flags('unknown')}",
    f"543|Misérables, Les (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Mis%E9rables,%20Les%20(1995)|{_flags('Drama', 'Musical')}",
    f"1373|Good Morning (1971)|4-Feb-1971||http://us.imdb.com/M/title-exact?Ohayo%20(1959)|{_flags('unknown')}",
    f"1412|Land Before Time III: The Time of the Great Giving (1995) (V)|01-Jan-1995||http://us.imdb.com/M/title-exact?Land%20Before%20Time%20III|{_flags('Animation', CH)}",
]
RECBOLE_ITEM = [
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
    "1\tToy Story\t1995\tAnimation Children's Comedy",
    "2\tGoldenEye\t1995\tAction Adventure Thriller",
    "3\tFour Rooms\t1995\tThriller",
    "64\tShawshank Redemption, The\t1994\tDrama",
    "267\tunkonwn\tunkonwn\tunknown",
    "543\tMisérables, Les\t1995\tDrama Musical",
    "1373\tGood Morning\t1971\tunknown",
    "1412\tLand Before Time III: The Time of the Great Giving (1995)\tV\tAnimation Children's",
]
# user, item, rating, timestamp; user 7's last two share a timestamp (ties keep row order).
RATINGS = [
    ("196", "1", 3, 881250949), ("196", "2", 4, 881250950), ("196", "64", 5, 881250951), ("196", "543", 2, 881250952),
    ("22", "3", 1, 878887116), ("22", "267", 2, 878887117), ("22", "1", 5, 878887118),
    ("7", "1412", 4, 891000000), ("7", "1373", 3, 891000001), ("7", "2", 5, 891000002), ("7", "64", 4, 891000002),
    ("9", "543", 4, 880000000), ("9", "3", 4, 880000001),
]  # fmt: skip


@pytest.fixture
def grouplens_dir(tmp_path: Path) -> Path:
    d = tmp_path / "grouplens" / "ml-100k"
    d.mkdir(parents=True)
    (d / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS))
    (d / "u.item").write_bytes(("\n".join(U_ITEM) + "\n").encode("latin-1"))
    return d


@pytest.fixture
def recbole_dir(tmp_path: Path) -> Path:
    d = tmp_path / "recbole" / "ml-100k"
    d.mkdir(parents=True)
    head = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    (d / "ml-100k.inter").write_text(head + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS))
    (d / "ml-100k.item").write_text("\n".join(RECBOLE_ITEM) + "\n", encoding="utf-8")
    return d


def write_jsonl(path: Path, records: list[dict], gz: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


@pytest.fixture
def jsonl():
    """``jsonl(path, records, gz=False)`` writes JSON lines (gzipped when ``gz``)."""
    return write_jsonl
