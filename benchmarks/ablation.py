"""DARec ablation on ml-100k (MiniLM, CPU): each component off in turn, at one fixed training budget.

The reference (``full``) is DARec's default configuration (``configs/darec_ml100k.yaml``) injecting SASRec and
LightGCN. Each other variant changes one thing:

- ``context_masking_off``: item tokens also attend to the earlier items' tokens of the same window (the
  concatenated-history ablation of DESIGN.md), within 128 tokens of history text per window;
- ``injection_none``: no collaborative knowledge at all (no CF input terms, no residual);
- ``shuffled_text``: item sentences permuted across items (a control: the text then carries no meaning);
- ``no_next_item`` / ``no_hard_negative``: one loss off (the masked-context loss is off by default: it trains only
  with item-level adaptation);
- ``item_level``: the paper's item-level adaptation on top (adapters act on item text in every layer, 64 fresh items
  per step, the cache rebuilt every 10 steps) with the masked-context loss on.
- quality levers of issue 11, each one change to ``full``: ``no_user_vector`` (no causal SASRec/LightGCN user vector
  at the input, so the language model cannot lean on SASRec's state, which is over-confident on training targets,
  ``benchmarks/sasrec_fit_gap.py``; the residual still adds SASRec's score), ``text_path`` (a direct path from the
  mean of the last 10 items' text vectors to the scoring state), ``schedule`` (projections at twice the learning rate,
  adapters at the default, one epoch of linear warm-up), ``cosine`` (``scoring: cosine``: the language model's
  score is a cosine with a learned scale);
- ``bf16``: not a component but a numeric check: the backbone's passes under bfloat16 autocast (worth it only on a
  CPU with native bfloat16, see ``benchmarks/bf16_cpu.py``), to show that quality holds against float32.

Every run trains exactly ``--epochs`` epochs (no early stopping; the best validation epoch is tested), a budget
chosen to reach at least 0.9x the converged validation NDCG@10 of ``full`` (the JSON records both). The fused score
is mostly SASRec's after one epoch, so the JSON also gives the language-model path's own validation NDCG@10 at the
budget against the converged runs' (at the default 4 epochs, about 0.9x in the converged runs' curves). The table
gives test NDCG@10 (mean ± std over seeds) and the paired difference from ``full`` over users (per-user NDCG@10
averaged over seeds) with a bootstrap 95% CI, for the fused score and for the language-model path alone (the
same checkpoint without SASRec's residual part, which can hide a change in that path). A second table gives the
same comparisons on validation, which is what a lever is kept or dropped by; the test columns are read after that
choice. A third gives each comparison's CI from a bootstrap that resamples the seeds as well as the users
(``seed_user_95ci`` in the JSON). SASRec/LightGCN runs are shared with ``benchmarks/darec_ml100k.py``
through ``--work-dir`` (same names, with SASRec's early-stopping patience: ``--sasrec-patience``, default the shipped
config's), so they are trained once. Finished runs are kept, so an interrupted benchmark resumes.

    python benchmarks/ablation.py [--seeds 0 1 2] [--epochs E] [--jobs 2] [--threads 1] [--sasrec-patience P] [--variants full ...]

Prints one table and writes ``benchmarks/ablation.json`` (machine, command, commit).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import command, git_commit, interval, machine, paired_comparison  # noqa: E402
from runs import (RunSpec, converged_darec_name, darec_name, has_lm_only, is_done, load, ndcg10, run_all,  # noqa: E402
                  sasrec_name, sasrec_spec, shipped_config, shipped_darec_patience, shipped_sasrec_patience)

SHIPPED_LR = float(shipped_config("darec")["model"]["init_args"]["lr"])
# each variant against full: fused test, language model alone on test, then the same two on validation
DIFFERENCES = ("minus_full", "lm_only_minus_full", "val_minus_full", "lm_only_val_minus_full")
VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "context_masking_off": {"model": {"context_masking": False, "history_tokens": 128}},
    "injection_none": {"model": {"injection": {"mode": "none", "residual": False}}},
    "shuffled_text": {"shuffle_text": True},
    "no_next_item": {"model": {"losses": {"next_item": False}}},
    "no_hard_negative": {"model": {"losses": {"hard_negative": False}}},
    "item_level": {"model": {"item_adapter_layers": None, "max_fresh_items": 64, "refresh_every": 10,
                             "losses": {"masked_context": True}}},
    "bf16": {"model": {"backbone": {"autocast": "bfloat16"}}},
    "no_user_vector": {"model": {"injection": {"user_vector": False}}},
    "text_path": {"model": {"text_path": 10}},
    "schedule": {"model": {"lr": 2 * SHIPPED_LR, "lr_adapters": SHIPPED_LR, "warmup_steps": 40}},
    "cosine": {"model": {"scoring": "cosine"}},
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data/ml-100k")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=4, help="training epochs of every variant (fixed budget)")
    p.add_argument("--sasrec-len", type=int, default=100,
                   help="history length of the injected SASRec (default: the one darec_ml100k.py's tuning chose)")
    p.add_argument("--sasrec-patience", type=int, default=None,
                   help="early-stopping patience of the injected SASRec runs (default: the shipped config's)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (jobs x threads should not exceed the cores)")
    p.add_argument("--converged-from", default=str(ROOT / "benchmarks" / "_work" / "darec_ml100k"),
                   help="work dir of darec_ml100k.py, whose converged DARec runs give the 0.9x reference")
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / "_work" / "darec_ml100k"))
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    work = Path(a.work_dir)
    pat = a.sasrec_patience if a.sasrec_patience is not None else shipped_sasrec_patience()
    budget = {"max_epochs": a.epochs, "patience": a.epochs}

    def name(v: str, s: int) -> str:
        return darec_name(f"ablation_{v}_e{a.epochs}", s, a.sasrec_len, pat)

    specs = []
    for s in a.seeds:
        cf = sasrec_name(a.sasrec_len, s, pat)
        specs += [sasrec_spec(a.sasrec_len, s, pat), RunSpec(f"lightgcn_s{s}", "lightgcn", s)]
        specs += [RunSpec(name(v, s), "darec", s, VARIANTS[v].get("model", {}), trainer=budget,
                          cf_from=cf, lightgcn_from=f"lightgcn_s{s}", shuffle_text=VARIANTS[v].get("shuffle_text", False))
                  for v in a.variants]
    run_all(specs, work, a.data_dir, a.jobs, a.threads)
    runs = {(v, s): load(work, name(v, s)) for v in a.variants for s in a.seeds}
    # the language-model path alone (same checkpoints without SASRec's residual part): the residual can hide a change
    # in the language-model path, so each variant is also compared on this score
    lm_runs = {(v, s): _lm_or_fused(work, name(v, s)) for v in a.variants for s in a.seeds}
    per_user, lm_user = ({v: [ndcg10(rs[v, s].ranks("test")) for s in a.seeds] for v in a.variants} for rs in (runs, lm_runs))
    # validation: what a lever is kept or dropped by (the test columns are read after that choice, for the report)
    val_user, lm_val_user = ({v: [ndcg10(rs[v, s].ranks("val")) for s in a.seeds] for v in a.variants} for rs in (runs, lm_runs))
    metas = {v: [runs[v, s].meta for s in a.seeds] for v in a.variants}
    rows: dict[str, Any] = {}
    for v in a.variants:
        vals = [x.mean() for x in per_user[v]]
        row = {"test_ndcg@10_mean": float(np.mean(vals)), "test_ndcg@10_std": float(np.std(vals)),
               "per_seed": [float(x) for x in vals], "best_val_ndcg@10": [m["best_val_ndcg@10"] for m in metas[v]],
               "fit_s": [m["fit_s"] for m in metas[v]]}
        lm_vals = [x.mean() for x in lm_user[v]]
        row["lm_only_test_ndcg@10_mean"] = float(np.mean(lm_vals))
        row["lm_only_test_ndcg@10_std"] = float(np.std(lm_vals))
        row["val_ndcg@10_mean"] = float(np.mean([x.mean() for x in val_user[v]]))
        row["lm_only_val_ndcg@10_mean"] = float(np.mean([x.mean() for x in lm_val_user[v]]))
        if v != "full" and "full" in per_user:
            for key, users in zip(DIFFERENCES, (per_user, lm_user, val_user, lm_val_user)):
                row[key] = paired_comparison(np.stack(users[v]), np.stack(users["full"]))
        rows[v] = row
    converged_names = [converged_darec_name(s, a.sasrec_len, pat, shipped_darec_patience()) for s in a.seeds]
    converged = [load(Path(a.converged_from), n).meta for n in converged_names if is_done(Path(a.converged_from), n)]
    budget_check = None
    if converged and "full" in rows:
        # the fused score is mostly SASRec's after one epoch, so the language-model path's own validation NDCG@10 (at
        # the selected checkpoint) is reported too: it shows how far the part that the ablations change has trained
        at_budget = {k: float(np.mean([m[k] for m in metas["full"]])) for k in ("best_val_ndcg@10", "val_ndcg@10_lm_only")}
        conv = {k: float(np.mean([m[k] for m in converged])) for k in at_budget}
        ratio = at_budget["best_val_ndcg@10"] / conv["best_val_ndcg@10"]
        budget_check = {"full_val_at_budget": at_budget["best_val_ndcg@10"], "converged_val": conv["best_val_ndcg@10"],
                        "ratio": ratio, "met": ratio >= 0.9,
                        "lm_only_val_at_budget": at_budget["val_ndcg@10_lm_only"],
                        "lm_only_converged_val": conv["val_ndcg@10_lm_only"],
                        "lm_only_ratio": at_budget["val_ndcg@10_lm_only"] / conv["val_ndcg@10_lm_only"]}
    result = {"benchmark": "DARec ablation on ml-100k", "machine": machine(), "command": command("benchmarks/ablation.py", argv),
              "git": git_commit((a.out,)), "seeds": a.seeds, "epochs": a.epochs, "sasrec_patience": pat, "variants": {v: VARIANTS[v] for v in a.variants},
              "budget_vs_converged": budget_check, "results": rows}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    def vs(d: dict[str, Any] | None) -> str:
        return f"{d['mean']:+.4f} {interval(d['bootstrap_95ci'])}" if d else "-"

    print(f"{'variant':<22}{'test NDCG@10':>20}{'vs full (95% CI)':>34}{'LM alone':>20}{'vs full (95% CI)':>34}{'fit s':>8}")
    for v, r in rows.items():
        print(f"{v:<22}{r['test_ndcg@10_mean']:>12.4f} ± {r['test_ndcg@10_std']:.4f}{vs(r.get('minus_full')):>34}"
              f"{r['lm_only_test_ndcg@10_mean']:>12.4f} ± {r['lm_only_test_ndcg@10_std']:.4f}"
              f"{vs(r.get('lm_only_minus_full')):>34}{np.mean(r['fit_s']):>8.0f}")
    print(f"\n{'validation':<22}{'NDCG@10':>12}{'vs full (95% CI)':>34}{'LM alone':>12}{'vs full (95% CI)':>34}")
    for v, r in rows.items():
        print(f"{v:<22}{r['val_ndcg@10_mean']:>12.4f}{vs(r.get('val_minus_full')):>34}"
              f"{r['lm_only_val_ndcg@10_mean']:>12.4f}{vs(r.get('lm_only_val_minus_full')):>34}")
    print(f"\n{'95% CIs vs full, seeds and users resampled':<44}" + "".join(f"{k:>26}" for k in DIFFERENCES))
    for v, r in rows.items():
        if "seed_user_95ci" in r.get("minus_full", {}):
            print(f"{v:<44}" + "".join(f"{interval(r[k]['seed_user_95ci']):>26}" for k in DIFFERENCES))
    if budget_check:
        print(f"budget: full reaches {budget_check['ratio']:.2f}x the converged validation NDCG@10 (target >= 0.9); "
              f"its language-model path alone {budget_check['lm_only_ratio']:.2f}x")
    print(f"wrote {a.out}")
    return result


def _lm_or_fused(work: Path, name: str) -> Any:
    """The run's language-model-only scores where it has a residual part, else its scores (they are the same)."""
    return load(work, name, lm_only=has_lm_only(work, name))


if __name__ == "__main__":
    main()
