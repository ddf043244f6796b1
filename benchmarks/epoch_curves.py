"""Validation and test after every epoch, for DARec's default and variants of it (issue 11's open question).

DARec at stride 25 gained on test against the shipped stride 50 on all six seeds, and on validation not at all
(``darec_ml100k_stride.json``, ``darec_ml100k_stride_confirm.json``). Both figures come from the one checkpoint that
validation selects, so a gap between them may be the selection's luck (which epoch, which residual weight) or a
difference in what the models learn. This benchmark tells the two apart: each DARec run (injecting the converged SASRec
and LightGCN of ``darec_ml100k.py``, same names and folder) also scores the test split after every validation pass,
per user, fused and language model alone. **Test is recorded, never read**: checkpointing, early stopping and the
residual weight see validation only, as in every other run, and the random states are restored around the extra
scoring, so training is the same as without it (checked against the stored run of the same setting where one exists).

Each ``--variants`` entry is one setting: comma-separated ``KEY=VALUE`` pairs as ``darec_ml100k.py --darec-set``
takes them (``data.`` for the data module; ``adapters=skip,serial:16,...`` as ``--darec-adapters`` takes it), or
``default``. The first entry is the reference (one entry alone is compared with nothing but its SASRec). Reported per pair:
the per-epoch means over seeds, and paired bootstraps (over users, and over seeds and users) of NDCG@10 averaged
over the epochs that every run of both settings trained (no selection at all), on validation and on test. Per
setting, the checkpoints validation selects are also compared with the SASRec runs DARec injects (paired over users).
``--sasrec-set KEY=VALUE ...`` makes DARec inject a SASRec variant (``sasrec_variant.py --set``) instead.

    python benchmarks/epoch_curves.py [--variants default data.stride=25] [--seeds 0 1 2] [--jobs 2] [--threads 1]

Prints tables and writes ``benchmarks/epoch_curves.json`` (machine, command, commit).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import comma_list, command, git_commit, interval, machine, paired_comparison  # noqa: E402
from darec_ml100k import Extra, parse_set, specs  # noqa: E402
from runs import RunSpec, add_converged_sasrec_args, is_done, load, ndcg10, run_all, run_dir, shipped_darec_patience  # noqa: E402
from sasrec_variant import MAX_MINUTES, variant_spec  # noqa: E402

SCORES = (("val", ""), ("val", "_lm"), ("test", ""), ("test", "_lm"))  # (split, "" fused | "_lm" language model alone)


def variant_setting(text: str) -> tuple[Any, ...]:
    """``default`` or ``KEY=VALUE,KEY=VALUE`` -> the ``darec_ml100k.py`` setting (shipped patience, lr, adapters, length).

    A comma starts a new pair only where ``KEY=`` follows it, so ``adapters=skip,skip,serial:16,none`` names a list;
    ``adapters`` fills the setting's own field, as ``--darec-adapters`` does, so its runs are named like that script's."""
    if text == "default":
        return (shipped_darec_patience(), None, None, None, ())
    pairs = dict(parse_set(re.split(r",(?=[A-Za-z_][\w.]*=)", text)))
    adapters = pairs.pop("adapters", None)
    if adapters is not None:
        adapters = [str(a) for a in adapters] if isinstance(adapters, list) else comma_list(str(adapters))
    return (shipped_darec_patience(), None, adapters, None, tuple(sorted(pairs.items())))


def curve_specs(variant: str, seeds: list[int], sasrec_len: int, sasrec_patience: int, sasrec_extra: Extra = (),
                sasrec_minutes: int = MAX_MINUTES) -> tuple[list[RunSpec], list[RunSpec]]:
    """The runs one variant's DARec injects (SASRec and LightGCN of each seed; not the ensemble partner, which only
    ``darec_ml100k.py``'s control reads) and its DARec runs with per-epoch test scores, named ``curves_<the
    darec_ml100k.py name>``. With ``sasrec_extra`` (``--sasrec-set``), DARec injects that SASRec variant
    (``sasrec_variant.py``'s run) instead of the shipped one, and its runs' names say so."""
    needed = specs(seeds, sasrec_len, sasrec_patience, variant_setting(variant))
    darec = [replace(s, name=f"curves_{s.name}", test_every_epoch=True) for s in needed if s.kind == "darec"]
    if sasrec_extra:
        sources = {s.seed: variant_spec(sasrec_len, s.seed, sasrec_patience, sasrec_extra, sasrec_minutes) for s in darec}
        shipped = f"_sasL{sasrec_len}p{sasrec_patience}_"
        darec = [replace(s, name=s.name.replace(shipped, f"_{sources[s.seed].name.removesuffix(f'_s{s.seed}')}_"),
                         cf_from=sources[s.seed].name) for s in darec]
        needed = needed + list(sources.values())
    injected = {name for s in darec for name in (s.cf_from, s.lightgcn_from)}
    return [s for s in needed if s.name in injected], darec


def against_sasrec(work: Path, darec: list[RunSpec]) -> dict[str, Any]:
    """Each DARec run at the checkpoint validation selected against the SASRec run it injects: per-user NDCG@10
    averaged over the seeds, paired over users (and over seeds and users), on validation and on test."""
    pairs = [(load(work, s.name), load(work, s.cf_from)) for s in darec]
    return {split: paired_comparison(np.stack([ndcg10(d.ranks(split)) for d, _ in pairs]),
                                     np.stack([ndcg10(sas.ranks(split)) for _, sas in pairs])) for split in ("val", "test")}


def load_curves(work: Path, name: str) -> dict[str, Any]:
    """A curves run: its meta, and per-user NDCG@10 ``[epochs, users]`` per (split, suffix)."""
    meta = json.loads((run_dir(work, name) / "meta.json").read_text())
    epochs = [c["epoch"] for c in meta["curve"]]
    per_user = {f"{split}{sfx}": np.stack([np.load(run_dir(work, name) / "curves" / f"epoch{e}_{split}{sfx}.npy") for e in epochs])
                for split, sfx in SCORES}
    return {"meta": meta, "per_user": per_user}


def reproduction(work: Path, curves_name: str, meta: dict[str, Any]) -> dict[str, Any] | None:
    """How far a curves run's validation curve lies from the stored run of the same setting (None if there is none)."""
    plain = curves_name.removeprefix("curves_")
    if not is_done(work, plain):
        return None
    old = json.loads((run_dir(work, plain) / "meta.json").read_text())["curve"]
    new = meta["curve"]
    n = min(len(old), len(new))
    diff = [abs(a["val_ndcg@10"] - b["val_ndcg@10"]) for a, b in zip(old[:n], new[:n])]
    return {"stored_run": plain, "common_epochs": n, "max_abs_val_diff": max(diff), "epochs_stored": len(old),
            "epochs_now": len(new)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_converged_sasrec_args(p, __file__)
    p.add_argument("--variants", nargs="+", default=["default", "data.stride=25"],
                   help="settings to trace: 'default' or comma-separated KEY=VALUE; the first is the reference")
    p.add_argument("--sasrec-set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="DARec injects this SASRec variant (sasrec_variant.py --set) instead of the shipped SASRec")
    p.add_argument("--sasrec-max-minutes", type=int, default=MAX_MINUTES,
                   help="that variant's fit-time cap (sasrec_variant.py --max-minutes)")
    a = p.parse_args(argv)
    sasrec_extra = parse_set(a.sasrec_set)
    work = Path(a.work_dir)
    base_runs: dict[str, RunSpec] = {}
    darec: dict[str, list[RunSpec]] = {}
    for v in a.variants:
        base, runs = curve_specs(v, a.seeds, a.sasrec_len, a.sasrec_patience, sasrec_extra, a.sasrec_max_minutes)
        base_runs.update({s.name: s for s in base})
        darec[v] = runs
    run_all(list(base_runs.values()) + [s for runs in darec.values() for s in runs], work, a.data_dir, a.jobs, a.threads)

    loaded = {v: [load_curves(work, s.name) for s in runs] for v, runs in darec.items()}
    common = min(len(r["meta"]["curve"]) for runs in loaded.values() for r in runs)
    models: dict[str, Any] = {}
    for v, runs in loaded.items():
        per_seed = []
        for s, r in zip(darec[v], runs):
            curve = r["meta"]["curve"]
            best = int(np.argmax([c["val_ndcg@10"] for c in curve]))
            per_seed.append({"run": s.name, "epochs": len(curve), "selected_epoch": curve[best]["epoch"],
                             "test_at_selected": curve[best]["diag_test_ndcg@10"],
                             "test_lm_at_selected": curve[best].get("diag_test_lm_ndcg@10"),
                             "max_abs_logged_vs_rescored_val": max(abs(c["val_ndcg@10"] - c["diag_val_ndcg@10"]) for c in curve),
                             "reproduction": reproduction(work, s.name, r["meta"]), "curve": curve})
        by_epoch = {key: [float(np.mean([r["per_user"][key][e].mean() for r in runs])) for e in range(common)]
                    for key in runs[0]["per_user"]}
        models[v] = {"per_seed": per_seed, "mean_over_seeds_by_epoch": by_epoch,
                     "selected_vs_injected_sasrec": against_sasrec(work, darec[v])}
    ref = a.variants[0]
    averaged = {v: {key: np.stack([r["per_user"][key][:common].mean(0) for r in runs]) for key in runs[0]["per_user"]}
                for v, runs in loaded.items()}
    comparisons = {f"{v} - {ref}": {key: paired_comparison(averaged[v][key], averaged[ref][key]) for key in averaged[ref]}
                   for v in a.variants[1:]}
    result = {"benchmark": "DARec on ml-100k: validation and test NDCG@10 after every epoch (test recorded, never read)",
              "machine": machine(), "command": command("benchmarks/epoch_curves.py", argv), "git": git_commit((a.out,)),
              "seeds": a.seeds, "sasrec_len": a.sasrec_len, "sasrec_patience": a.sasrec_patience,
              "sasrec_set": dict(sasrec_extra), "sasrec_max_minutes": a.sasrec_max_minutes,
              "common_epochs": common, "models": models, "averaged_over_common_epochs": comparisons}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    _print(result, a.variants)
    print(f"wrote {a.out}")
    return result


def _print(r: dict[str, Any], variants: list[str]) -> None:
    keys = list(r["models"][variants[0]]["mean_over_seeds_by_epoch"])
    for v in variants:
        m = r["models"][v]
        print(f"\n{v}: mean over seeds {r['seeds']} by epoch")
        print(f"{'epoch':>5}" + "".join(f"{k:>14}" for k in keys))
        for e in range(r["common_epochs"]):
            print(f"{e:>5}" + "".join(f"{m['mean_over_seeds_by_epoch'][k][e]:>14.4f}" for k in keys))
        for s in m["per_seed"]:
            rep = s["reproduction"]
            rep_txt = (f"; stored run's val curve within {rep['max_abs_val_diff']:.1e} over {rep['common_epochs']} epochs "
                       f"({rep['epochs_stored']} then, {rep['epochs_now']} now)") if rep else ""
            print(f"  {s['run']}: {s['epochs']} epochs, selected {s['selected_epoch']}, test there {s['test_at_selected']:.4f}"
                  f"{rep_txt}")
        for split, c in m["selected_vs_injected_sasrec"].items():
            both = f"   seeds and users {interval(c['seed_user_95ci'])}" if "seed_user_95ci" in c else ""
            print(f"  selected checkpoints - the injected SASRec, {split:<5}{c['mean']:>+9.4f}   users "
                  f"{interval(c['bootstrap_95ci'])}{both}   ratio {c['ratio']:.3f}")
    if not r["averaged_over_common_epochs"]:
        return
    print(f"\naveraged over epochs 0-{r['common_epochs'] - 1} and the seeds, paired (95% CIs)")
    for name, comp in r["averaged_over_common_epochs"].items():
        for key, c in comp.items():
            both = f"   seeds and users {interval(c['seed_user_95ci'])}" if "seed_user_95ci" in c else ""
            print(f"  {name}, {key:<10}{c['mean']:>+9.4f}   users {interval(c['bootstrap_95ci'])}{both}")


if __name__ == "__main__":
    main()
