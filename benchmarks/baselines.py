"""Quality and speed of the baselines on ml-100k: popularity, SASRec and LightGCN, several seeds each.

Usage (from the repository root; prepares ml-100k under data/ when it is missing)::

    python benchmarks/baselines.py                       # 3 seeds, the shipped configs
    python benchmarks/baselines.py --models sasrec --seeds 0 --max-epochs 30

Each run trains with the model's ``configs/<model>_ml100k.yaml`` (early stopping and model selection
on validation NDCG@10), then tests the best checkpoint once. Writes ``benchmarks/baselines.json``:
the machine, the command, the git commit, and per model the mean ± std over seeds of test HR@10,
NDCG@10 and MRR@10, epochs run, wall time per epoch, wall time from the start of ``fit`` until the
end of the best validation epoch, and the paired per-user difference against popularity (mean,
standard error and a bootstrap 95% interval over users). Popularity is deterministic and runs once.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from common import git_commit, machine  # noqa: E402

TARGETS = {"sasrec": {"ndcg@10": 0.067, "time_to_best_s": 790.0}, "lightgcn": {"ndcg@10": 0.047}}
REPORTED = ("hr@10", "ndcg@10", "mrr@10")


class EpochTimer(L.Callback):
    """Wall-clock times of every epoch and validation NDCG@10, from the start of ``fit``."""

    def __init__(self) -> None:
        self.t0 = 0.0
        self.train_s: list[float] = []
        self.val_end_s: list[float] = []
        self.val_ndcg: list[float] = []
        self._epoch_t = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_t = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.train_s.append(time.perf_counter() - self._epoch_t)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.val_end_s.append(time.perf_counter() - self.t0)
        self.val_ndcg.append(float(trainer.callback_metrics["val/ndcg@10"]))


def ensure_data(data_dir: Path, raw_dir: Path) -> Path:
    """Download and prepare ml-100k into ``data_dir`` unless it is already there."""
    from darec.data.download import download_ml100k
    from darec.data.prepare import load_config, prepare
    from darec.data.dataset import is_prepared_dir

    if is_prepared_dir(data_dir):
        return data_dir
    raw = download_ml100k(raw_dir)
    cfg = load_config(ROOT / "configs" / "data" / "ml100k.yaml")
    cfg.options = {**cfg.options, "path": str(raw)}
    return prepare(cfg, out=data_dir)


def _cli(config: Path, data_dir: Path, seed: int, max_epochs: int | None, timer: EpochTimer, extra: list[str]):
    from lightning.pytorch.cli import LightningCLI

    from darec.data.datamodules.base import RecDataModule
    from darec.modules.base import RecModule

    class BenchCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            for src, dst in (("num_items", "num_items"), ("num_users", "num_users"), ("fingerprint", "data_fingerprint")):
                parser.link_arguments(f"data.{src}", f"model.init_args.{dst}", apply_on="instantiate")

    args = ["--config", str(config), "--data.init_args.data_dir", str(data_dir), "--seed_everything", str(seed), *extra]
    if max_epochs is not None:
        args += ["--trainer.max_epochs", str(max_epochs)]
    return BenchCLI(RecModule, RecDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                    args=args, trainer_defaults={"callbacks": [timer]}, save_config_kwargs={"overwrite": True},
                    auto_configure_optimizers=False)


def _user_ranks(model, dm) -> np.ndarray:
    model.eval()
    model.on_eval_start()
    with torch.no_grad():
        return torch.cat([model.eval_ranks(b) for b in dm.test_dataloader()]).numpy()


def run_popularity(data_dir: Path) -> dict[str, Any]:
    from darec.data.datamodules.base import RecDataModule
    from darec.modules.popularity import Popularity

    dm = RecDataModule(str(data_dir), eval_batch_size=512)
    model = Popularity(dm.num_items, dm.num_users, dm.fingerprint)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    metrics = trainer.test(model, dm, verbose=False)[0]
    return {"test": {k.removeprefix("test/"): float(v) for k, v in metrics.items()}, "ranks": _user_ranks(model, dm),
            "epochs": 0, "best_epoch": None, "epoch_s": 0.0, "train_epoch_s": 0.0, "time_to_best_s": 0.0}


def run_trained(
    model_name: str, data_dir: Path, seed: int, max_epochs: int | None, patience: int | None, work: Path, extra: list[str]
) -> dict[str, Any]:
    from lightning.pytorch.callbacks import EarlyStopping

    run_dir = work / f"{model_name}_seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(run_dir)
    try:
        timer = EpochTimer()
        cli = _cli(ROOT / "configs" / f"{model_name}_ml100k.yaml", data_dir, seed, max_epochs, timer, extra)
        stopper = next(cb for cb in cli.trainer.callbacks if isinstance(cb, EarlyStopping))
        if patience is not None:
            stopper.patience = patience
        cli.trainer.fit(cli.model, cli.datamodule)
        best_path = cli.trainer.checkpoint_callback.best_model_path
        metrics = cli.trainer.test(cli.model, cli.datamodule, ckpt_path=best_path, verbose=False)[0]
        ranks = _user_ranks(cli.model, cli.datamodule)
    finally:
        os.chdir(cwd)
    best = int(np.argmax(timer.val_ndcg))
    epochs = len(timer.val_ndcg)
    return {
        "test": {k.removeprefix("test/"): float(v) for k, v in metrics.items()},
        "ranks": ranks,
        "epochs": epochs,
        "best_epoch": best,
        "patience": stopper.patience,
        "best_val_ndcg@10": timer.val_ndcg[best],
        "epoch_s": timer.val_end_s[-1] / epochs,
        "train_epoch_s": float(np.mean(timer.train_s)),
        "time_to_best_s": timer.val_end_s[best],
        "checkpoint": str(run_dir / best_path) if best_path else None,
    }


def ndcg10(ranks: np.ndarray) -> np.ndarray:
    return np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0)


def paired(model_ranks: list[np.ndarray], pop_ranks: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Per-user NDCG@10 difference (seed-averaged model minus popularity): mean, SE, bootstrap 95% CI."""
    d = np.mean([ndcg10(r) for r in model_ranks], axis=0) - ndcg10(pop_ranks)
    rng = np.random.default_rng(seed)
    boots = np.array([d[rng.integers(0, len(d), len(d))].mean() for _ in range(2000)])
    se = float(d.std(ddof=1) / np.sqrt(len(d)))
    return {"mean_diff": float(d.mean()), "se": se, "z": float(d.mean() / se) if se > 0 else 0.0,
            "ci95": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))], "users": int(len(d))}


