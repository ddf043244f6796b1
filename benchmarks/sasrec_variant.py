"""Does a SASRec setting move its validation and test NDCG@10? (issue 11's controls for DARec's training levers)

SASRec (history length ``--sasrec-len``, patience ``--sasrec-patience``, early stopping on validation NDCG@10,
``benchmarks/runs.py``) with the settings of ``--set`` against its shipped config, per seed, same split. ``--set`` takes
``KEY=VALUE`` pairs as ``darec_ml100k.py --darec-set`` does: dotted keys under ``model.init_args``, or under
``data.init_args`` with a ``data.`` prefix (YAML values). Per-user NDCG@10 is averaged over the seeds and compared
paired over users with a bootstrap 95% CI (and one that resamples the seeds too), on validation and on test. The
shipped runs are those of ``benchmarks/darec_ml100k.py`` in the same ``--work-dir`` (reused by name).

    python benchmarks/sasrec_variant.py --set data.stride=50 [--seeds 0 1 2] [--jobs 2] [--threads 1] [--sasrec-len 100]
    python benchmarks/sasrec_variant.py --set mask_seen=false --out /tmp/sasrec_no_mask.json

Prints a table and writes JSON (machine, command, commit). ``sasrec_stride.json`` came from the first command, when
this script was ``sasrec_stride.py --stride 50`` (its runs were named ``..._stride50_s<seed>``).
``sasrec_mask_seen.json`` came from ``--set mask_seen=true --max-minutes 45`` while the shipped config had
``mask_seen: false`` and the shipped runs a 30-minute cap; the second command asks the same question today.
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
from darec_ml100k import Extra, model_and_data, parse_set  # noqa: E402
from runs import FIT_MINUTES, RunSpec, add_converged_sasrec_args, extra_label, load, ndcg10, run_all, sasrec_spec  # noqa: E402

MAX_MINUTES = FIT_MINUTES["sasrec"]  # the shipped SASRec runs' fit-time cap
META = ("fit_s", "epochs_run", "stopped_by", "best_val_ndcg@10", "test_ndcg@10", "torch_threads")


def variant_spec(length: int, seed: int, patience: int, extra: Extra, max_minutes: int = MAX_MINUTES) -> RunSpec:
    """The shipped SASRec run of ``seed`` with ``extra``'s model and ``data.`` keys set, named after them (and after
    its fit-time cap, when it is not the shipped run's)."""
    shipped = sasrec_spec(length, seed, patience)
    model, data = model_and_data(extra)
    cap = "" if max_minutes == MAX_MINUTES else f"_m{max_minutes}"
    return RunSpec(f"{shipped.name.removesuffix(f'_s{seed}')}_set-{extra_label(extra)}{cap}_s{seed}", "sasrec", seed,
                   {**shipped.model, **model}, {**shipped.data, **data}, {**shipped.trainer, "max_minutes": max_minutes})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_converged_sasrec_args(p, __file__)
    p.add_argument("--set", nargs="+", required=True, metavar="KEY=VALUE", dest="settings",
                   help="SASRec settings compared with the shipped config's (e.g. data.stride=50, mask_seen=true)")
    p.add_argument("--max-minutes", type=int, default=MAX_MINUTES,
                   help=f"the variant's fit-time cap (the shipped runs keep theirs, {MAX_MINUTES}): more, where a slower step would "
                        "otherwise stop the variant after fewer epochs than the shipped run had")
    a = p.parse_args(argv)
    extra = parse_set(a.settings)
    if any(k in ("max_len", "data.max_len") for k, _ in extra):
        raise SystemExit("--set cannot change the history length: use --sasrec-len")
    work, length, pat = Path(a.work_dir), a.sasrec_len, a.sasrec_patience
    shipped = [sasrec_spec(length, s, pat) for s in a.seeds]
    other = [variant_spec(length, s, pat, extra, a.max_minutes) for s in a.seeds]
    run_all(shipped + other, work, a.data_dir, a.jobs, a.threads)

    mine = extra_label(extra) + ("" if a.max_minutes == MAX_MINUTES else f" (cap {a.max_minutes} min)")
    arms = {"shipped": {r.name: load(work, r.name) for r in shipped}, mine: {r.name: load(work, r.name) for r in other}}
    per_user = {arm: {split: np.stack([ndcg10(run.ranks(split)) for run in loaded.values()]) for split in ("val", "test")}
                for arm, loaded in arms.items()}
    models = {arm: {"runs": list(loaded), **{f"{split}_ndcg@10_mean": float(per_user[arm][split].mean()) for split in ("val", "test")},
                    "per_seed": [{k: run.meta.get(k) for k in META} for run in loaded.values()]}
              for arm, loaded in arms.items()}
    comparison = {split: paired_comparison(per_user[mine][split], per_user["shipped"][split]) for split in ("val", "test")}
    result = {"benchmark": "a SASRec setting on ml-100k, validation and test (full ranking, leave-one-out)",
              "machine": machine(), "command": command("benchmarks/sasrec_variant.py", argv), "git": git_commit((a.out,)),
              "seeds": a.seeds, "sasrec_len": length, "sasrec_patience": pat, "set": dict(extra), "variant_max_minutes": a.max_minutes,
              "models": models, f"{mine} - shipped": comparison}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    width = max(12, len(mine) + 2)
    print(f"\n{'SASRec':<{width}}{'val NDCG@10':>12}{'test NDCG@10':>14}   per seed (best val / test, epochs)")
    for arm, m in models.items():
        seeds = ", ".join(f"{r['best_val_ndcg@10']:.4f}/{r['test_ndcg@10']:.4f} ({r['epochs_run']})" for r in m["per_seed"])
        print(f"{arm:<{width}}{m['val_ndcg@10_mean']:>12.4f}{m['test_ndcg@10_mean']:>14.4f}   {seeds}")
    for split, c in comparison.items():
        both = f"  seeds and users {interval(c['seed_user_95ci'])}" if "seed_user_95ci" in c else ""
        print(f"{mine} - shipped, {split:<5}{c['mean']:>+9.4f}   {interval(c['bootstrap_95ci'])}  ratio {c['ratio']:.3f}{both}")
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
