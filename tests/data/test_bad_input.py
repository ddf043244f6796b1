"""Bad input gives a DataError naming the file (and line / column), and leaves nothing behind."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml

from darec.data import dataset
from darec.cli.data import data_main
from darec.data.prepare import DataConfig, prepare
from darec.data.readers.registry import read_source
from darec.errors import DataError


def _csv(path: Path, text: str, **options) -> pytest.ExceptionInfo:
    path.write_text(text)
    with pytest.raises(DataError) as e:
        read_source("csv", {"interactions": str(path), **options})
    return e


def _msg(e: pytest.ExceptionInfo) -> str:
    return str(e.value)


def test_empty_and_header_only(tmp_path: Path) -> None:
    f = tmp_path / "events.csv"
    assert _msg(_csv(f, "")) == f"{f}: the file is empty"
    assert _msg(_csv(f, "\n  \n")) == f"{f}: the file is empty"
    assert _msg(_csv(f, "user,item,timestamp\n")) == f"{f}: no data rows (the file has only a header line)"
    d = tmp_path / "ml"
    d.mkdir()
    (d / "u.data").write_text("")
    (d / "u.item").write_text("1|A (1990)|||u|" + "|".join("0" * 19) + "\n")
    with pytest.raises(DataError, match=rf"^{d / 'u.data'}: the file is empty$"):
        read_source("ml-100k", {"path": str(d)})


def test_missing_column(tmp_path: Path) -> None:
    f = tmp_path / "events.csv"
    e = _csv(f, "user,item,time\na,b,1\n")
    assert _msg(e) == f"{f}: missing required column(s) ['timestamp'] (columns found: ['user', 'item', 'time'])"
    inter = tmp_path / "x.inter"
    inter.write_text("user_id:token\titem_id:token\nu\ti\n")
    with pytest.raises(DataError, match=rf"{inter}: missing required column\(s\) \['timestamp'\]"):
        read_source("recbole", {"inter": str(inter)})


@pytest.mark.parametrize("value", ["abc", "nan", "", "inf"])
def test_bad_timestamp_names_line(tmp_path: Path, value: str) -> None:
    f = tmp_path / "events.csv"
    e = _csv(f, f"user,item,timestamp\na,x,1\n\nb,y,{value}\n")
    assert _msg(e) == f"{f}, line 4, column 'timestamp': timestamp {value!r} is not a number"


def test_bad_iso_date_and_rating(tmp_path: Path) -> None:
    f = tmp_path / "events.csv"
    e = _csv(f, "user,item,timestamp\na,x,2024-01-01\na,y,yesterday\n", timestamp_format="iso")
    assert _msg(e) == f"{f}, line 3, column 'timestamp': timestamp 'yesterday' is not a date/time (iso)"
    e = _csv(f, "user,item,timestamp,r\na,x,1,five\n", columns={"rating": "r"})
    assert "line 2, column 'r': rating 'five' is not a number" in _msg(e)


def test_empty_ids(tmp_path: Path) -> None:
    f = tmp_path / "events.csv"
    assert _msg(_csv(f, "user,item,timestamp\na,x,1\n ,y,2\n")) == f"{f}, line 3, column 'user': empty user id"


def test_wrong_delimiter(tmp_path: Path) -> None:
    f = tmp_path / "events.tsv"
    e = _csv(f, "user,item,timestamp\na,x,1\n")
    assert _msg(e).startswith(f"{f}, line 1: expected 3 columns including ['user', 'item', 'timestamp'], found 1")
    assert "comma-separated" in _msg(e) and "check the delimiter" in _msg(e)
    d = tmp_path / "ml"
    d.mkdir()
    (d / "u.data").write_text("196,242,3,881250949\n")
    (d / "u.item").write_text("x\n")
    with pytest.raises(DataError, match=rf"{d / 'u.data'}, line 1: expected 4 columns separated by tab, found 1; check the delimiter"):
        read_source("ml-100k", {"path": str(d)})


def test_too_many_fields_names_line(tmp_path: Path) -> None:
    f = tmp_path / "events.csv"
    e = _csv(f, "user,item,timestamp\na,x,1\nb,y,2,extra\n")
    assert _msg(e).startswith(f"{f}, line 3: cannot parse (Expected 3 fields in line 3, saw 4)")


def test_bad_encoding_names_offset_and_line(tmp_path: Path) -> None:
    f = tmp_path / "events.csv"
    f.write_bytes(b"user,item,timestamp\na,x,1\nb,caf\xe9,2\n")
    with pytest.raises(DataError) as e:
        read_source("csv", {"interactions": str(f)})
    assert _msg(e) == f"{f}, line 3: not valid utf-8 (byte offset 31: b'\\xe9'); set the reader's `encoding` option (e.g. latin-1)"
    inter, _, _ = read_source("csv", {"interactions": str(f), "encoding": "latin-1"})
    assert inter["item"].tolist() == ["x", "café"]


def test_bad_encoding_in_json_lines(tmp_path: Path) -> None:
    f = tmp_path / "reviews.jsonl"
    f.write_bytes(b'{"reviewerID": "a", "asin": "b", "unixReviewTime": 1}\n{"reviewerID": "\xff"}\n')
    with pytest.raises(DataError, match=rf"^{f}, line 2: not valid utf-8"):
        read_source("amazon", {"reviews": str(f)})


def test_truncated_gzip(tmp_path: Path) -> None:
    rows = "".join(json.dumps({"reviewerID": f"u{k}", "asin": f"i{k % 7}", "unixReviewTime": k, "overall": 5}) + "\n" for k in range(3000))
    data = gzip.compress(rows.encode())
    f = tmp_path / "reviews.json.gz"
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"^{f}, after line \d+: truncated or corrupt gzip file"):
        read_source("amazon", {"reviews": str(f)})
    c = tmp_path / "events.csv.gz"
    c.write_bytes(gzip.compress(b"user,item,timestamp\n" + b"a,x,1\n" * 5000)[:-20])
    with pytest.raises(DataError, match=rf"^{c}: truncated or corrupt gzip file"):
        read_source("csv", {"interactions": str(c)})
    n = tmp_path / "nogzip.csv.gz"
    n.write_text("user,item,timestamp\n")
    with pytest.raises(DataError, match=rf"^{n}: truncated or corrupt gzip file"):
        read_source("csv", {"interactions": str(n)})


def test_malformed_json_and_missing_fields(tmp_path: Path) -> None:
    f = tmp_path / "reviews.jsonl"
    f.write_text('{"reviewerID": "a", "asin": "b", "unixReviewTime": 1}\n\n{"reviewerID": "a", "asin": \n')
    with pytest.raises(DataError, match=rf"^{f}, line 3: malformed JSON \(Expecting value at column 29\)$"):
        read_source("amazon", {"reviews": str(f)})
    f.write_text('{"reviewerID": "a", "asin": "b", "unixReviewTime": 1}\n{"reviewerID": "a", "unixReviewTime": 2}\n')
    with pytest.raises(DataError, match=rf"^{f}, line 2: missing field 'asin' \(item id\)$"):
        read_source("amazon", {"reviews": str(f)})
    f.write_text('{"reviewerID": "a", "asin": "b", "unixReviewTime": "soon"}\n')
    with pytest.raises(DataError, match=rf"^{f}, line 1: timestamp 'soon' \(field 'unixReviewTime'\) is not a number$"):
        read_source("amazon", {"reviews": str(f)})
    f.write_text('{"who": "a"}\n')
    with pytest.raises(DataError, match=r"cannot tell the Amazon dump's year.*flavour: 2018"):
        read_source("amazon", {"reviews": str(f)})
    f.write_text("[1, 2]\n")
    with pytest.raises(DataError, match=rf"^{f}, line 1: expected a JSON object, got list$"):
        read_source("amazon", {"reviews": str(f)})


def test_missing_file_and_bad_parquet(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"^{tmp_path / 'nope.csv'}: file not found$"):
        read_source("csv", {"interactions": str(tmp_path / "nope.csv")})
    p = tmp_path / "log.parquet"
    p.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=rf"^{p}: cannot read as Parquet"):
        read_source("csv", {"interactions": str(p)})


def _cfg(tmp_path: Path, text: str, **extra) -> DataConfig:
    f = tmp_path / "events.csv"
    f.write_text(text)
    return DataConfig.from_dict({"reader": "csv", "out": str(tmp_path / "out"), "options": {"interactions": str(f)}, **extra})


def test_too_few_items_after_filtering(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "user,item,timestamp\na,x,1\na,y,2\na,z,3\nb,x,1\nb,y,2\nb,w,3\n", filter={"item_core": 3})
    with pytest.raises(DataError, match=rf"^{tmp_path / 'events.csv'}: fewer than 2 items are left after filtering"):
        prepare(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.csv"]


def test_foreign_output_directory_untouched(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "user,item,timestamp\na,x,1\na,y,2\na,z,3\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match=rf"^{out}: output directory exists and is not a darec prepared dataset"):
        prepare(cfg)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    with pytest.raises(DataError, match="is not a darec prepared dataset"):
        dataset.save_prepared(None, out, {}, {})  # type: ignore[arg-type]


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(tmp_path, "user,item,timestamp\na,x,1\na,y,2\na,z,3\nb,x,1\nb,y,2\nb,z,3\n")
    real = dataset.fingerprint_of

    def boom(tables):
        raise OSError("disk full")

    monkeypatch.setattr(dataset, "fingerprint_of", boom)
    with pytest.raises(OSError, match="disk full"):
        prepare(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.csv"]
    monkeypatch.setattr(dataset, "fingerprint_of", real)
    out = prepare(cfg)
    manifest = (out / "manifest.json").read_text()
    monkeypatch.setattr(dataset, "fingerprint_of", boom)
    with pytest.raises(OSError):
        prepare(cfg, force=True)
    assert (out / "manifest.json").read_text() == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.csv", "out"]


def test_cli_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "events.csv").write_text("user;item;timestamp\na;x;1\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"reader": "csv", "out": str(tmp_path / "o"), "options": {"interactions": str(tmp_path / "events.csv")}}))
    assert data_main(["-q", "prepare", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'events.csv'}, line 1: expected 3 columns") and "Traceback" not in err
    assert not (tmp_path / "o").exists()
