"""Each reader on small fixture files; both ml-100k sources give the same canonical data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from darec.data.pipeline import PrepareOptions, TextOptions, build_tables
from darec.data.dataset import fingerprint_of, sha256_file
from darec.data.readers.movielens import read_ml100k
from darec.data.readers.movies import split_title_year
from darec.data.readers.registry import READERS, read_source, register_reader
from darec.errors import ConfigError, DataError

ML_TEXT = PrepareOptions(text=TextOptions(fields=["title", "year", "genres"]))


def _attrs(items: pd.DataFrame) -> dict[str, dict]:
    return {r.pop("item"): r for r in items.to_dict("records")}


@pytest.mark.parametrize(
    "raw, title, year",
    [
        ("Toy Story (1995)", "Toy Story", 1995),
        ("Shawshank Redemption, The (1994)", "Shawshank Redemption, The", 1994),
        ("Metisse (Café au Lait) (1993)", "Metisse (Café au Lait)", 1993),
        ("Land Before Time III: The Time of the Great Giving (1995) (V)", "Land Before Time III: The Time of the Great Giving", 1995),
        ("unknown", "unknown", None),
        ("  Spaced   Out  (2001) ", "Spaced Out", 2001),
    ],
)
def test_split_title_year(raw: str, title: str, year: int | None) -> None:
    assert split_title_year(raw) == (title, year)


def test_ml100k_grouplens(grouplens_dir: Path) -> None:
    inter, items, inputs = read_ml100k(str(grouplens_dir))
    assert list(inter.columns) == ["user", "item", "timestamp", "rating"]
    assert inter.iloc[0].to_dict() == {"user": "196", "item": "1", "timestamp": 881250949.0, "rating": 3.0}
    assert len(inter) == 13
    a = _attrs(items)
    assert a["1"] == {"title": "Toy Story", "year": 1995, "genres": ["Animation", "Children's", "Comedy"]}
    assert a["64"]["title"] == "Shawshank Redemption, The"
    assert a["267"] == {"title": "unknown", "year": None, "genres": ["unknown"]}
    assert a["543"]["title"] == "Misérables, Les"
    assert a["1412"] == {"title": "Land Before Time III: The Time of the Great Giving", "year": 1995, "genres": ["Animation", "Children's"]}
    assert inputs == {str(grouplens_dir / f): sha256_file(grouplens_dir / f) for f in ("u.data", "u.item")}


def test_ml100k_year_from_release_date(tmp_path: Path) -> None:
    d = tmp_path / "ml"
    d.mkdir()
    (d / "u.data").write_text("1\t5\t3\t100\n")
    (d / "u.item").write_text("5|No Year Here|01-Jan-1997||url|" + "|".join(["0"] * 8 + ["1"] + ["0"] * 10) + "\n")
    _, items, _ = read_ml100k(str(d))
    assert _attrs(items)["5"] == {"title": "No Year Here", "year": 1997, "genres": ["Drama"]}


def test_ml100k_sources_agree(grouplens_dir: Path, recbole_dir: Path) -> None:
    gi, gm, _ = read_source("ml-100k", {"path": str(grouplens_dir)})
    ri, rm, _ = read_source("ml-100k", {"path": str(recbole_dir)})
    pd.testing.assert_frame_equal(gi, ri)
    assert _attrs(gm) == _attrs(rm)
    g = build_tables(gi, gm, ML_TEXT)
    r = build_tables(ri, rm, ML_TEXT)
    assert g.sentences == r.sentences
    assert g.sentences[g.item_raw_ids.index("1")] == "title: Toy Story; year: 1995; genres: Animation, Children's, Comedy"
    assert g.sentences[g.item_raw_ids.index("267")] == "title: unknown; genres: unknown"
    assert fingerprint_of(g) == fingerprint_of(r)


def test_ml100k_autodetect(grouplens_dir: Path, recbole_dir: Path, tmp_path: Path) -> None:
    _, _, inputs = read_source("ml-100k", {"path": str(recbole_dir.parent)})
    assert list(inputs) == [str(recbole_dir / "ml-100k.inter"), str(recbole_dir / "ml-100k.item")]
    for f in ("ml-100k.inter", "ml-100k.item"):
        (grouplens_dir / f).write_bytes((recbole_dir / f).read_bytes())
    _, _, inputs = read_source("ml-100k", {"path": str(grouplens_dir)})
    assert str(grouplens_dir / "u.data") in inputs
    (grouplens_dir / "source.json").write_text(json.dumps({"source": "recbole"}))
    _, _, inputs = read_source("ml-100k", {"path": str(grouplens_dir)})
    assert str(grouplens_dir / "ml-100k.inter") in inputs
    _, _, inputs = read_source("ml-100k", {"path": str(grouplens_dir), "source": "grouplens"})
    assert str(grouplens_dir / "u.data") in inputs
    with pytest.raises(DataError, match=r"no ml-100k files found.*darec data download ml-100k"):
        read_source("ml-100k", {"path": str(tmp_path / "nowhere")})


def test_ml1m(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    (tmp_path / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
        "2::Misérables, Les (1995)::Drama\n".encode("latin-1")
    )
    inter, items, inputs = read_source("ml-1m", {"path": str(tmp_path)})
    assert inter.to_dict("list") == {
        "user": ["1", "1", "2"], "item": ["1193", "661", "1193"],
        "timestamp": [978300760.0, 978302109.0, 978298413.0], "rating": [5.0, 3.0, 4.0],
    }  # fmt: skip
    a = _attrs(items)
    assert a["661"] == {"title": "James and the Giant Peach", "year": 1996, "genres": ["Animation", "Children's", "Musical"]}
    assert a["2"]["title"] == "Misérables, Les"
    assert len(inputs) == 2


def test_recbole_generic(tmp_path: Path) -> None:
    inter = tmp_path / "x.inter"
    inter.write_text("session:token\tproduct:token\tts:float\n" "s1\tp1\t10\ns1\tp2\t11\ns2\tp1\t12\n")
    item = tmp_path / "x.item"
    item.write_text("product:token\tname:token\ttags:token_seq\tprice:float\n" "p1\tRed Mug\tkitchen mug\t3.5\np2\t\t\t\n")
    df, items, inputs = read_recbole_custom(inter, item)
    assert df.to_dict("list") == {"user": ["s1", "s1", "s2"], "item": ["p1", "p2", "p1"], "timestamp": [10.0, 11.0, 12.0]}
    a = _attrs(items)
    assert a["p1"] == {"name": "Red Mug", "tags": ["kitchen", "mug"], "price": 3.5}
    assert a["p2"] == {"name": None, "tags": [], "price": None}
    assert set(inputs) == {str(inter), str(item)}


def read_recbole_custom(inter: Path, item: Path):
    return read_source(
        "recbole",
        {"inter": str(inter), "item": str(item), "columns": {"user": "session", "item": "product", "timestamp": "ts"}},
    )


def test_recbole_ml100k_flavour_autodetected(recbole_dir: Path) -> None:
    _, items, _ = read_source("recbole", {"inter": str(recbole_dir / "ml-100k.inter"), "item": str(recbole_dir / "ml-100k.item")})
    assert _attrs(items)["267"] == {"title": "unknown", "year": None, "genres": ["unknown"]}
    _, items, _ = read_source(
        "recbole", {"inter": str(recbole_dir / "ml-100k.inter"), "item": str(recbole_dir / "ml-100k.item"), "flavour": "generic"}
    )
    assert _attrs(items)["1"]["movie_title"] == ["Toy", "Story"]


@pytest.mark.parametrize("gz", [False, True])
def test_amazon_2018(tmp_path: Path, jsonl, gz: bool) -> None:
    sfx = ".json.gz" if gz else ".json"
    reviews = jsonl(tmp_path / f"r{sfx}", [
        {"reviewerID": "U1", "asin": "B1", "overall": 5.0, "unixReviewTime": 1400000000, "reviewText": "great"},
        {"reviewerID": "U1", "asin": "B2", "overall": 3.0, "unixReviewTime": 1400000100},
    ], gz)  # fmt: skip
    meta = jsonl(tmp_path / f"m{sfx}", [
        {"asin": "B1", "title": "Lipstick", "brand": "Acme", "categories": [["Beauty", "Makeup"], ["Beauty", "Lips"]]},
        {"asin": "B2", "title": "", "category": ["Beauty", "Skin"]},
        {"asin": "B9", "title": "Cold item", "brand": "Zed"},
    ], gz)  # fmt: skip
    inter, items, inputs = read_source("amazon", {"reviews": str(reviews), "meta": str(meta)})
    assert inter.to_frame().to_dict("list") == {"user": ["U1", "U1"], "item": ["B1", "B2"], "timestamp": [1400000000.0, 1400000100.0], "rating": [5.0, 3.0]}
    a = _attrs(items)
    assert a["B1"] == {"title": "Lipstick", "brand": "Acme", "categories": ["Beauty", "Makeup", "Lips"]}
    assert a["B2"] == {"title": None, "brand": None, "categories": ["Beauty", "Skin"]}
    assert a["B9"]["categories"] == []
    assert list(inputs) == [str(reviews), str(meta)]


def test_amazon_2023_python_literal_meta(tmp_path: Path, jsonl) -> None:
    reviews = jsonl(tmp_path / "r.jsonl", [
        {"user_id": "AX", "parent_asin": "P1", "asin": "A1", "rating": 4.0, "timestamp": 1588615855070},
        {"user_id": "AX", "parent_asin": "P2", "asin": "A2", "rating": 2.0, "timestamp": 1588615855999},
    ])  # fmt: skip
    meta = tmp_path / "m.jsonl"
    meta.write_text(json.dumps({"parent_asin": "P1", "title": "Soap", "store": "CleanCo", "categories": ["Beauty"]}) + "\n"
                    + "{'parent_asin': 'P2', 'title': 'Comb', 'store': None, 'categories': []}\n")  # fmt: skip
    inter, items, _ = read_source("amazon", {"reviews": str(reviews), "meta": str(meta), "flavour": 2023})
    assert inter.timestamp.tolist() == [1588615855.07, 1588615855.999]
    assert _attrs(items) == {"P1": {"title": "Soap", "brand": "CleanCo", "categories": ["Beauty"]},
                             "P2": {"title": "Comb", "brand": None, "categories": []}}  # fmt: skip


def test_csv_mapping_iso_and_items(tmp_path: Path) -> None:
    ev = tmp_path / "events.csv"
    ev.write_text("cust,prod,when,stars\nc1,p1,2024-01-02,5\nc1,p2,2024-01-03T10:00:00Z,4\nc2,p1,2024-01-01,3\n")
    pr = tmp_path / "products.tsv"
    pr.write_text("prod\tname\tcats\tyear\np1\tMug, red\tHome|Kitchen\t2020\np2\tPlate\t\t\n")
    inter, items, _ = read_source("csv", {
        "interactions": str(ev), "columns": {"user": "cust", "item": "prod", "timestamp": "when", "rating": "stars"},
        "timestamp_format": "iso", "items": str(pr), "item_columns": {"title": "name", "categories": "cats", "year": "year"},
        "list_columns": ["categories"],
    })  # fmt: skip
    assert inter["timestamp"].tolist() == [1704153600.0, 1704276000.0, 1704067200.0]
    assert inter["rating"].tolist() == [5.0, 4.0, 3.0]
    a = _attrs(items)
    assert a["p1"] == {"title": "Mug, red", "categories": ["Home", "Kitchen"], "year": "2020"}
    assert a["p2"] == {"title": "Plate", "categories": [], "year": None}


def test_csv_headerless_positions_and_parquet(tmp_path: Path) -> None:
    f = tmp_path / "log.txt"
    f.write_text("u1\ti1\t5\nu1\ti2\t6\n")
    inter, items, _ = read_source("csv", {"interactions": str(f), "header": False, "columns": {"user": 0, "item": 1, "timestamp": 2}})
    assert inter.to_dict("list") == {"user": ["u1", "u1"], "item": ["i1", "i2"], "timestamp": [5.0, 6.0]}
    assert items is None
    pq = tmp_path / "log.parquet"
    pd.DataFrame({"u": [1, 1], "i": [10, 11], "t": [1.5, 2.5]}).to_parquet(pq)
    inter, _, inputs = read_source("csv", {"interactions": str(pq), "columns": {"user": "u", "item": "i", "timestamp": "t"}})
    assert inter.to_dict("list") == {"user": ["1", "1"], "item": ["10", "11"], "timestamp": [1.5, 2.5]}
    assert list(inputs) == [str(pq)]


def test_csv_strptime_and_ms(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text("user,item,timestamp\na,x,02/01/2024\n")
    inter, _, _ = read_source("csv", {"interactions": str(f), "timestamp_format": "%d/%m/%Y"})
    assert inter["timestamp"].tolist() == [1704153600.0]
    f.write_text("user,item,timestamp\na,x,1704153600500\n")
    inter, _, _ = read_source("csv", {"interactions": str(f), "timestamp_format": "ms"})
    assert inter["timestamp"].tolist() == [1704153600.5]


def test_registry(tmp_path: Path) -> None:
    assert {"ml-100k", "ml-1m", "recbole", "amazon", "csv"} <= set(READERS)

    @register_reader("toy-test")
    def toy(n: int, prefix: str = "u"):
        df = pd.DataFrame({"user": [f"{prefix}{k % 2}" for k in range(n)], "item": [str(k) for k in range(n)], "timestamp": range(n)})
        return df, None, {}

    try:
        inter, items, _ = read_source("toy-test", {"n": 4})
        assert inter["user"].tolist() == ["u0", "u1", "u0", "u1"] and items is None
        with pytest.raises(ConfigError, match=r"unknown option\(s\) \['size'\].*valid options: \['n', 'prefix'\]"):
            read_source("toy-test", {"size": 3})
        with pytest.raises(ConfigError, match=r"needs option\(s\) \['n'\]"):
            read_source("toy-test", {})
    finally:
        READERS.pop("toy-test")
    with pytest.raises(ConfigError, match="unknown reader 'nope'.*valid readers"):
        read_source("nope", {})
