"""bfloat16 autocast against float32 on this CPU, part by part, for DARec's default configuration on ml-100k.

Issue 11 lists bf16 as a lever for a cheaper DARec epoch on CPUs with AMX / AVX512-BF16, to be kept "only where it
is faster". Whether it is depends on the CPU, so this benchmark records what the CPU offers (model name, the flags
that matter, PyTorch's CPU capability and whether oneDNN runs bfloat16 natively) and times, in float32 and under
``backbone.autocast: bfloat16``:

- ``matmul``: one feed-forward-sized product (3200 x 384 @ 384 x 1536), forward shape;
- ``item level``: the frozen item encoder over 256 items, no gradient (the cache refresh);
- ``sequence level``: forward and backward of the backbone over ``--windows`` training windows of 50 positions;
- ``validation forward``: the scoring states of 64 users, no gradient.

Each part runs once to warm up and then ``--repeats`` times; the median is reported, with the bf16 / fp32 ratio.
Run it with nothing else on the machine:

    python benchmarks/bf16_cpu.py [--cf-dir DIR] [--threads 2] [--windows 16] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import command, git_commit, machine  # noqa: E402
from darec_epoch import build, settings  # noqa: E402

def timed(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def parts(autocast: str, a: argparse.Namespace) -> dict[str, float]:
    """Median seconds of each part with the backbone's autocast set to ``autocast``."""
    import lightning as L

    model_kw, data_kw = settings(a.data_dir, a.cf_dir, a.cache_dir)["after"]
    model_kw = dict(model_kw, backbone=dict(model_kw.get("backbone") or {}, autocast=autocast))
    L.seed_everything(0)
    model, dm = build(model_kw, data_kw)
    L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, num_sanity_val_steps=0).fit(model, datamodule=dm)
    model.refresh_cache()
    model.train()
    seq = next(iter(dm.train_dataloader()))["input"][: a.windows]
    ids = torch.arange(1, 257)
    history = next(iter(dm.val_dataloader()))["history"][:64]

    def sequence_level() -> None:
        out = model.sequence_states(seq, model.sem_cache)
        out.float().backward(torch.ones_like(out, dtype=torch.float32))
        model.zero_grad(set_to_none=True)

    def item_level() -> None:
        with torch.no_grad():
            model.encoder.encode(ids)

    def validation_forward() -> None:
        with torch.no_grad():
            model.eval()
            model.prepare_eval_batch({"history": history})
            model.train()

    dtype = torch.bfloat16 if autocast == "bfloat16" else torch.float32
    x, w = torch.randn(3200, 384, dtype=dtype), torch.randn(384, 1536, dtype=dtype)
    return {
        "matmul 3200x384 @ 384x1536": timed(lambda: x @ w, a.repeats),
        "item level, 256 items, no grad": timed(item_level, a.repeats),
        f"sequence level fwd+bwd, {a.windows} windows x 50": timed(sequence_level, a.repeats),
        "validation forward, 64 users": timed(validation_forward, a.repeats),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data/ml-100k")
    p.add_argument("--cf-dir", default=None, help="directory with sasrec.safetensors and lightgcn.safetensors (injection)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--windows", type=int, default=16, help="training windows in the sequence-level pass")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cache-dir", default=str(ROOT / "benchmarks" / "_work" / "darec_epoch" / "cache"))
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(a.threads)
    result: dict[str, Any] = {"benchmark": "bfloat16 autocast against float32 per part, DARec default configuration",
                              "machine": machine(), "command": command("benchmarks/bf16_cpu.py", argv),
                              "git": git_commit((a.out,)), "seconds": {}}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the backbone warns once about emulated bfloat16: the table says it
        for autocast in ("none", "bfloat16"):
            result["seconds"][autocast] = parts(autocast, a)
    fp32, bf16 = result["seconds"]["none"], result["seconds"]["bfloat16"]
    result["bf16_over_fp32"] = {k: bf16[k] / fp32[k] for k in fp32}
    result["keep_bf16_for"] = [k for k, r in result["bf16_over_fp32"].items() if r < 1.0 and not k.startswith("matmul")]
    result["machine"]["load_average_1_5_15_end"] = [round(x, 2) for x in os.getloadavg()]
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    width = max(map(len, fp32)) + 2
    print(f"{'part':<{width}}{'float32 s':>12}{'bf16 s':>12}{'bf16/fp32':>11}")
    for k in fp32:
        print(f"{k:<{width}}{fp32[k]:>12.4f}{bf16[k]:>12.4f}{result['bf16_over_fp32'][k]:>10.1f}x")
    c = result["machine"]["cpu"]
    print(f"CPU {c['model_name']}; capability {c['torch_cpu_capability']}; native bf16 {c['onednn_native_bfloat16']}; "
          f"flags {', '.join(f for f, on in c['flags'].items() if on) or 'none'}")
    print(f"bf16 is kept for: {', '.join(result['keep_bf16_for']) or 'no part'}")
    m = result["machine"]
    print(f"torch threads {m['torch_threads']}; load average start {m['load_average_1_5_15']}, end {m['load_average_1_5_15_end']}")
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
