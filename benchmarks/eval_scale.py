"""Full-ranking evaluation at catalogue scale: peak memory and time against the bare score matmul.

Synthetic vectors for ``--users`` users and ``--items`` items (d = ``--dim``), a random history of
``--history`` items per user and one target each. It times, side by side in one process:

- ``matmul``: the bare score products ``U_b @ I.T`` over the same user batches and item chunks (the floor);
- ``ranks``: :func:`darec.evaluation.dot_product_ranks` (scores, history masking, tie-aware ranks);
- ``topk``: the ``predict`` top-10 export (:func:`darec.modules.base.chunked_topk`).

Peak RSS is read from the OS after each phase. Prints a table and writes ``benchmarks/eval_scale.json``.

    python benchmarks/eval_scale.py [--users 100000 --items 100000 --dim 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from darec.evaluation import RankHistogram, dot_product_ranks  # noqa: E402
from darec.modules.base import chunked_topk  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--history", type=int, default=50, help="history items per user (masked)")
    p.add_argument("--user-batch", type=int, default=1024)
    p.add_argument("--chunk", type=int, default=8192, help="items scored at once")
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    a = p.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    users = torch.randn(a.users, a.dim, generator=g)
    items = torch.randn(a.items + 1, a.dim, generator=g)
    targets = torch.randint(1, a.items + 1, (a.users,), generator=g)
    history = torch.randint(1, a.items + 1, (a.users, a.history), generator=g)
    base_rss = peak_rss_gb()
    batches = [(lo, min(a.users, lo + a.user_batch)) for lo in range(0, a.users, a.user_batch)]

    t0 = time.perf_counter()
    with torch.no_grad():
        for lo, hi in batches:
            for c in range(1, a.items + 1, a.chunk):
                (users[lo:hi] @ items[c : c + a.chunk].T).max()
    t_mm = time.perf_counter() - t0
    rss_mm = peak_rss_gb()

    metric = RankHistogram()
    t0 = time.perf_counter()
    with torch.no_grad():
        for lo, hi in batches:
            metric.update(dot_product_ranks(users[lo:hi], items, targets[lo:hi], history[lo:hi], chunk_size=a.chunk))
    t_rank = time.perf_counter() - t0
    rss_rank = peak_rss_gb()
    ndcg = float(metric.compute()["ndcg@10"])

    t0 = time.perf_counter()
    with torch.no_grad():
        for lo, hi in batches:
            u = users[lo:hi]
            chunked_topk(lambda s, e: u @ items[s:e].T, a.items, history[lo:hi], 10, a.chunk)
    t_topk = time.perf_counter() - t0
    rss_topk = peak_rss_gb()

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip() or None
    result = {
        "benchmark": "full-ranking evaluation at scale (synthetic vectors)",
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "command": " ".join([sys.executable, "benchmarks/eval_scale.py"] + list(argv if argv is not None else sys.argv[1:])),
        "commit": commit, "config": vars(a),
        "inputs_rss_gb": base_rss,
        "matmul_s": t_mm, "ranks_s": t_rank, "topk_s": t_topk,
        "ranks_over_matmul": t_rank / t_mm, "topk_over_matmul": t_topk / t_mm,
        "peak_rss_gb": {"after_matmul": rss_mm, "after_ranks": rss_rank, "after_topk": rss_topk},
        "targets": {"peak_rss_gb_max": 4.0, "time_over_matmul_max": 2.0},
        "targets_met": {"memory": rss_topk <= 4.0, "ranks_time": t_rank / t_mm <= 2.0, "topk_time": t_topk / t_mm <= 2.0},
        "ndcg@10_random_vectors": ndcg,
    }
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'phase':<10}{'seconds':>10}{'x matmul':>10}{'peak RSS GB':>13}")
    for name, t, r in (("matmul", t_mm, rss_mm), ("ranks", t_rank, rss_rank), ("top-10", t_topk, rss_topk)):
        print(f"{name:<10}{t:>10.1f}{t / t_mm:>10.2f}{r:>13.2f}")
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
