"""DARec ablation on ml-100k (MiniLM, CPU): each component off in turn, at the same training budget.

The reference ("full") is DARec as ``benchmarks/darec_ml100k.py`` trains it: context masking on, SASRec +
LightGCN injected at the input, all three losses. Each other variant changes one thing:

- ``context_masking_off``: item tokens also attend to the earlier items' tokens of the same window
  (the concatenated-history ablation of DESIGN.md), within ``--history-tokens`` tokens per window;
- ``injection_none`` / ``injection_sasrec`` / ``injection_lightgcn``: which CF knowledge is injected;
- ``injection_attention``: SASRec + LightGCN at the input *and* as per-layer key/value prefixes;
- ``no_next_item`` / ``no_masked_context`` / ``no_hard_negative``: one loss off;
- ``shuffled_text``: item sentences permuted across items (a control: text then carries no meaning).

Every run trains ``--epochs`` epochs and is tested once with its best validation checkpoint. The table gives
test NDCG@10 (mean ± std over seeds) and the paired difference from ``full`` over users (averaged over
seeds) with a bootstrap 95% CI. SASRec/LightGCN exports are reused from ``--cf-root/seed<N>/cf`` when
present (``benchmarks/darec_ml100k.py`` writes them there) and trained otherwise. Finished runs are kept in
``--work-dir`` so an interrupted benchmark resumes where it stopped.

    python benchmarks/ablation.py [--seeds 0 1] [--epochs 1] [--variants full shuffled_text ...]

Prints one table and writes ``benchmarks/ablation.json`` (machine, command, commit), rewritten after every run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from darec_ml100k import bootstrap_ci, existing_exports, per_user_ndcg10, train_cf  # noqa: E402

from darec.demo import _trainer  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "context_masking_off": {"context_masking": False},
    "injection_none": {"injection": ()},
    "injection_sasrec": {"injection": ("sasrec",)},
    "injection_lightgcn": {"injection": ("lightgcn",)},
    "injection_attention": {"mode": "attention"},
    "no_next_item": {"losses": {"next_item": False}},
    "no_masked_context": {"losses": {"masked_context": False}},
    "no_hard_negative": {"losses": {"hard_negative": False}},
    "shuffled_text": {"shuffle_text": True},
}


def cf_paths(seed: int, data_dir: str, cf_root: Path, work: Path) -> dict[str, Path]:
    """SASRec/LightGCN exports for ``seed``: reused from ``cf_root`` if both exist, else trained into ``work``."""
    return existing_exports(cf_root, seed) or train_cf(seed, data_dir, work / f"seed{seed}")[0]


def run_variant(name: str, seed: int, data_dir: str, cf: dict[str, Path], work: Path, epochs: int, history_tokens: int,
                backbone: str = "minilm") -> dict:
    import lightning as L

    from darec.data.windows import SequenceDataModule
    from darec.modules.backbone import BackboneConfig
    from darec.modules.darec import DARec
    from darec.modules.injection import InjectionConfig
    from darec.modules.darec import LossConfig

    spec = VARIANTS[name]
    sources = spec.get("injection", ("sasrec", "lightgcn"))
    injection = InjectionConfig(
        mode=spec.get("mode", "input") if sources else "none",
        sasrec=str(cf["sasrec"]) if "sasrec" in sources else None,
        lightgcn=str(cf["lightgcn"]) if "lightgcn" in sources else None,
    )
    L.seed_everything(seed)
    dm = SequenceDataModule(data_dir, batch_size=64, eval_batch_size=256, max_len=50, num_negatives=0)
    model = DARec(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint,
                  backbone=BackboneConfig(name=backbone), max_fresh_items=128, cache_dir=str(work / "cache"),
                  injection=injection, losses=LossConfig(**spec.get("losses", {})),
                  context_masking=spec.get("context_masking", True), history_tokens=history_tokens)
    if spec.get("shuffle_text"):
        d = dm.data
        body = list(d.sentences[1:])
        random.Random(seed).shuffle(body)
        text_hash = hashlib.sha256("\n".join(body).encode()).hexdigest()
        model.attach_data([d.sentences[0], *body], text_hash, d.fingerprint, d.train_sequences(), d.item_raw_ids)
    runs = work / f"seed{seed}" / name
    trainer = _trainer(runs, "darec", epochs, patience=None, gradient_clip_val=1.0)
    t0 = time.time()
    trainer.fit(model, datamodule=dm)
    fit_s = time.time() - t0
    best = DARec.load_from_checkpoint(runs / "darec" / "checkpoints" / "best.ckpt")  # carries its (maybe shuffled) texts
    dm.setup("test")
    return {"per_user": per_user_ndcg10(best, dm), "fit_s": fit_s}


def summarise(done: dict[tuple[str, int], dict], variants: list[str], seeds: list[int]) -> dict:
    out: dict[str, dict] = {}
    for name in variants:
        have = [s for s in seeds if (name, s) in done]
        if not have:
            continue
        vals = [float(done[name, s]["per_user"].mean()) for s in have]
        row = {"seeds": have, "test_ndcg@10_mean": float(np.mean(vals)), "test_ndcg@10_std": float(np.std(vals)),
               "values": vals, "fit_s": [done[name, s]["fit_s"] for s in have]}
        paired = [s for s in have if ("full", s) in done]
        if name != "full" and paired:
            diff = np.mean([done[name, s]["per_user"] - done["full", s]["per_user"] for s in paired], 0)
            lo, hi = bootstrap_ci(diff)
            row["minus_full"] = {"mean": float(diff.mean()), "bootstrap_95ci": [lo, hi], "seeds": paired}
        out[name] = row
    return out


def print_table(summary: dict) -> None:
    print(f"{'variant':<22}{'test NDCG@10':>20}{'seeds':>7}{'vs full (95% CI)':>34}{'fit s':>8}")
    for name, r in summary.items():
        d = r.get("minus_full")
        vs = f"{d['mean']:+.4f} [{d['bootstrap_95ci'][0]:+.4f}, {d['bootstrap_95ci'][1]:+.4f}]" if d else "-"
        print(f"{name:<22}{r['test_ndcg@10_mean']:>12.4f} ± {r['test_ndcg@10_std']:.4f}{len(r['seeds']):>7}{vs:>34}"
              f"{np.mean(r['fit_s']):>8.0f}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data/ml-100k")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=1, help="DARec training epochs of every variant (the shared budget)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--history-tokens", type=int, default=128, help="context_masking_off: tokens of history text per window")
    p.add_argument("--backbone", default="minilm", help="backbone name (tiny-bert for a quick smoke run on synthetic data)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--cf-root", default=str(ROOT / "benchmarks" / "_work" / "darec_ml100k"))
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / "_work" / "ablation"))
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.threads:
        torch.set_num_threads(a.threads)
    work = Path(a.work_dir)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip() or None
    command = " ".join([sys.executable, "benchmarks/ablation.py"] + list(argv if argv is not None else sys.argv[1:]))
    done: dict[tuple[str, int], dict] = {}
    t0 = time.time()
    for seed in a.seeds:  # seed-major: a stopped run still holds complete seeds
        cf = cf_paths(seed, a.data_dir, Path(a.cf_root), work)
        for name in a.variants:
            store = work / "results" / f"{name}_seed{seed}.npz"
            if store.is_file():
                blob = np.load(store)
                done[name, seed] = {"per_user": blob["per_user"], "fit_s": float(blob["fit_s"])}
            else:
                print(f"== {name} seed {seed}", flush=True)
                done[name, seed] = run_variant(name, seed, a.data_dir, cf, work, a.epochs, a.history_tokens, a.backbone)
                store.parent.mkdir(parents=True, exist_ok=True)
                tmp = store.with_suffix(".tmp.npz")
                np.savez(tmp, per_user=done[name, seed]["per_user"], fit_s=done[name, seed]["fit_s"])
                os.replace(tmp, store)
            summary = summarise(done, a.variants, a.seeds)
            result = {
                "benchmark": "DARec ablation on ml-100k (MiniLM, CPU; full ranking, leave-one-out, history masked)",
                "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
                "command": command, "commit": commit, "epochs": a.epochs, "seeds": a.seeds,
                "history_tokens": a.history_tokens, "backbone": a.backbone, "variants": summary, "wall_s": time.time() - t0,
                "complete": len(done) == len(a.seeds) * len(a.variants),
            }
            tmp = Path(a.out).with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=2) + "\n")
            os.replace(tmp, a.out)
    print_table(summary)
    return result


if __name__ == "__main__":
    main()