def _stat(values: list[float]) -> dict[str, Any]:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "values": [float(v) for v in a]}


def summarise(name: str, runs: list[dict[str, Any]], pop: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": len(runs)}
    out["test"] = {k: _stat([r["test"][k] for r in runs]) for k in REPORTED}
    for k in ("epochs", "best_epoch", "epoch_s", "train_epoch_s", "time_to_best_s"):
        if runs[0].get(k) is not None:
            out[k] = _stat([r[k] for r in runs])
    if pop is not None and name != "popularity":
        out["paired_vs_popularity_ndcg@10"] = paired([r["ranks"] for r in runs], pop["ranks"])
    checks = {}
    for key, target in TARGETS.get(name, {}).items():
        value = out["test"][key]["mean"] if key in out["test"] else out[key]["mean"]
        checks[key] = {"target": target, "value": value, "met": value >= target if key != "time_to_best_s" else value <= target}
    if name == "sasrec" and "paired_vs_popularity_ndcg@10" in out:
        z = out["paired_vs_popularity_ndcg@10"]["z"]
        checks["beats_popularity_by_2se"] = {"target": 2.0, "value": z, "met": z > 2.0}
    out["targets"] = checks
    out["runs"] = [{k: v for k, v in r.items() if k != "ranks"} for r in runs]
    return out


def table(summary: dict[str, Any]) -> str:
    head = f"{'model':<10} {'HR@10':>17} {'NDCG@10':>17} {'MRR@10':>17} {'epochs':>7} {'s/epoch':>8} {'s to best':>10}  vs popularity (NDCG@10)"
    lines = [head, "-" * len(head)]
    for name, s in summary.items():
        cells = [f"{s['test'][k]['mean']:.4f} ± {s['test'][k]['std']:.4f}" for k in REPORTED]
        ep = f"{s['epochs']['mean']:.1f}" if "epochs" in s else "-"
        spe = f"{s['epoch_s']['mean']:.1f}" if "epoch_s" in s else "-"
        ttb = f"{s['time_to_best_s']['mean']:.0f}" if "time_to_best_s" in s else "-"
        p = s.get("paired_vs_popularity_ndcg@10")
        vs = f"{p['mean_diff']:+.4f} (SE {p['se']:.4f}, 95% CI [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}])" if p else "-"
        lines.append(f"{name:<10} {cells[0]:>17} {cells[1]:>17} {cells[2]:>17} {ep:>7} {spe:>8} {ttb:>10}  {vs}")
    for name, s in summary.items():
        for key, c in s.get("targets", {}).items():
            lines.append(f"target {name} {key}: {c['value']:.4f} vs {c['target']} -> {'met' if c['met'] else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=str(ROOT / "data" / "ml-100k"), help="prepared ml-100k (created if missing)")
    p.add_argument("--raw-dir", default=str(ROOT / "data" / "raw"), help="where the raw ml-100k files go")
    p.add_argument("--models", nargs="+", default=["popularity", "sasrec", "lightgcn"], choices=["popularity", "sasrec", "lightgcn"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one run per seed for trained models")
    p.add_argument("--max-epochs", type=int, default=None, help="override the configs' max_epochs")
    p.add_argument("--patience", type=int, default=None,
                   help="early-stopping patience on validation NDCG@10 for every model (default: each shipped config's)")
    p.add_argument("--sasrec-args", default="", help="extra LightningCLI arguments for SASRec runs, e.g. '--model.init_args.lr 0.002'")
    p.add_argument("--lightgcn-args", default="", help="extra LightningCLI arguments for LightGCN runs")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / "runs"), help="logs and checkpoints of each run")
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")), help="result JSON")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    data_dir = ensure_data(Path(a.data_dir).resolve(), Path(a.raw_dir).resolve())
    work = Path(a.work_dir).resolve()
    t_start = time.perf_counter()
    pop = run_popularity(data_dir)
    summary: dict[str, Any] = {}
    if "popularity" in a.models:
        summary["popularity"] = summarise("popularity", [pop], None)
    for name in ("sasrec", "lightgcn"):
        if name in a.models:
            runs = []
            for seed in a.seeds:
                extra = shlex.split(getattr(a, f"{name}_args"))
                runs.append(run_trained(name, data_dir, seed, a.max_epochs, a.patience, work, extra))
                r = runs[-1]
                print(f"{name} seed {seed}: test NDCG@10 {r['test']['ndcg@10']:.4f}, {r['epochs']} epochs, "
                      f"{r['epoch_s']:.1f} s/epoch, best epoch {r['best_epoch']} at {r['time_to_best_s']:.0f} s", flush=True)
            summary[name] = summarise(name, runs, pop)
    result = {
        "benchmark": "baselines on ml-100k (leave-one-out, full ranking, history masked)",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git": git_commit((a.out,)),
        "machine": machine(),
        "data_dir": str(data_dir),
        "seeds": a.seeds,
        "patience": a.patience if a.patience is not None else "each shipped config's (per run: models.*.runs)",
        "extra_args": {"sasrec": a.sasrec_args, "lightgcn": a.lightgcn_args},
        "max_epochs": a.max_epochs,
        "wall_s": time.perf_counter() - t_start,
        "models": summary,
    }
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(summary))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
