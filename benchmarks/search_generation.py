"""How long Ax takes to propose the next trial of darec's adapter search, which the search loop waits for.

``darec search`` asks Ax for the next trial in its main process whenever a worker slot frees, and records finished
trials only between proposals, so a slow proposal idles the workers. On one H200, where a 4-epoch MiniLM trial takes
about a minute, five finished trials were recorded 2.4 minutes after the sixth (``search_ml100k_gpu_static_trials.jsonl``):
the main process was proposing trial 6. This benchmark times that proposal without training anything. It uses the
space of ``benchmarks/search_ml100k.py``'s static search (6 MiniLM layers, none/serial/parallel/lora with two sizes each,
the learning rate) and Ax's Sobol then ``BO_MIXED`` strategy (``darec.search.state``). It feeds ``--completed`` Sobol
trials with synthetic results (a fixed function of the assignment plus noise, and the cost objectives), then times the
next ``--proposals`` BO proposals, each told a synthetic result before the next. It covers three objectives (NDCG@10,
seconds per epoch and trainable parameters, as the benchmark's searches run) and NDCG@10 alone, each at every
``--threads`` torch thread count.

    python benchmarks/search_generation.py [--completed 6] [--proposals 2] [--threads 1 2]

Prints a table and writes ``benchmarks/search_generation.json`` (machine, command, commit, load average).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import command, git_commit, machine  # noqa: E402

from darec.search import config_from_dict  # noqa: E402
from darec.search.space import Candidate, SearchSpace  # noqa: E402
from darec.search.state import SearchState  # noqa: E402

LAYERS = 6
HIDDEN = 384


def search_config(out_dir: str, multi: bool, completed: int, proposals: int) -> dict[str, Any]:
    return {"out_dir": out_dir, "trials": completed + proposals, "init_trials": completed, "method": "bo", "seed": 0,
            "multi_objective": multi, "costs": ["seconds_per_epoch", "trainable_params"],
            "space": {"types": ["none", "serial", "parallel", "lora"],
                      "sizes": {"serial": [16, 64], "parallel": [16, 64], "lora": [4, 16]}, "lr": [3e-4, 3e-3]}}


def synthetic_result(cand: Candidate, rng: np.random.Generator) -> dict[str, Any]:
    """A plausible trial result: quality rises with adapted layers and falls away from lr 5e-4; cost follows size."""
    sizes = [0 if a == "none" else int(a.split(":")[1]) for a in cand.assignment]
    adapted = sum(s > 0 for s in sizes)
    lr = float(dict(cand.knobs).get("lr", 5e-4))
    ndcg = 0.08 + 0.005 * adapted - 0.01 * abs(np.log10(lr / 5e-4)) + rng.normal(0, 0.003)
    return {"status": "completed", "ndcg@10": ndcg, "seconds_per_epoch": 2.5 + 0.2 * adapted + rng.normal(0, 0.1),
            "trainable_params": 900_000 + sum(2 * HIDDEN * s for s in sizes)}


def time_proposals(multi: bool, threads: int, completed: int, proposals: int) -> list[float]:
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as out:
        cfg = config_from_dict(search_config(out, multi, completed, proposals))
        space = SearchSpace.from_config(cfg, LAYERS)
        state = SearchState.open(cfg, space, resume=False)
        seconds = []
        for i in range(completed + proposals):
            t0 = time.perf_counter()
            index, params = next(iter(state.client.get_next_trials(max_trials=1).items()))
            if i >= completed:
                seconds.append(time.perf_counter() - t0)
            state.tell(index, synthetic_result(space.candidate(params), rng))
    return seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--completed", type=int, default=6, help="Sobol trials with results before the timed proposals")
    p.add_argument("--proposals", type=int, default=2, help="BO proposals timed, one after another")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to time")
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    a = p.parse_args(argv)
    if a.completed < 1 or a.proposals < 1:
        p.error("--completed and --proposals must be at least 1")
    start_load = [round(x, 2) for x in os.getloadavg()]
    rows = []
    for multi in (True, False):
        for threads in a.threads:
            seconds = time_proposals(multi, threads, a.completed, a.proposals)
            rows.append({"objectives": "ndcg@10, seconds_per_epoch, trainable_params" if multi else "ndcg@10",
                         "threads": threads, "completed_before": a.completed, "proposal_seconds": seconds})
            print(f"{rows[-1]['objectives']:<46} threads {threads}: " + ", ".join(f"{s:.1f} s" for s in seconds), flush=True)
    result = {"benchmark": "Ax proposal time of darec's adapter search (static space, Sobol then BO_MIXED)",
              "machine": machine(), "command": command("benchmarks/search_generation.py", argv),
              "git": git_commit((a.out,)), "load_average_at_start": start_load, "layers": LAYERS, "rows": rows}
    result["machine"]["load_average_1_5_15_end"] = [round(x, 2) for x in os.getloadavg()]
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'objectives':<46}{'threads':>8}  proposal seconds (after {a.completed} results, then +1 each)")
    for r in rows:
        print(f"{r['objectives']:<46}{r['threads']:>8}  " + ", ".join(f"{s:.1f}" for s in r["proposal_seconds"]))
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
