"""DARec (MiniLM, CPU) against SASRec on ml-100k, several seeds, with a paired bootstrap over users.

Per seed: SASRec and LightGCN are trained (early stopping on validation) and exported, then DARec
trains for ``--darec-epochs`` with their knowledge injected (``injection.mode: input``). Every model
is tested once with its best validation checkpoint. The per-user test NDCG@10 of DARec and SASRec,
averaged over seeds, gives a paired bootstrap 95% CI of the difference.

    python benchmarks/darec_ml100k.py [--seeds 0 1 2] [--darec-epochs 2] [--data-dir data/ml-100k]

Prints a table and writes ``benchmarks/darec_ml100k.json`` (machine, command, commit).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from darec.demo import _trainer  # noqa: E402


def per_user_ndcg10(model, dm) -> np.ndarray:
    """Test NDCG@10 of every test user, in the order of the test split."""
    model.eval()
    if hasattr(model, "_build_eval_table"):
        model._build_eval_table()
    if hasattr(model, "_eval_start"):
        model._eval_start()
    out = []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            ranks = model._ranks(batch).numpy()
            out.append(np.where(ranks < 10, 1.0 / np.log2(ranks + 2), 0.0))
    return np.concatenate(out)


def train_cf(seed: int, data_dir: str, runs: Path) -> tuple[dict[str, Path], dict]:
    """Train SASRec and LightGCN on the training split (early stopping on validation) and export them.

    Returns the export paths and, per model, its per-user test NDCG@10, fit seconds and epochs.
    """
    import lightning as L

    from darec.data.windows import InteractionDataModule, SequenceDataModule
    from darec.export import export_module
    from darec.modules.lightgcn import LightGCN
    from darec.modules.sasrec import SASRec

    res, paths = {}, {}
    for name, cls, dm in (
        ("sasrec", SASRec, SequenceDataModule(data_dir, batch_size=256, eval_batch_size=512, max_len=50, num_negatives=0)),
        ("lightgcn", LightGCN, InteractionDataModule(data_dir, batch_size=2048, eval_batch_size=512)),
    ):
        L.seed_everything(seed)
        model = cls(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint)
        trainer = _trainer(runs, name, 60, patience=5)
        t0 = time.time()
        trainer.fit(model, datamodule=dm)
        best = cls.load_from_checkpoint(runs / name / "checkpoints" / "best.ckpt")
        paths[name] = export_module(best, dm.data, runs / "cf" / f"{name}.safetensors")
        dm.setup("test")
        res[name] = {"per_user": per_user_ndcg10(best, dm), "fit_s": time.time() - t0, "epochs": trainer.current_epoch}
    return paths, res


def existing_exports(cf_root: Path, seed: int) -> dict[str, Path] | None:
    """The SASRec/LightGCN exports ``train_cf`` wrote under ``cf_root/seed<N>/cf``, or None if either is missing."""
    paths = {k: cf_root / f"seed{seed}" / "cf" / f"{k}.safetensors" for k in ("sasrec", "lightgcn")}
    return paths if all(p.is_file() for p in paths.values()) else None


def reuse_cf(seed: int, data_dir: str, cf_root: Path) -> tuple[dict[str, Path], dict] | None:
    """Exports and per-user test NDCG@10 of SASRec/LightGCN already trained under ``cf_root/seed<N>`` (None if absent)."""
    from darec.data.windows import InteractionDataModule, SequenceDataModule
    from darec.modules.lightgcn import LightGCN
    from darec.modules.sasrec import SASRec

    runs = cf_root / f"seed{seed}"
    paths = existing_exports(cf_root, seed)
    ckpts = {k: runs / k / "checkpoints" / "best.ckpt" for k in ("sasrec", "lightgcn")}
    if paths is None or not all(p.is_file() for p in ckpts.values()):
        return None
    res = {}
    for name, cls, dm in (("sasrec", SASRec, SequenceDataModule(data_dir, eval_batch_size=512, max_len=50)),
                          ("lightgcn", LightGCN, InteractionDataModule(data_dir, eval_batch_size=512))):
        dm.setup("test")
        res[name] = {"per_user": per_user_ndcg10(cls.load_from_checkpoint(ckpts[name]), dm), "fit_s": None, "epochs": None}
    return paths, res


def run_seed(seed: int, data_dir: str, work: Path, darec_epochs: int, cf_root: Path | None = None, residual: bool = False) -> dict:
    import lightning as L

    from darec.data.windows import SequenceDataModule
    from darec.modules.backbone import BackboneConfig
    from darec.modules.darec import DARec
    from darec.modules.injection import InjectionConfig

    runs = work / f"seed{seed}"
    reused = reuse_cf(seed, data_dir, cf_root) if cf_root else None
    paths, res = reused or train_cf(seed, data_dir, runs)
    L.seed_everything(seed)
    dm = SequenceDataModule(data_dir, batch_size=64, eval_batch_size=256, max_len=50, num_negatives=0)
    model = DARec(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint,
                  backbone=BackboneConfig(name="minilm"), max_fresh_items=128, cache_dir=str(work / "cache"),
                  injection=InjectionConfig(mode="input", sasrec=str(paths["sasrec"]), lightgcn=str(paths["lightgcn"]),
                                            residual=residual))
    trainer = _trainer(runs, "darec", darec_epochs, patience=None, gradient_clip_val=1.0)
    t0 = time.time()
    trainer.fit(model, datamodule=dm)
    best = DARec.load_from_checkpoint(runs / "darec" / "checkpoints" / "best.ckpt")  # carries the item texts
    res["darec"] = {"per_user": per_user_ndcg10(best, dm), "fit_s": time.time() - t0, "epochs": trainer.current_epoch}
    return res


def bootstrap_ci(diff: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (n, len(diff)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data/ml-100k")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--darec-epochs", type=int, default=2)
    p.add_argument("--cf-root", default=None, help="reuse SASRec/LightGCN runs under CF_ROOT/seed<N> instead of training them")
    p.add_argument("--residual", action="store_true", help="DARec with injection.residual (scores start as SASRec's)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / "_work" / "darec_ml100k"))
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    if a.threads:
        torch.set_num_threads(a.threads)
    cf_root = Path(a.cf_root) if a.cf_root else None
    per_seed = [run_seed(s, a.data_dir, Path(a.work_dir), a.darec_epochs, cf_root, a.residual) for s in a.seeds]
    summary = {}
    for name in ("sasrec", "lightgcn", "darec"):
        vals = [r[name]["per_user"].mean() for r in per_seed]
        summary[name] = {"test_ndcg@10_mean": float(np.mean(vals)), "test_ndcg@10_std": float(np.std(vals)),
                         "values": [float(v) for v in vals], "fit_s": [r[name]["fit_s"] for r in per_seed],
                         "epochs": [r[name]["epochs"] for r in per_seed]}
    diff = np.mean([r["darec"]["per_user"] - r["sasrec"]["per_user"] for r in per_seed], 0)
    lo, hi = bootstrap_ci(diff)
    ratio = summary["darec"]["test_ndcg@10_mean"] / summary["sasrec"]["test_ndcg@10_mean"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip() or None
    result = {
        "benchmark": "DARec vs SASRec on ml-100k (full ranking, leave-one-out, history masked)",
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "command": " ".join([sys.executable, "benchmarks/darec_ml100k.py"] + list(argv if argv is not None else sys.argv[1:])),
        "commit": commit, "seeds": a.seeds, "darec_epochs": a.darec_epochs, "residual": a.residual,
        "cf_reused_from": a.cf_root, "models": summary,
        "darec_minus_sasrec_ndcg@10": {"mean": float(diff.mean()), "bootstrap_95ci": [lo, hi], "users": int(len(diff))},
        "darec_over_sasrec": ratio, "target": ">= 1.10 with the CI above 0", "target_met": bool(ratio >= 1.10 and lo > 0),
        "wall_s": time.time() - t0,
    }
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'model':<10}{'test NDCG@10':>20}{'epochs':>14}")
    for name, r in summary.items():
        print(f"{name:<10}{r['test_ndcg@10_mean']:>12.4f} ± {r['test_ndcg@10_std']:.4f}{str(r['epochs']):>14}")
    print(f"DARec - SASRec: {diff.mean():+.4f} (95% CI [{lo:+.4f}, {hi:+.4f}]); ratio {ratio:.2f} (target >= 1.10)")
    return result


if __name__ == "__main__":
    main()
