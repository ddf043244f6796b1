"""``darec recommend`` (top-k for a history of raw item ids) and ``darec export-item-vectors`` (for an ANN index)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from darec.errors import ConfigError, DataError
from darec.recommend import Recommender, export_item_vectors


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def format_table(recs: list[dict[str, Any]]) -> str:
    """The recommendations as a table with a header line."""
    width = max([len("item id"), *(len(r["raw_id"]) for r in recs)])
    lines = [f"{'rank':>4}  {'item id':>{width}}  {'score':>9}  title"]
    for rank, r in enumerate(recs, 1):
        lines.append(f"{rank:>4}  {r['raw_id']:>{width}}  {r['score']:9.3f}  {r['title']}{'  (cold)' if r['cold'] else ''}")
    return "\n".join(lines)


def recommend_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="darec recommend",
                                description="Top-k items for a history of raw item ids, from a SASRec, LightGCN, "
                                            "popularity or DARec checkpoint.")
    p.add_argument("--ckpt", required=True, help="a checkpoint written by darec fit (any model)")
    p.add_argument("--history", required=True, help='comma-separated raw item ids, oldest first, e.g. "1,50,181"')
    p.add_argument("--k", type=_positive_int, default=10, help="how many items (default 10)")
    p.add_argument("--include-cold", action="store_true", help="also rank items with text but no training interaction (DARec)")
    p.add_argument("--data", default=None, help="prepared dataset, only for checkpoints that do not carry their item ids")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args(argv)
    history = [h.strip() for h in a.history.split(",") if h.strip()]
    if not history:
        raise DataError("--history is empty; give comma-separated raw item ids, oldest first")
    if not Path(a.ckpt).is_file():
        raise ConfigError(f"{a.ckpt}: no such checkpoint")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rec = Recommender.from_checkpoint(a.ckpt, a.data)
    out = rec.recommend(history, a.k, a.include_cold)
    print(json.dumps(out) if a.json else format_table(out))
    return 0


def export_item_vectors_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="darec export-item-vectors", description=export_item_vectors.__doc__)
    p.add_argument("--ckpt", required=True, help="a checkpoint written by darec fit (any model)")
    p.add_argument("--out", required=True, help="output .safetensors (a .json sidecar is written beside it)")
    p.add_argument("--no-cold", action="store_true", help="only the evaluation catalogue")
    p.add_argument("--data", default=None, help="prepared dataset, only for checkpoints that do not carry their item ids")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = export_item_vectors(a.ckpt, a.out, include_cold=not a.no_cold, data_dir=a.data)
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0
