"""A text-aware CF source for DARec on ml-100k (issue 11's lever): does injecting it make DARec earn its place?

Per seed ``s``, every model from its shipped config with early stopping on validation NDCG@10 (``benchmarks/runs.py``;
the runs of ``benchmarks/darec_ml100k.py`` in the same ``--work-dir`` are reused by name):

- SASRec (history length ``--sasrec-len``, patience ``--sasrec-patience``): the baseline;
- text-aware SASRec: the same, with each item's embedding its ID row plus a learned map of its frozen MiniLM
  sentence vector (``text_backbone: minilm``), in the input and the tied scoring table;
- DARec (default config) injecting the plain SASRec and LightGCN ``s``;
- DARec injecting the text-aware SASRec (folded into an ordinary SASRec export) and the same LightGCN.

Comparisons, paired bootstrap over users of the seed-mean per-user NDCG@10 (and one over seeds and users), on
validation (what a default is chosen by) and on test (read once, for the report): text-aware SASRec against SASRec
(the lever on the baseline alone); DARec with the text-aware source against SASRec (the issue's target, 1.10x with
the CI above 0), against the text-aware SASRec it injects (the honest control: its residual score is that model's),
and against DARec with the plain source; and DARec's language-model path alone with each source.

    python benchmarks/text_cf_ml100k.py [--seeds 0 1 2] [--jobs 2] [--threads 1] [--sasrec-len 100]
                                        [--sasrec-patience 25] [--work-dir benchmarks/_work/darec_ml100k]

Prints a table and writes ``benchmarks/text_cf_ml100k.json`` (machine, command, commit).
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

from common import command, git_commit, interval, machine, paired_comparison, print_targets  # noqa: E402
from runs import (RunSpec, add_converged_sasrec_args, converged_darec_name, darec_name, load, ndcg10, run_all, sasrec_name,  # noqa: E402
                  sasrec_spec, shipped_darec_patience)

META = ("fit_s", "epochs_run", "stopped_by", "best_val_ndcg@10", "val_ndcg@10", "test_ndcg@10", "torch_threads")


def text_sasrec_name(length: int, seed: int, patience: int) -> str:
    return "sasrec_text_" + sasrec_name(length, seed, patience).removeprefix("sasrec_")


def specs(seeds: list[int], length: int, patience: int, darec_patience: int, work: Path) -> list[RunSpec]:
    out = []
    for s in seeds:
        plain = sasrec_spec(length, s, patience)
        text = RunSpec(text_sasrec_name(length, s, patience), "sasrec", s,
                       {**plain.model, "text_backbone": "minilm", "text_dim": 384, "text_cache_dir": str(work / "cache")},
                       plain.data, plain.trainer)
        out += [plain, text, RunSpec(f"lightgcn_s{s}", "lightgcn", s)]
        for source in (plain.name, text.name):
            variant = f"darec_p{darec_patience}" + ("_textcf" if source == text.name else "")
            out.append(RunSpec(darec_name(variant, s, length, patience), "darec", s, trainer={"patience": darec_patience},
                               cf_from=source, lightgcn_from=f"lightgcn_s{s}"))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_converged_sasrec_args(p, __file__)
    a = p.parse_args(argv)
    work, length, pat = Path(a.work_dir), a.sasrec_len, a.sasrec_patience
    dpat = shipped_darec_patience()
    run_all(specs(a.seeds, length, pat, dpat, work), work, a.data_dir, a.jobs, a.threads)

    names = {"sasrec": lambda s: sasrec_name(length, s, pat), "sasrec_text": lambda s: text_sasrec_name(length, s, pat),
             "darec": lambda s: converged_darec_name(s, length, pat, dpat),
             "darec_textcf": lambda s: darec_name(f"darec_p{dpat}_textcf", s, length, pat)}
    users: dict[str, dict[str, list[np.ndarray]]] = {"val": {}, "test": {}}
    runs_meta: dict[str, list[dict[str, Any]]] = {}
    for s in a.seeds:
        for model, name in names.items():
            loaded = {model: load(work, name(s))}
            if model.startswith("darec"):
                loaded[model + "_lm_only"] = load(work, name(s), lm_only=True)
            for key, run in loaded.items():
                for split in users:
                    users[split].setdefault(key, []).append(ndcg10(run.ranks(split)))
            runs_meta.setdefault(model, []).append({k: loaded[model].meta.get(k) for k in META})
    seed_user = {split: {k: np.stack(v) for k, v in per.items()} for split, per in users.items()}  # [seeds, users]
    models = {k: {f"{split}_ndcg@10_mean": float(np.mean([x.mean() for x in users[split][k]])) for split in users}
              | {"test_ndcg@10_per_seed": [float(x.mean()) for x in users["test"][k]], "runs": runs_meta.get(k)}
              for k in users["test"]}
    pairs = [("sasrec_text", "sasrec"), ("darec_textcf", "sasrec"), ("darec_textcf", "sasrec_text"),
             ("darec_textcf", "darec"), ("darec", "sasrec"), ("darec_textcf_lm_only", "sasrec"),
             ("darec_textcf_lm_only", "darec_lm_only")]
    comparisons = {}
    for model, ref in pairs:
        comparisons[f"{model} - {ref}"] = {split: paired_comparison(seed_user[split][model], seed_user[split][ref])
                                           for split in ("val", "test")}
    t = comparisons["darec_textcf - sasrec"]["test"]
    ctrl = comparisons["darec_textcf - sasrec_text"]["test"]
    targets = {"darec (text-aware source) >= 1.10x sasrec with CI above 0":
               {"ratio": t["ratio"], "ci_low": t["bootstrap_95ci"][0], "met": t["ratio"] >= 1.10 and t["bootstrap_95ci"][0] > 0},
               "darec (text-aware source) ahead of the text-aware sasrec it injects":
               {"diff": ctrl["mean"], "ci_low": ctrl["bootstrap_95ci"][0], "met": ctrl["bootstrap_95ci"][0] > 0}}
    result = {"benchmark": "DARec with a text-aware SASRec as its CF source, on ml-100k (full ranking, leave-one-out)",
              "machine": machine(), "command": command("benchmarks/text_cf_ml100k.py", argv), "git": git_commit((a.out,)),
              "seeds": a.seeds, "sasrec_len": length, "sasrec_patience": pat, "darec_patience": dpat,
              "models": models, "comparisons": comparisons, "targets": targets}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    _print(result)
    print(f"wrote {a.out}")
    return result


def _print(r: dict[str, Any]) -> None:
    print(f"\n{'model':<24}{'val NDCG@10':>12}{'test NDCG@10':>14}   test per seed")
    for name, m in r["models"].items():
        print(f"{name:<24}{m['val_ndcg@10_mean']:>12.4f}{m['test_ndcg@10_mean']:>14.4f}   "
              + ", ".join(f"{x:.4f}" for x in m["test_ndcg@10_per_seed"]))
    print(f"\n{'comparison':<40}{'split':>6}{'diff':>9}{'95% CI':>22}{'ratio':>8}")
    for name, row in r["comparisons"].items():
        for split, c in row.items():
            print(f"{name:<40}{split:>6}{c['mean']:>+9.4f}   {interval(c['bootstrap_95ci'])}{c['ratio']:>8.3f}")
    print()
    print_targets(r["targets"])


if __name__ == "__main__":
    main()
