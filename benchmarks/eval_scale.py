"""Full-ranking evaluation at catalogue scale: peak memory and time against the bare score matmul.

Synthetic vectors for ``--users`` users and ``--items`` items (d = ``--dim``), a random history of
``--history`` items per user and one target each. Three phases run side by side, interleaved per
user batch so that load from other processes on a shared machine falls on all three alike:

- ``matmul``: the bare score products ``U_b @ I[c:c+chunk].T`` over the same user batches and item
  chunks, with nothing else done to them (the floor);
- ``ranks``: :func:`darec.evaluation.ranking.dot_product_ranks` (scores, history masking, tie-aware exact
  ranks, non-finite check), fed into the rank histogram;
- ``top-10``: the ``predict`` top-K export (:func:`darec.evaluation.ranking.chunked_topk`, the function
  ``RecModule.predict_step`` calls), history masked.

Wall and CPU (``process_time``) seconds are both reported: on a shared machine the CPU-time ratio
is the steadier one. Peak RSS (``ru_maxrss``) is read after the inputs are built and at the end. Prints a table and writes
``benchmarks/eval_scale.json`` with the machine, the command and the commit.

    OMP_NUM_THREADS=1 python benchmarks/eval_scale.py [--users 100000 --items 100000 --dim 64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import git_commit, machine  # noqa: E402

from darec.evaluation.metrics import RankHistogram
from darec.evaluation.ranking import chunked_topk, dot_product_ranks

TARGETS = {"peak_rss_gb_max": 4.0, "time_over_matmul_max": 2.0}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def bare_matmul(u: torch.Tensor, items: torch.Tensor, chunk: int) -> None:
    """The floor: every score chunk computed once and dropped (nothing else is done with it)."""
    for c in range(1, items.shape[0], chunk):
        u @ items[c : c + chunk].T


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--history", type=int, default=50, help="history items per user (masked)")
    p.add_argument("--user-batch", type=int, default=1024)
    p.add_argument("--chunk", type=int, default=2048, help="items scored at once (all three phases)")
    p.add_argument("--k", type=int, default=10, help="top-K of the predict phase")
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    a = p.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    users = torch.randn(a.users, a.dim, generator=g)
    items = torch.randn(a.items + 1, a.dim, generator=g)
    targets = torch.randint(1, a.items + 1, (a.users,), generator=g)
    history = torch.randint(1, a.items + 1, (a.users, a.history), generator=g)
    base_rss = peak_rss_gb()
    metric = RankHistogram()
    phases = ("matmul", "ranks", "top-10")
    seconds = dict.fromkeys(phases, 0.0)
    cpu_seconds = dict.fromkeys(phases, 0.0)

    def timed(name: str, fn: Callable[[], object]) -> None:
        w, c = time.perf_counter(), time.process_time()
        fn()
        seconds[name] += time.perf_counter() - w
        cpu_seconds[name] += time.process_time() - c

    with torch.no_grad():
        for lo in range(0, a.users, a.user_batch):
            u, hist, tgt = users[lo : lo + a.user_batch], history[lo : lo + a.user_batch], targets[lo : lo + a.user_batch]
            timed("matmul", lambda: bare_matmul(u, items, a.chunk))
            timed("ranks", lambda: metric.update(dot_product_ranks(u, items, tgt, hist, chunk_size=a.chunk)))
            timed("top-10", lambda: chunked_topk(lambda s, e: u @ items[s:e].T, a.items, hist, a.k, a.chunk))
    peak = peak_rss_gb()
    ratios = {k: v / seconds["matmul"] for k, v in seconds.items()}
    cpu_ratios = {k: v / cpu_seconds["matmul"] for k, v in cpu_seconds.items()}
    result = {
        "benchmark": "full-ranking evaluation at scale (synthetic vectors)",
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, "benchmarks/eval_scale.py", *(argv if argv is not None else sys.argv[1:])]),
        "git": git_commit((a.out,)),
        "config": vars(a),
        "seconds": seconds,
        "over_matmul": ratios,
        "cpu_seconds": cpu_seconds,
        "cpu_over_matmul": cpu_ratios,
        "load_average_1_5_15": list(os.getloadavg()),
        "peak_rss_gb": {"inputs": base_rss, "end": peak},
        "targets": TARGETS,
        "targets_met": {"memory": peak <= TARGETS["peak_rss_gb_max"],
                        "ranks_time": ratios["ranks"] <= TARGETS["time_over_matmul_max"],
                        "topk_time": ratios["top-10"] <= TARGETS["time_over_matmul_max"]},
        "ndcg@10_random_vectors": float(metric.compute()["ndcg@10"]),
    }
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{a.users} users x {a.items} items, d={a.dim}, {a.history} history items, user batch {a.user_batch}, "
          f"chunk {a.chunk}, torch threads {torch.get_num_threads()}")
    print(f"{'phase':<10}{'wall s':>10}{'x matmul':>10}{'CPU s':>10}{'x matmul':>10}")
    for name in phases:
        print(f"{name:<10}{seconds[name]:>10.1f}{ratios[name]:>10.2f}{cpu_seconds[name]:>10.1f}{cpu_ratios[name]:>10.2f}")
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"peak RSS {peak:.2f} GB (inputs {base_rss:.2f} GB)")
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
