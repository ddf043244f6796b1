"""Do stored runs come out the same when trained again at another commit?

A record (``darec_ml100k.json``, ``ablation.json``) is quoted for the code as it stands only while its runs would come
out the same at that code. This compares runs trained again (``--work-dir``, for example at the final commit, with the
same SASRec and LightGCN runs linked in) with the stored runs of the same names (``--reference-dir``): the validation
curve epoch by epoch, the epochs run, the residual weight, validation and test NDCG@10 (fused and the language model
alone) and the largest difference of any test score. Nothing is trained here.

    python benchmarks/reproduce.py --reference-dir benchmarks/_work/ml100k_mask --work-dir benchmarks/_work/repro_head

Without ``--runs``, every finished run trained in ``--work-dir`` (linked runs are skipped) with a finished namesake in
``--reference-dir`` is compared. Writes ``benchmarks/reproduce.json`` (machine, command, commit).
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

from common import command, git_commit, machine  # noqa: E402
from runs import has_lm_only, is_done, load, ndcg10  # noqa: E402

TOLERANCE = 1e-6  # NDCG@10 and validation-curve differences below this count as equal


def trained_here(work: Path) -> list[str]:
    """Names of the finished runs trained in ``work`` itself (linked-in runs are someone else's)."""
    return sorted(d.name for d in work.iterdir() if d.is_dir() and not d.is_symlink() and is_done(work, d.name))


def compare(reference: Path, work: Path, name: str) -> dict[str, Any]:
    """One run against its namesake: per-figure differences (``again - reference``) and ``equal``."""
    ref, new = load(reference, name), load(work, name)
    out: dict[str, Any] = {"name": name, "commits": {"reference": ref.meta["git"]["commit"], "again": new.meta["git"]["commit"]},
                           "epochs_run": {"reference": ref.meta["epochs_run"], "again": new.meta["epochs_run"]}}
    curve_keys = [k for k in ("val_ndcg@10", "val_lm_ndcg@10") if k in ref.meta["curve"][0]]
    same_length = len(ref.meta["curve"]) == len(new.meta["curve"])
    out["curve_max_abs_diff"] = (max(abs(a[k] - b[k]) for a, b in zip(ref.meta["curve"], new.meta["curve"]) for k in curve_keys)
                                 if same_length else None)
    figures = [k for k in ("val_ndcg@10", "test_ndcg@10", "val_ndcg@10_lm_only", "test_ndcg@10_lm_only", "residual_weight")
               if k in ref.meta]
    out["figures"] = {k: {"reference": ref.meta[k], "again": new.meta.get(k)} for k in figures}
    if not np.array_equal(ref.targets["test"], new.targets["test"]):
        raise SystemExit(f"error: {name} has other test targets in {work} than in {reference}: not the same data")
    per_user = ndcg10(new.ranks("test")) - ndcg10(ref.ranks("test"))
    out["test_per_user_ndcg_max_abs_diff"] = float(np.abs(per_user).max())
    finite = np.isfinite(ref.scores["test"]) & np.isfinite(new.scores["test"])
    out["test_score_max_abs_diff"] = float(np.abs(new.scores["test"][finite] - ref.scores["test"][finite]).max())
    if has_lm_only(reference, name) and has_lm_only(work, name):
        lm_diff = ndcg10(load(work, name, lm_only=True).ranks("test")) - ndcg10(load(reference, name, lm_only=True).ranks("test"))
        out["test_lm_only_per_user_ndcg_max_abs_diff"] = float(np.abs(lm_diff).max())
    out["equal"] = bool(same_length and out["curve_max_abs_diff"] <= TOLERANCE
                        and all(f["again"] is not None and abs(f["again"] - f["reference"]) <= TOLERANCE for f in out["figures"].values())
                        and out["test_per_user_ndcg_max_abs_diff"] <= TOLERANCE)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference-dir", required=True, help="the work folder of the stored runs (the record's)")
    p.add_argument("--work-dir", required=True, help="the work folder of the same runs trained again")
    p.add_argument("--runs", nargs="+", default=None, help="run names to compare (default: every run trained in --work-dir)")
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    a = p.parse_args(argv)
    reference, work = Path(a.reference_dir), Path(a.work_dir)
    names = a.runs or trained_here(work)
    missing = [n for n in names if not is_done(reference, n) or not is_done(work, n)]
    if missing:
        raise SystemExit(f"error: not finished in both folders: {', '.join(missing)}")
    if not names:
        raise SystemExit(f"error: no finished run trained in {work}")
    rows = [compare(reference, work, n) for n in names]
    result = {"benchmark": "stored runs trained again: the same figures?", "machine": machine(),
              "command": command("benchmarks/reproduce.py", argv), "git": git_commit((a.out,)),
              "reference_dir": str(reference), "work_dir": str(work), "tolerance": TOLERANCE, "runs": rows,
              "all_equal": all(r["equal"] for r in rows)}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'run':<52}{'commits (stored -> again)':>28}{'epochs':>9}{'max |curve|':>13}{'test NDCG@10':>15}"
          f"{'max |user|':>12}{'max |score|':>13}  equal")
    for r in rows:
        t = r["figures"].get("test_ndcg@10", {})
        curve = "n/a" if r["curve_max_abs_diff"] is None else f"{r['curve_max_abs_diff']:.1e}"
        print(f"{r['name']:<52}{r['commits']['reference'][:7] + ' -> ' + r['commits']['again'][:7]:>28}"
              f"{str(r['epochs_run']['reference']) + '/' + str(r['epochs_run']['again']):>9}{curve:>13}"
              f"{t.get('again', float('nan')):>15.4f}{r['test_per_user_ndcg_max_abs_diff']:>12.1e}"
              f"{r['test_score_max_abs_diff']:>13.1e}  {'yes' if r['equal'] else 'NO'}")
    print(f"all equal within {TOLERANCE:g}: {'yes' if result['all_equal'] else 'NO'}")
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
