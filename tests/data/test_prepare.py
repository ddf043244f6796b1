"""YAML config, prepare() with its manifest and cache, and the `darec data` CLI."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import yaml

from darec.cli.data import data_main
from darec.data.prepare import DataConfig, load_config, prepare
from darec.data.dataset import PreparedData, sha256_file
from darec.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, grouplens_dir: Path, **changes) -> Path:
    cfg = yaml.safe_load((ROOT / "configs/data/ml100k.yaml").read_text())
    cfg["options"]["path"] = str(grouplens_dir)
    cfg["out"] = str(tmp_path / "prepared")
    for k, v in changes.items():
        cfg[k] = v
    p = tmp_path / "data.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_shipped_configs_load() -> None:
    for p in sorted((ROOT / "configs/data").glob("*.yaml")):
        cfg = load_config(p)
        assert cfg.reader in ("ml-100k", "ml-1m", "amazon", "csv")
        for line in p.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#") and not line.rstrip().endswith(":"):
                assert "#" in line, f"{p.name}: key without a comment: {line!r}"
    ml = load_config(ROOT / "configs/data/ml100k.yaml")
    assert (ml.options["path"], ml.out) == ("data/raw/ml-100k", "data/ml-100k")
    assert ml.text.fields == ["title", "year", "genres"]
    assert (ml.filter.user_core, ml.filter.item_core, ml.filter.rating_threshold) == (0, 0, None)
    csv = load_config(ROOT / "configs/data/csv_example.yaml")
    assert csv.split.kind == "time" and csv.split.valid_start == 1704067200.0


@pytest.mark.parametrize(
    "doc, pattern",
    [
        ({"reader": "csv", "out": "o", "options": {"interactions": "x"}, "bogus": 1}, r"unknown key\(s\) \['bogus'\]; valid keys: \['reader', 'out', 'options'"),
        ({"reader": "csv", "out": "o", "options": {"interactions": "x"}, "filter": {"kcore": 5}}, r"filter: unknown key\(s\) \['kcore'\]; valid keys: \['rating_threshold'"),
        ({"reader": "csv", "out": "o", "options": {"interactions": "x", "delim": ","}}, r"unknown option\(s\) \['delim'\].*valid options: \['interactions', 'columns'"),
        ({"reader": "csv", "out": "o", "options": {}}, r"needs option\(s\) \['interactions'\]"),
        ({"reader": "nope", "out": "o"}, r"unknown reader 'nope'"),
        ({"reader": "csv", "options": {"interactions": "x"}}, r"`out` is required"),
        ({"reader": "csv", "out": "o", "options": {"interactions": "x"}, "filter": {"user_core": "five"}}, r"filter.user_core: expected an integer"),
        ({"reader": "csv", "out": "o", "options": {"interactions": "x"}, "filter": {"duplicates": "drop"}}, r"'drop' is not one of \['keep_first'"),
        ({"reader": "csv", "out": "o", "options": {"interactions": "x"}, "split": {"kind": "time", "valid_start": "soon", "test_start": 5}}, r"split.valid_start: 'soon' is neither a number nor an ISO date"),
        ({"reader": "csv", "out": "o", "options": {"interactions": "x"}, "split": {"kind": "time"}}, r"needs split.valid_start and split.test_start"),
    ],
)
def test_config_validation(doc: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        DataConfig.from_dict(doc)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("reader: csv\nout: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml, line \d+: invalid YAML"):
        load_config(bad)
    bad.write_text("")
    with pytest.raises(ConfigError, match="the config file is empty"):
        load_config(bad)


def test_prepare_manifest_cache_and_rebuild(tmp_path: Path, grouplens_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(_config(tmp_path, grouplens_dir))
    out = prepare(cfg)
    data = PreparedData(out)
    man = data.manifest
    assert man["config"]["reader"] == "ml-100k" and man["config"]["text"]["fields"] == ["title", "year", "genres"]
    assert man["inputs"] == {str(grouplens_dir / f): sha256_file(grouplens_dir / f) for f in ("u.data", "u.item")}
    assert len(man["fingerprint"]) == 64 and len(man["text_hash"]) == 64
    assert (data.num_users, data.num_items) == (3, 8)
    assert data.stats["interactions"] == 11 and data.stats["dropped"]["user_too_short"] == 2
    fp = data.fingerprint
    toy = data.item_id("1")
    assert data.sentences[toy] == "title: Toy Story; year: 1995; genres: Animation, Children's, Comedy"
    assert data.item_raw_ids[toy] == "1" and data.user_raw_ids[data.user_id("196")] == "196"

    mtime = (out / "manifest.json").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="darec"):
        assert prepare(load_config(_config(tmp_path, grouplens_dir))) == out
    assert "up to date" in caplog.text
    assert (out / "manifest.json").stat().st_mtime_ns == mtime

    caplog.clear()
    changed = load_config(_config(tmp_path, grouplens_dir, text={"fields": ["title"]}))
    prepare(changed)
    again = PreparedData(out)
    assert again.fingerprint == fp  # text only: same ids and splits
    assert again.text_hash != man["text_hash"] and again.sentences[toy] == "title: Toy Story"

    with open(grouplens_dir / "u.data", "a") as f:
        f.write("22\t2\t4\t878887119\n")
    prepare(changed)
    rebuilt = PreparedData(out)
    assert rebuilt.fingerprint != fp and rebuilt.stats["interactions"] == 12
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]


def test_prepare_force_and_out_override(tmp_path: Path, grouplens_dir: Path) -> None:
    cfg = load_config(_config(tmp_path, grouplens_dir))
    other = tmp_path / "elsewhere"
    assert prepare(cfg, out=other) == other
    assert PreparedData(other).manifest["config"]["out"] == str(other)
    mtime = (other / "manifest.json").stat().st_mtime_ns
    os.utime(other / "manifest.json", ns=(mtime - 10**9, mtime - 10**9))
    prepare(cfg, out=other, force=True)
    assert (other / "manifest.json").stat().st_mtime_ns > mtime - 10**9


def test_cli_prepare_stats_synth(tmp_path: Path, grouplens_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, grouplens_dir)
    assert data_main(["-q", "prepare", "--config", str(cfg)]) == 0
    assert "prepared dataset:" in capsys.readouterr().out
    assert data_main(["stats", str(tmp_path / "prepared")]) == 0
    out = capsys.readouterr().out
    for label in ("users", "items (catalogue)", "cold items", "interactions", "density", "train interactions",
                  "validation interactions", "test interactions", "sequence length", "dropped: user too short"):  # fmt: skip
        assert label in out
    assert "median" in out
    assert data_main(["stats", "--json", str(tmp_path / "prepared")]) == 0
    assert json.loads(capsys.readouterr().out)["users"] == 3
    assert data_main(["-q", "synth", "--out", str(tmp_path / "syn"), "--users", "30", "--items", "20", "--cold", "3", "--seed", "1"]) == 0
    syn = PreparedData(tmp_path / "syn")
    assert (syn.num_users, syn.num_items, syn.num_cold) == (30, 20, 3)


def test_cli_errors_exit_2_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert data_main(["stats", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a darec prepared dataset" in err and "Traceback" not in err
    assert data_main(["prepare", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "error: " in capsys.readouterr().err
    assert data_main(["synth", "--out", str(tmp_path / "s"), "--clusters", "40"]) == 2
    assert "num_clusters" in capsys.readouterr().err
    assert data_main(["--help"]) == 0
    assert "download" in capsys.readouterr().out
    assert data_main(["frobnicate"]) == 2


def test_darec_data_prepare_prints_each_message_once(tmp_path: Path, grouplens_dir: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from darec.cli.main import main

    cfg = _config(tmp_path, grouplens_dir)
    assert main(["data", "prepare", "--config", str(cfg)]) == 0
    captured = capsys.readouterr()
    out, err = captured.out.splitlines(), captured.err.splitlines()
    assert out == [f"prepared dataset: {tmp_path / 'prepared'}"]
    assert err[:4] == [f"reading ml-100k data (path={grouplens_dir}, source=auto)",
                       f"ml-100k: reading the grouplens files in {grouplens_dir}",
                       f"{grouplens_dir / 'u.data'}: 13 interactions read; filtering and splitting",
                       f"wrote {tmp_path / 'prepared'} (fingerprint {PreparedData(tmp_path / 'prepared').fingerprint[:12]})"]
    stats = err[4:]  # the stats table, once: every row label appears on exactly one line
    labels = [line.split("  ")[1] if line.startswith("  ") else line for line in stats]
    assert labels and len(labels) == len(set(labels)) and sum(line.strip().startswith("users ") for line in stats) == 1
    assert not [line for line in out + err if line.startswith(("INFO", "WARNING"))]
    # a second run finds the output up to date and says so, once
    assert main(["data", "prepare", "--config", str(cfg)]) == 0
    again = capsys.readouterr()
    assert again.err.splitlines() == [f"{tmp_path / 'prepared'} is up to date (same config and input sha256); reusing it"]
