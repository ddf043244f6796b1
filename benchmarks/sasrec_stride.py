"""Does the training-window stride move SASRec's validation and test NDCG@10 alike? (issue 11's open question)

DARec at stride 25 against its shipped 50 gained on test twice (``darec_ml100k_stride.json``,
``darec_ml100k_stride_confirm.json``) and not on validation either time. This asks whether windowing alone splits the two
held-out items that way: SASRec (history length ``--sasrec-len``, patience ``--sasrec-patience``, early stopping on
validation NDCG@10, ``benchmarks/runs.py``) at ``--stride`` against its shipped stride (25 = ``max_len/2`` for length
50; for length 100 the shipped config sets 25 too), per seed, same split. Per-user NDCG@10 is averaged over the seeds
and compared paired over users with a bootstrap 95% CI (and one that resamples the seeds too), on validation and on
test. The runs at the shipped stride are those of ``benchmarks/darec_ml100k.py`` in the same ``--work-dir`` (reused by
name).

    python benchmarks/sasrec_stride.py [--seeds 0 1 2] [--stride 50] [--jobs 2] [--threads 1] [--sasrec-len 100]

Prints a table and writes ``benchmarks/sasrec_stride.json`` (machine, command, commit).
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
from runs import RunSpec, add_converged_sasrec_args, load, ndcg10, run_all, sasrec_spec  # noqa: E402

META = ("fit_s", "epochs_run", "stopped_by", "best_val_ndcg@10", "test_ndcg@10", "torch_threads")


def stride_spec(length: int, seed: int, patience: int, stride: int) -> RunSpec:
    shipped = sasrec_spec(length, seed, patience)
    return RunSpec(f"{shipped.name.removesuffix(f'_s{seed}')}_stride{stride}_s{seed}", "sasrec", seed, shipped.model,
                   {**shipped.data, "stride": stride}, shipped.trainer)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_converged_sasrec_args(p, __file__)
    p.add_argument("--stride", type=int, default=50, help="the stride compared with the shipped config's")
    a = p.parse_args(argv)
    work, length, pat = Path(a.work_dir), a.sasrec_len, a.sasrec_patience
    shipped = [sasrec_spec(length, s, pat) for s in a.seeds]
    other = [stride_spec(length, s, pat, a.stride) for s in a.seeds]
    run_all(shipped + other, work, a.data_dir, a.jobs, a.threads)

    arms = {"shipped": {r.name: load(work, r.name) for r in shipped},
            f"stride{a.stride}": {r.name: load(work, r.name) for r in other}}
    per_user = {arm: {split: np.stack([ndcg10(run.ranks(split)) for run in loaded.values()]) for split in ("val", "test")}
                for arm, loaded in arms.items()}
    models = {arm: {"runs": list(loaded), **{f"{split}_ndcg@10_mean": float(per_user[arm][split].mean()) for split in ("val", "test")},
                    "per_seed": [{k: run.meta.get(k) for k in META} for run in loaded.values()]}
              for arm, loaded in arms.items()}
    mine = f"stride{a.stride}"
    comparison = {split: paired_comparison(per_user[mine][split], per_user["shipped"][split]) for split in ("val", "test")}
    result = {"benchmark": "SASRec's training-window stride on ml-100k, validation against test (full ranking, leave-one-out)",
              "machine": machine(), "command": command("benchmarks/sasrec_stride.py", argv), "git": git_commit((a.out,)),
              "seeds": a.seeds, "sasrec_len": length, "sasrec_patience": pat, "stride": a.stride,
              "models": models, f"{mine} - shipped": comparison}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'SASRec':<12}{'val NDCG@10':>12}{'test NDCG@10':>14}   per seed (best val / test, epochs)")
    for arm, m in models.items():
        seeds = ", ".join(f"{r['best_val_ndcg@10']:.4f}/{r['test_ndcg@10']:.4f} ({r['epochs_run']})" for r in m["per_seed"])
        print(f"{arm:<12}{m['val_ndcg@10_mean']:>12.4f}{m['test_ndcg@10_mean']:>14.4f}   {seeds}")
    for split, c in comparison.items():
        both = f"  seeds and users {interval(c['seed_user_95ci'])}" if "seed_user_95ci" in c else ""
        print(f"{mine} - shipped, {split:<5}{c['mean']:>+9.4f}   {interval(c['bootstrap_95ci'])}  ratio {c['ratio']:.3f}{both}")
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
