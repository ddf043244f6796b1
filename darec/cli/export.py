"""``darec export-embeddings``: a trained CF model's checkpoint to the safetensors file DARec injects."""

from __future__ import annotations

import argparse
import json

from darec.modules.cf import export_embeddings, sidecar_path


def export_main(argv: list[str]) -> int:
    """``darec export-embeddings --ckpt CKPT --out FILE [--data DIR] [--user-emb]``."""
    p = argparse.ArgumentParser(prog="darec export-embeddings", description=__doc__.split("\n")[0].strip('`'))
    p.add_argument("--ckpt", required=True, help="a checkpoint of a CF source (SASRec, LightGCN, or any model with "
                   "cf_export), or the run directory `darec fit` wrote it to (logs/<name>/version_N): its best*.ckpt")
    p.add_argument("--out", required=True, help="output .safetensors path (the .json sidecar goes beside it)")
    p.add_argument("--data", default=None, help="prepared dataset (default: the one the checkpoint records)")
    p.add_argument("--user-emb", action="store_true", help="LightGCN: also export non-causal user vectors")
    a = p.parse_args(argv)
    path = export_embeddings(a.ckpt, a.out, a.data, a.user_emb)
    meta = json.loads(sidecar_path(path).read_text())
    print(
        f"wrote {path} and {sidecar_path(path).name}: {meta['kind']}, {meta['num_items']} items "
        f"({meta['num_items_with_cf']} with CF), dim {meta['dim']}, fingerprint {meta['fingerprint'][:12]}…"
    )
    return 0
