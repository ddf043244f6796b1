"""Adapter-type search (``darec search``) on ml-100k with MiniLM on the CPU, at a small budget.

Runs a Bayesian-optimisation search over the adapter type of each of MiniLM's layers (none / serial /
parallel / lora), each trial training ``--steps`` batches of one epoch from ``configs/darec_ml100k.yaml``.
Then the best ``--top-k`` assignments and the uniform ``serial``-everywhere DARec are re-run on ``--seeds``
fresh seeds with the same budget, and the winner is declared on those runs only. Validation split only;
the test split is never read.

    python benchmarks/search_ml100k.py [--trials 6] [--steps 15] [--parallel 2] [--seeds 2] [--multi-objective]

Prints a table and writes ``benchmarks/search_ml100k.json`` (machine, command, commit); the search state,
trials, plots and best config are under ``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data/ml-100k")
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--init-trials", type=int, default=3)
    p.add_argument("--steps", type=int, default=15, help="training batches per trial (one epoch, cut short)")
    p.add_argument("--seeds", type=int, default=2, help="fresh seeds per re-run")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--multi-objective", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue the search in --out-dir")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "_work" / "search_ml100k"))
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from darec.search import config_from_dict, run_search

    cfg = config_from_dict({
        "base_config": str(ROOT / "configs" / "darec_ml100k.yaml"), "out_dir": a.out_dir, "trials": a.trials,
        "parallel": a.parallel, "seed": 0, "method": "bo", "init_trials": a.init_trials,
        "multi_objective": a.multi_objective, "share_cache": True,
        "overrides": {"data.init_args.data_dir": a.data_dir, "model.init_args.cache_dir": str(Path(a.out_dir) / "cache")},
        "space": {"types": ["none", "serial", "parallel", "lora"]},
        "budget": {"epochs": 1, "steps": a.steps},
        "rerun": {"top_k": a.top_k, "seeds": a.seeds, "baseline": "serial"},
    })
    if not a.resume and Path(a.out_dir).exists():
        shutil.rmtree(a.out_dir)
    t0 = time.time()
    outcome = run_search(cfg, resume=a.resume, progress=True)
    wall = time.time() - t0
    best, uniform = outcome.best, outcome.uniform
    records = outcome.records.values()
    completed = [r for r in records if r["status"] == "completed"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip() or None
    result = {
        "benchmark": "darec search on ml-100k (MiniLM, CPU): per-layer adapter types by Ax BO, winner vs uniform serial "
                     "on fresh seeds (validation NDCG@10, full ranking)",
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "command": " ".join([sys.executable, "benchmarks/search_ml100k.py"] + list(argv if argv is not None else sys.argv[1:])),
        "commit": commit,
        "budget": {"trials": a.trials, "init_trials": a.init_trials, "steps_per_trial": a.steps, "epochs": 1,
                   "fresh_seeds": a.seeds, "top_k": a.top_k},
        "trials_completed": len(completed), "trials_failed": len(outcome.records) - len(completed),
        "trial_minutes_mean": sum(r["duration_s"] for r in records) / max(len(outcome.records), 1) / 60,
        "search_trace": [{"trial": r["trial"], "adapters": r["adapters"], "ndcg@10": r["ndcg@10"],
                          "trainable_params": r["trainable_params"], "status": r["status"]}
                         for r in sorted(records, key=lambda r: r["trial"])],
        "winner": best.to_json(), "uniform_serial": uniform.to_json(),
        "winner_minus_uniform": None if uniform.mean is None else best.mean - uniform.mean,
        "target": "winner >= uniform serial on fresh seeds",
        "target_met": None if uniform.mean is None else bool(best.mean >= uniform.mean),
        "pareto": [c.to_json() for c in outcome.pareto],
        "wall_s": wall,
    }
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(outcome.table)
    print()
    print(f"{'':<22}{'val NDCG@10 (fresh seeds)':>28}{'trainable params':>20}")
    for name, s in (("winner", best), ("uniform serial", uniform)):
        fresh = f"{s.mean:.4f} ± {s.std:.4f} (n={len(s.fresh)})" if s.fresh else "failed"
        params = f"{s.trainable_params:,}" if s.trainable_params else "-"
        print(f"{name:<22}{fresh:>28}{params:>20}")
    print(f"winner assignment: {list(best.candidate.assignment)}")
    print(f"trials: {len(completed)} completed, {len(outcome.records) - len(completed)} failed; wall time {wall / 60:.1f} min")
    return result


if __name__ == "__main__":
    main()
