"""Item-encoding throughput of MiniLM on the ml-100k catalogue: packed rows against padded batches.

Three layouts of the same 1,682 sentences (each followed by [ALIGN]), all giving the same [ALIGN]
states (checked):

- packed: items packed densely into rows of 128 tokens under context masking (what DARec does);
- padded: one item per row, batches of 64 in catalogue order, padded to the batch's longest (baseline);
- sorted: one item per row, batches of 64 after sorting by length (the usual padding trick).

Also times one DARec training step and one full catalogue encoding. Prints a table and writes
``benchmarks/packing.json`` with the machine, the command and the commit.

    python benchmarks/packing.py [--data-dir data/ml-100k] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from darec.data.dataset import PreparedData
from darec.modules.text import pack_items, PackedBatch, pad_items, tokenize_sentences
from darec.modules.backbone import BackboneConfig, load_backbone


@torch.no_grad()
def encode(backbone, batches: list[PackedBatch]) -> tuple[torch.Tensor, float, int]:
    """ALIGN states in item order, seconds, real tokens."""
    t0 = time.perf_counter()
    outs, ids, tokens = [], [], 0
    for b in batches:
        states = backbone.encode_segments(b.input_ids, b.segment_ids, b.position_ids)
        outs.append(states[b.align_index[:, 0], b.align_index[:, 1]])
        ids.append(b.item_ids)
        tokens += b.num_tokens
    dt = time.perf_counter() - t0
    order = torch.argsort(torch.cat(ids))
    return torch.cat(outs)[order], dt, tokens


def _rows(packed: PackedBatch, lo: int, hi: int) -> PackedBatch:
    """Rows ``lo..hi-1`` of a packed layout, with the items whose [ALIGN] lies in them."""
    inside = (packed.align_index[:, 0] >= lo) & (packed.align_index[:, 0] < hi)
    align = packed.align_index[inside].clone()
    align[:, 0] -= lo
    return PackedBatch(packed.input_ids[lo:hi], packed.segment_ids[lo:hi], packed.position_ids[lo:hi], align,
                       packed.item_ids[inside])


def layouts(tokens: list[list[int]], align: int, pack_len: int, batch: int) -> dict[str, list[PackedBatch]]:
    ids = list(range(1, len(tokens) + 1))
    packed = pack_items(tokens, ids, align, pack_len)
    packed_batches = [_rows(packed, i, i + 64) for i in range(0, packed.num_rows, 64)]
    padded = [pad_items(tokens[i : i + batch], ids[i : i + batch], align) for i in range(0, len(ids), batch)]
    by_len = sorted(ids, key=lambda i: len(tokens[i - 1]))
    sorted_b = [pad_items([tokens[i - 1] for i in by_len[k : k + batch]], by_len[k : k + batch], align)
                for k in range(0, len(ids), batch)]
    return {"packed": packed_batches, "padded": padded, "sorted": sorted_b}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data/ml-100k")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per layout (the median is reported)")
    p.add_argument("--batch", type=int, default=64, help="items per padded batch")
    p.add_argument("--pack-len", type=int, default=128)
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data = PreparedData(a.data_dir)
    backbone = load_backbone(BackboneConfig(name="minilm"))
    backbone.eval()
    tokens = tokenize_sentences(data.sentences[1 : data.num_items + 1], backbone.tokenizer, 48)
    lays = layouts(tokens, backbone.align_id, a.pack_len, a.batch)
    rows = {}
    ref = None
    for name, batches in lays.items():
        encode(backbone, batches[:2])  # warm-up
        times = []
        for _ in range(a.repeats):
            out, dt, n_tok = encode(backbone, batches)
            times.append(dt)
        times.sort()
        dt = times[len(times) // 2]
        ref = out if ref is None else ref
        slots = sum(b.input_ids.numel() for b in batches)
        rows[name] = {"seconds": dt, "tokens": n_tok, "slots": slots, "tokens_per_s": n_tok / dt,
                      "max_abs_diff_vs_packed": float((out - ref).abs().max())}
    base = rows["padded"]["tokens_per_s"]
    for r in rows.values():
        r["speedup_vs_padded"] = r["tokens_per_s"] / base
    step = darec_step_time(a.data_dir)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip() or None
    result = {
        "benchmark": "MiniLM item encoding on ml-100k sentences (1,682 items), fp32 CPU",
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "command": " ".join([sys.executable, "benchmarks/packing.py"] + list(argv if argv is not None else sys.argv[1:])),
        "commit": commit, "layouts": rows, "catalogue_encoding_s": rows["packed"]["seconds"], **step,
    }
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'layout':<8}{'s':>8}{'tokens':>9}{'slots':>9}{'tok/s':>10}{'vs padded':>11}{'max|diff|':>11}")
    for name, r in rows.items():
        print(f"{name:<8}{r['seconds']:>8.2f}{r['tokens']:>9}{r['slots']:>9}{r['tokens_per_s']:>10.0f}"
              f"{r['speedup_vs_padded']:>10.2f}x{r['max_abs_diff_vs_packed']:>11.1e}")
    print(f"DARec train step (batch 64 windows, 128 fresh items): {step['train_step_s']:.2f} s; wrote {a.out}")
    return result


def darec_step_time(data_dir: str, steps: int = 3) -> dict:
    """Median seconds of one DARec training step (forward, backward, AdamW) with MiniLM on ml-100k."""
    from darec.data.datamodules.sequence import SequenceDataModule
    from darec.modules.darec import DARec, LossConfig

    dm = SequenceDataModule(data_dir, batch_size=64, max_len=50, num_negatives=0)
    m = DARec(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint,
              backbone=BackboneConfig(name="minilm"), max_fresh_items=128, losses=LossConfig(hard_negative=False),
              cache_dir=str(ROOT / ".darec_cache"))
    d = dm.data
    m.attach_data(d.sentences, d.text_hash, d.fingerprint, [], d.item_raw_ids)
    t0 = time.perf_counter()
    m.refresh_cache()
    refresh = time.perf_counter() - t0
    m.log = lambda *args, **kw: None
    m.train()
    opt = m.configure_optimizers()
    it = iter(dm.train_dataloader())
    times = []
    for _ in range(steps):
        b = next(it)
        t0 = time.perf_counter()
        m.training_step(b, 0).backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"train_step_s": times[len(times) // 2], "cache_refresh_s": refresh}


if __name__ == "__main__":
    main()
