"""DARec's residual with a per-user weight: the two scores standardised per user before they are added.

DARec's fused score is ``LM + alpha * SASRec`` with one ``alpha`` for every user, chosen on validation from a grid
(``darec.modules.darec.RESIDUAL_GRID``). The two score rows spread differently from user to user, so this benchmark
tries the usual fix of score fusion: each user's language-model and SASRec rows are standardised over the catalogue
(mean 0, standard deviation 1) before ``beta`` times SASRec's is added, which ranks like a per-user
``alpha_u = beta * sd(LM_u) / sd(SASRec_u)``. Nothing is retrained: it reads the checkpoints that DARec's runs
selected (their language-model-only scores) and the SASRec runs they injected, chooses ``alpha`` and ``beta`` per
seed on validation, and compares the two fusions paired over users (and over seeds and users), on validation
first; test is printed after it.

    python benchmarks/fusion_norm.py [--darec curves_darec_p3_sasL100p25] [--seeds 0 1 2]

Writes ``benchmarks/fusion_norm.json`` (machine, command, commit). Needs DARec runs of ``darec_ml100k.py`` or
``epoch_curves.py`` (``<darec>_s<seed>``) and the SASRec runs they inject.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import command, git_commit, interval, machine, paired_comparison  # noqa: E402
from darec.modules.darec import RESIDUAL_GRID  # noqa: E402
from runs import Run, is_done, load, ndcg10  # noqa: E402

BETA_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0)
SPLITS = ("val", "test")


def standardise(scores: np.ndarray) -> np.ndarray:
    """Each row to mean 0 and standard deviation 1 over its finite entries; ``-inf`` (padding) stays ``-inf``."""
    finite = np.isfinite(scores)
    vals = np.where(finite, scores, np.nan)
    z = (scores - np.nanmean(vals, 1, keepdims=True)) / np.nanstd(vals, 1, keepdims=True).clip(1e-12)
    return np.where(finite, z, -np.inf)


def fuse(lm: np.ndarray, sas: np.ndarray, weight: float) -> np.ndarray:
    """``lm + weight * sas``, with ``-inf`` wherever either is (so a zero weight keeps the padding column out)."""
    out = lm + weight * np.where(np.isfinite(sas), sas, 0.0)
    return np.where(np.isfinite(lm) & np.isfinite(sas), out, -np.inf)


def choose(run: Run, lm: dict[str, np.ndarray], sas: dict[str, np.ndarray], grid: tuple[float, ...]
           ) -> tuple[float, dict[str, np.ndarray]]:
    """The weight of ``grid`` with the best validation NDCG@10 (the first on ties), and per-user NDCG@10 with it."""
    val = [ndcg10(run.ranks("val", fuse(lm["val"], sas["val"], w))) for w in grid]
    best = int(np.argmax([v.mean() for v in val]))
    return grid[best], {"val": val[best], "test": ndcg10(run.ranks("test", fuse(lm["test"], sas["test"], grid[best])))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--darec", default="curves_darec_p3_sasL100p25", help="DARec runs: <darec>_s<seed>")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / "_work" / "darec_ml100k"))
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    a = p.parse_args(argv)
    work = Path(a.work_dir)
    per_user: dict[str, dict[str, list[np.ndarray]]] = {f: {s: [] for s in SPLITS} for f in ("shipped", "standardised")}
    seeds = []
    for seed in a.seeds:
        name = f"{a.darec}_s{seed}"
        if not is_done(work, name):
            raise SystemExit(f"error: {work / name} is not a finished run; train it with darec_ml100k.py or epoch_curves.py")
        run = load(work, name, lm_only=True)
        sas_name = run.meta["spec"]["cf_from"]
        sas = load(work, sas_name).scores
        lm = run.scores
        alpha, shipped = choose(run, lm, sas, RESIDUAL_GRID)
        zlm, zsas = ({s: standardise(m[s]) for s in SPLITS} for m in (lm, sas))
        beta, standardised = choose(run, zlm, zsas, BETA_GRID)
        for s in SPLITS:
            per_user["shipped"][s].append(shipped[s])
            per_user["standardised"][s].append(standardised[s])
        seeds.append({"seed": seed, "darec": name, "sasrec": sas_name, "alpha": alpha, "beta": beta,
                      "run_alpha": run.meta.get("residual_weight"), "run_val_ndcg@10": run.meta["best_val_ndcg@10"],
                      **{f"{f}_{s}_ndcg@10": float(per_user[f][s][-1].mean()) for f in per_user for s in SPLITS}})
    comparison = {s: paired_comparison(np.stack(per_user["standardised"][s]), np.stack(per_user["shipped"][s]))
                  for s in SPLITS}
    result = {"benchmark": "DARec's residual: per-user standardised fusion against the shipped one (ml-100k)",
              "machine": machine(), "command": command("benchmarks/fusion_norm.py", argv), "git": git_commit((a.out,)),
              "alpha_grid": list(RESIDUAL_GRID), "beta_grid": list(BETA_GRID), "per_seed": seeds,
              "standardised_minus_shipped": comparison}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'seed':<6}{'alpha':>7}{'beta':>7}{'val shipped':>13}{'val std.':>10}{'test shipped':>14}{'test std.':>11}")
    for r in seeds:
        print(f"{r['seed']:<6}{r['alpha']:>7g}{r['beta']:>7g}{r['shipped_val_ndcg@10']:>13.4f}"
              f"{r['standardised_val_ndcg@10']:>10.4f}{r['shipped_test_ndcg@10']:>14.4f}{r['standardised_test_ndcg@10']:>11.4f}")
    for s in SPLITS:
        c = comparison[s]
        print(f"{s}: standardised - shipped {c['mean']:+.4f} {interval(c['bootstrap_95ci'])} over users, "
              f"{interval(c['seed_user_95ci'])} over seeds and users")
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
