"""``darec demo`` as a new user runs it: wall time, lines printed, and the comparison it ends with.

Runs ``darec demo`` (default budgets unless options are passed through) in a fresh working directory as a
subprocess whose output is a pipe, as in a log file or CI (one line per epoch, no progress bars), and records:

- the wall time of the whole command (download included when the raw files are not cached), the load average
  before and after, and the torch thread count the demo used;
- how many lines it printed, and the lines themselves;
- the demo's own ``results.json`` (test metrics, epochs and fit seconds per model).

    python benchmarks/demo_ml100k.py [--dir DIR] [--out FILE] [-- extra darec demo options]

Run it with nothing else on the machine: ``DEMO_MINUTES`` in ``darec/cli/demo.py`` quotes its wall time.
Prints a table and writes ``benchmarks/demo_ml100k.json`` (machine, command, commit) and the demo's chart
beside it (``demo_ml100k.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import command, git_commit, machine  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=None, help="demo working directory (default: a fresh temporary directory)")
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    p.add_argument("demo_args", nargs="*", help="options passed to darec demo (after --)")
    a = p.parse_args(argv)
    workdir = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="darec_demo_"))
    if workdir.exists() and any(workdir.iterdir()) and a.dir:
        raise SystemExit(f"{workdir} is not empty: the demo must start from nothing (remove it or pick another --dir)")
    cmd = [sys.executable, "-m", "darec.cli.main", "demo", "--dir", str(workdir), *a.demo_args]
    before = machine()
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
    wall = time.time() - t0
    after = machine()
    lines = (proc.stdout + proc.stderr).splitlines()
    if proc.returncode != 0:
        print("\n".join(lines[-40:]))
        raise SystemExit(f"darec demo failed (exit {proc.returncode})")
    results = json.loads((workdir / "results.json").read_text())
    shutil.copyfile(workdir / "comparison.png", Path(a.out).with_suffix(".png"))
    out = {
        "benchmark": "darec demo on ml-100k (CPU, default budgets unless demo_args says otherwise)",
        "machine": before, "load_average_after": after["load_average_1_5_15"],
        "command": command("benchmarks/demo_ml100k.py", argv), "demo_command": " ".join(cmd[2:]),
        "demo_args": a.demo_args, "git": git_commit((a.out, Path(a.out).with_suffix(".png"))), "wall_s": wall, "wall_min": wall / 60,
        "lines_printed": len(lines), "output": lines, **results,
    }
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"{'model':<12}{'test NDCG@10':>14}{'test HR@10':>12}{'epochs':>8}{'fit s':>8}")
    for name, r in results["results"].items():
        print(f"{name:<12}{r['test']['ndcg@10']:>14.4f}{r['test']['hr@10']:>12.4f}{r['epochs']:>8}{r['fit_s']:>8.0f}")
    print(f"wall time {wall / 60:.1f} min, {len(lines)} lines printed, load average before {before['load_average_1_5_15']}")
    print(f"wrote {a.out}")
    return out


if __name__ == "__main__":
    main()
