"""Preparing a large Amazon 2023 log: peak memory and rows per second.

Generates ``--rows`` reviews in the Amazon Reviews 2023 JSON-lines format, gzipped (see
``benchmarks/amazon_synth.py``: ``rows/10`` users, ``rows/50`` items, Zipf-like popularity, plus a
metadata file with cold items), then runs ``darec.data.prepare.prepare`` on it (the streaming
``amazon`` reader, the array pipeline, the Arrow writer) in a fresh child process, so the peak RSS
(``ru_maxrss``) is that of preparation alone. Prints a table and writes
``benchmarks/prepare_scale.json`` with the machine, the command and the commit.

    python benchmarks/prepare_scale.py --rows 10000000 [--work benchmarks/_work/prepare_scale]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

TARGET_PEAK_RSS_GB = 4.0
_CHILD = """
import json, resource, sys, time
from darec.data.prepare import DataConfig, prepare
cfg = DataConfig.from_dict(json.loads(sys.argv[1]))
t0 = time.perf_counter()
out = prepare(cfg, force=True)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
                  "stats": json.loads((out / "stats.json").read_text())}))
"""


def prepare_in_child(config: dict) -> dict:
    """Run ``prepare`` in a fresh interpreter; its timing, peak RSS and stats."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(config)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    from amazon_synth import write_amazon2023
    from common import git_commit, machine

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[10_000_000], help="one run per size, smallest first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "_work" / "prepare_scale"), help="scratch directory")
    p.add_argument("--keep", action="store_true", help="keep the generated files and the prepared directories")
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    a = p.parse_args(argv)
    work = Path(a.work)
    runs = []
    for rows in sorted(a.rows):
        t0 = time.perf_counter()
        reviews, meta = write_amazon2023(work / f"raw-{rows}", rows, seed=a.seed)
        gen_s = time.perf_counter() - t0
        config = {"reader": "amazon", "out": str(work / f"prepared-{rows}"),
                  "options": {"reviews": str(reviews), "meta": str(meta), "flavour": "2023"}}
        run = prepare_in_child(config)
        stats = run["stats"]
        runs.append({
            "rows": rows, "reviews_gz_bytes": reviews.stat().st_size, "meta_gz_bytes": meta.stat().st_size,
            "generate_seconds": gen_s, "prepare_seconds": run["seconds"], "rows_per_second": rows / run["seconds"],
            "peak_rss_gb": run["peak_rss_gb"],
            "prepared": {k: stats[k] for k in ("users", "items", "cold_items", "interactions", "dropped")},
        })
        if not a.keep:
            shutil.rmtree(work / f"raw-{rows}", ignore_errors=True)
            shutil.rmtree(work / f"prepared-{rows}", ignore_errors=True)
    peak = max(r["peak_rss_gb"] for r in runs)
    result = {
        "benchmark": "prepare a synthetic Amazon 2023 log (streaming reader, array pipeline)",
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, "benchmarks/prepare_scale.py", *(argv if argv is not None else sys.argv[1:])]),
        "git": git_commit((a.out,)),
        "config": {k: v for k, v in vars(a).items() if k != "out"},
        "runs": runs,
        "target": {"peak_rss_gb_max": TARGET_PEAK_RSS_GB, "met": peak <= TARGET_PEAK_RSS_GB},
    }
    if len(runs) > 1:
        lo, hi = runs[0], runs[-1]
        result["peak_rss_bytes_per_extra_row"] = (hi["peak_rss_gb"] - lo["peak_rss_gb"]) * 1024**3 / (hi["rows"] - lo["rows"])
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'rows':>12}{'users':>10}{'items':>9}{'gz MB':>8}{'prepare s':>11}{'rows/s':>10}{'peak RSS GB':>13}")
    for r in runs:
        s = r["prepared"]
        print(f"{r['rows']:>12,}{s['users']:>10,}{s['items']:>9,}{r['reviews_gz_bytes'] / 2**20:>8.0f}"
              f"{r['prepare_seconds']:>11.1f}{r['rows_per_second']:>10,.0f}{r['peak_rss_gb']:>13.2f}")
    if "peak_rss_bytes_per_extra_row" in result:
        print(f"peak RSS grows by {result['peak_rss_bytes_per_extra_row']:.0f} bytes per extra input row")
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
