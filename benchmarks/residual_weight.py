"""How far SASRec's residual weight can carry DARec: validation and test NDCG@10 at every fixed weight.

DARec's score is its language model's plus ``alpha`` times SASRec's, with ``alpha`` chosen on validation from
``RESIDUAL_GRID`` (``injection.residual_weight: validation``). Over five seeds DARec leads SASRec on validation
(+0.0066, CI above 0) and is level on test (``darec_ml100k_5seeds.json``). This benchmark reads the converged runs of
``darec_ml100k.py`` (nothing is retrained) and asks two questions of the fused score ``L + w * S`` (``L``: the
language model alone at DARec's selected checkpoint, ``S``: the SASRec it injects), for every ``w`` of the grid:

- does the validation lead come from choosing ``alpha`` on validation? ``cross_fitted`` chooses each user's weight on
  the other half of the users only (two folds), which gives an estimate that the choice cannot flatter;
- could any weight reach the issue's 1.10x on test? ``best_test_weight`` is picked with hindsight on test: an upper
  bound of what the weight can do, never a result.

``L + alpha * S`` re-creates DARec's own figures except on items without training interactions, whose CF rows DARec
holds at zero while SASRec scores its untrained rows; ``reconstruction`` records the difference in NDCG@10 per seed.

    python benchmarks/residual_weight.py [--data-dir data/ml-100k] [--seeds 0 1 2 3 4] [--work-dir benchmarks/_work/ml100k_mask]

Writes ``benchmarks/residual_weight.json`` (machine, command, commit).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import command, git_commit, interval, machine, paired_comparison  # noqa: E402
from darec.modules.darec import RESIDUAL_GRID  # noqa: E402
from runs import (Run, add_stored_runs_args, load_converged, ndcg10, target_popularity_groups,  # noqa: E402
                  training_popularity)

SPLITS = ("val", "test")


def ndcg_by_weight(lm: Run, sasrec: Run, split: str, grid: tuple[float, ...] = RESIDUAL_GRID) -> np.ndarray:
    """Per-user NDCG@10 of ``L + w * S`` for each ``w`` of ``grid``: [weights, users]."""
    lm_s, sas_s = lm.scores[split], sasrec.scores[split]
    return np.stack([ndcg10(lm.ranks(split, lm_s + w * sas_s if w else lm_s)) for w in grid])


def cross_fitted(val: np.ndarray, other: np.ndarray | None = None, folds: int = 2, seed: int = 0) -> np.ndarray:
    """Per-user NDCG@10 when each user's weight is the best on validation among the users of the other folds.

    ``val`` is [weights, users] (:func:`ndcg_by_weight`); ``other`` (same shape, default ``val``) is read at the
    chosen weight. Users are split into ``folds`` random folds; ties go to the smaller weight, as in the model."""
    other = val if other is None else other
    fold = np.random.default_rng(seed).permutation(val.shape[1]) % folds
    out = np.empty(val.shape[1])
    for k in range(folds):
        best = int(np.argmax(val[:, fold != k].mean(1)))
        out[fold == k] = other[best, fold == k]
    return out


def target_shares(counts: torch.Tensor, targets: np.ndarray, edges: tuple[int, ...]) -> dict[str, float]:
    """The share of held-out targets in each training-popularity group (the groups of ``darec_ml100k.py``), by label."""
    groups, labels = target_popularity_groups(counts, edges, targets)
    share = np.bincount(groups, minlength=len(labels)) / len(targets)
    return dict(zip(labels, share.tolist()))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_stored_runs_args(p, __file__)
    a = p.parse_args(argv)
    work = Path(a.work_dir)
    counts, edges = training_popularity(a.data_dir)
    num_items = len(counts) - 1
    grid = RESIDUAL_GRID
    curves: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}  # per seed: [weights, users]
    base: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}  # SASRec alone
    shipped: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}  # DARec as trained (its own alpha)
    honest: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}  # weight chosen on the other users' validation
    seeds: list[dict[str, Any]] = []
    for seed in a.seeds:
        runs = load_converged(work, seed, a.sasrec_len, a.sasrec_patience, num_items)
        darec, lm, sasrec = runs["darec"], runs["darec_lm_only"], runs["sasrec"]
        name = darec.meta["spec"]["name"]
        alpha = float(darec.meta["residual_weight"])
        row: dict[str, Any] = {"seed": seed, "darec": name, "alpha": alpha}
        for s in SPLITS:
            curves[s].append(ndcg_by_weight(lm, sasrec, s, grid))
            base[s].append(ndcg10(sasrec.ranks(s)))
            shipped[s].append(ndcg10(darec.ranks(s)))
            row[f"{s}_ndcg@10_by_weight"] = dict(zip(map(str, grid), curves[s][-1].mean(1).tolist()))
            row[f"{s}_sasrec_ndcg@10"] = float(base[s][-1].mean())
            row[f"{s}_darec_ndcg@10"] = float(shipped[s][-1].mean())
            row.setdefault("reconstruction", {})[s] = float(curves[s][-1][grid.index(alpha)].mean() - shipped[s][-1].mean())
        row["target_popularity_shares"] = {s: target_shares(counts, darec.targets[s], edges) for s in SPLITS}
        honest["val"].append(cross_fitted(curves["val"][-1]))
        honest["test"].append(cross_fitted(curves["val"][-1], curves["test"][-1]))
        seeds.append(row)

    stack = {s: np.stack(curves[s]) for s in SPLITS}  # [seeds, weights, users]
    sas = {s: np.stack(base[s]) for s in SPLITS}
    by_weight = [{"weight": w, **{s: paired_comparison(stack[s][:, i], sas[s]) for s in SPLITS},
                  **{f"{s}_ndcg@10": float(stack[s][:, i].mean()) for s in SPLITS}} for i, w in enumerate(grid)]
    best_test = int(np.argmax([r["test_ndcg@10"] for r in by_weight]))
    comparisons = {
        "darec (alpha chosen on validation) - sasrec": {s: paired_comparison(np.stack(shipped[s]), sas[s]) for s in SPLITS},
        "darec (alpha chosen on the other users) - sasrec": {s: paired_comparison(np.stack(honest[s]), sas[s]) for s in SPLITS},
    }
    result = {"benchmark": "DARec's fused score at every fixed residual weight, validation and test (ml-100k)",
              "machine": machine(), "command": command("benchmarks/residual_weight.py", argv), "git": git_commit((a.out,)),
              "grid": list(grid), "per_seed": seeds, "by_weight": by_weight, "comparisons": comparisons,
              "best_test_weight": {"weight": grid[best_test], "note": "chosen on test with hindsight: an upper bound, not a result",
                                   "test": by_weight[best_test]["test"]},
              "sasrec_ndcg@10": {s: float(sas[s].mean()) for s in SPLITS}}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")

    alphas = ", ".join(f"{r['alpha']:g}" for r in seeds)
    print(f"SASRec alone: validation {result['sasrec_ndcg@10']['val']:.4f}, test {result['sasrec_ndcg@10']['test']:.4f} "
          f"({len(seeds)} seeds); alpha chosen per seed: {alphas}")
    print(f"{'weight':>7}{'val NDCG@10':>13}{'val - SASRec (95% CI, users)':>38}{'test NDCG@10':>14}"
          f"{'test - SASRec (95% CI, users)':>38}{'test ratio':>12}")
    for r in by_weight:
        cells = [f"{r[s]['mean']:+.4f} {interval(r[s]['bootstrap_95ci'])}" for s in SPLITS]
        print(f"{r['weight']:>7g}{r['val_ndcg@10']:>13.4f}{cells[0]:>38}{r['test_ndcg@10']:>14.4f}{cells[1]:>38}"
              f"{r['test']['ratio']:>12.3f}")
    bt = result["best_test_weight"]
    print(f"best weight on test, with hindsight (an upper bound): {bt['weight']:g}, ratio {bt['test']['ratio']:.3f}, "
          f"{bt['test']['mean']:+.4f} {interval(bt['test']['bootstrap_95ci'])} over users")
    for name, c in comparisons.items():
        print(f"{name:<50} validation {c['val']['mean']:+.4f} {interval(c['val']['bootstrap_95ci'])}, "
              f"test {c['test']['mean']:+.4f} {interval(c['test']['bootstrap_95ci'])} (ratio {c['test']['ratio']:.3f})")
    shares = seeds[0]["target_popularity_shares"]
    print("held-out targets by training popularity (validation / test): "
          + ", ".join(f"{k} {shares['val'][k]:.3f} / {shares['test'][k]:.3f}" for k in shares["val"]))
    print("reconstruction (NDCG@10 of L + alpha*S minus DARec's own), per seed: "
          + ", ".join(f"{r['reconstruction']['val']:+.5f}/{r['reconstruction']['test']:+.5f}" for r in seeds))
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
