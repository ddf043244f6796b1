"""The streaming Amazon 2023 path (integer codes, numpy columns) gives what the in-memory pandas path gave."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from darec.data.coded import CodedInteractions
from darec.data.pipeline import FilterOptions, PrepareOptions, SplitOptions, build_tables
from darec.data.prepare import DataConfig, prepare
from darec.data.dataset import fingerprint_of, PreparedData
from darec.data.readers.registry import read_source
from darec.errors import DataError

# (fingerprint, text hash) that the pandas in-memory pipeline (commit d93b1ec) wrote for this file.
PINNED = {
    "default": ("923e8020fd0d5247914f6b27bce61c6d499e12d39706eba748a100f35ca048ef",
                "50bafa765364d4bbbd35b7eaf18e3ba11e2ee1fcf17465fac2502d5ba0c034b2"),
    "filtered": ("802c328f7ce9c6c138f89b21aa864cd6e9b4f3f4ccd2e5411c6fd75729063c2d",
                 "78e0384f7b0544721c638d84a995a74838a3223a45ed9afedca1ebd930d42cbc"),
    "keep_all_time": ("af8636abdf5edc28fa8c44583aa15174c20e8d6065677485fcc32e596e00daff",
                      "50bafa765364d4bbbd35b7eaf18e3ba11e2ee1fcf17465fac2502d5ba0c034b2"),
    "nometa": ("cef272aa379bfc63e2512e41699ba456c9601c7dfda4766325e60283d246372a",
               "591451f465f5895940b156837a32c3cbc32b4e0be35113b2083e370005e06ce3"),
}
VARIANTS = {
    "default": {},
    "filtered": {"filter": {"rating_threshold": 3, "user_core": 4, "item_core": 3, "duplicates": "keep_last"}},
    "keep_all_time": {"filter": {"duplicates": "keep_all"},
                      "split": {"kind": "time", "valid_start": 1600000000, "test_start": 1630000000}},
    "nometa": {},
}


@pytest.fixture(scope="module")
def amazon_files(tmp_path_factory, benchmark_script) -> tuple[Path, Path]:
    return benchmark_script("amazon_synth").write_amazon2023(tmp_path_factory.mktemp("amz"), 3000, seed=1, users=300, items=120)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_streaming_equals_in_memory_result(tmp_path: Path, amazon_files, variant: str) -> None:
    reviews, meta = amazon_files
    options = {"reviews": str(reviews)} if variant == "nometa" else {"reviews": str(reviews), "meta": str(meta)}
    cfg = DataConfig.from_dict({"reader": "amazon", "out": str(tmp_path / "out"), "options": options, **VARIANTS[variant]})
    out = prepare(cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (PreparedData(out).fingerprint, manifest["text_hash"]) == PINNED[variant]


def test_coded_rows_and_frame_path_agree(amazon_files) -> None:
    reviews, meta = amazon_files
    inter, items, _ = read_source("amazon", {"reviews": str(reviews), "meta": str(meta)})
    assert isinstance(inter, CodedInteractions) and len(inter) == 3000
    assert inter.user.dtype == np.int32 and inter.item.dtype == np.int32 and inter.timestamp.dtype == np.float64
    frame = inter.to_frame()
    assert len(inter.user_vocab) == frame["user"].nunique() and len(inter.item_vocab) == frame["item"].nunique()
    for opts in (PrepareOptions(), PrepareOptions(filter=FilterOptions(item_core=4, duplicates="keep_last")),
                 PrepareOptions(split=SplitOptions(kind="time", valid_start=1.6e9, test_start=1.63e9))):
        a, b = build_tables(inter, items, opts), build_tables(frame, items, opts)
        assert fingerprint_of(a) == fingerprint_of(b) and a.stats == b.stats and a.sentences == b.sentences


def test_bad_line_in_gzip_names_file_and_line_and_leaves_nothing(tmp_path: Path, amazon_files) -> None:
    reviews, _ = amazon_files
    lines = gzip.decompress(reviews.read_bytes()).decode().splitlines(keepends=True)
    lines[1233] = lines[1233].replace('"timestamp": ', '"timestamp": "soon", "x": ')
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress("".join(lines).encode()))
    cfg = DataConfig.from_dict({"reader": "amazon", "out": str(tmp_path / "out"), "options": {"reviews": str(bad)}})
    with pytest.raises(DataError, match=r"bad\.jsonl\.gz, line 1234: timestamp 'soon'"):
        prepare(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl.gz"]


def test_prepare_scale_benchmark_smoke(tmp_path: Path, benchmark_script) -> None:
    bench = benchmark_script("prepare_scale")
    out = tmp_path / "prepare_scale.json"
    result = bench.main(["--rows", "20000", "--work", str(tmp_path / "work"), "--out", str(out)])
    (run,) = result["runs"]
    assert run["rows"] == 20000 and run["prepared"]["interactions"] > 0 and 0 < run["peak_rss_gb"] < 4
    assert json.loads(out.read_text())["git"]["commit"] and not (tmp_path / "work" / "raw-20000").exists()
