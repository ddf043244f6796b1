"""Time one DARec-shaped training step on a Qwen2-0.5B-shaped random backbone (or ``--tiny``).

The step, built from darec's own Backbone / adapters / packing / masking code:

(a) packed item encoding: ``--items`` random item sentences (lengths ~20 tokens plus ``[ALIGN]``) packed into rows of
    ``--pack-len`` under the block-diagonal context mask; the ``[ALIGN]`` states are the item vectors ``s_i``;
(b) sequence level: ``--batch`` histories of ``--max-len`` items (``W_s s_i``) plus ``[SEQ]``, item-causal mask;
(c) scoring: full-softmax cross-entropy over a ``--catalogue``-item table ``W_p [s_j]`` (fresh rows for the items
    encoded in this step, a no-grad cache elsewhere) against ``W_o h``; backward; AdamW on the trainable parameters.

Throughput counts item tokens (real tokens, ``[ALIGN]`` included) plus sequence positions. MFU uses the usual
``achieved FLOPs = 6 * N * tokens`` with ``N`` the backbone's non-embedding parameters (attention score FLOPs and the
small heads are ignored). The backbone is frozen, so no weight gradients are computed for it and
``4 * N * tokens`` (forward + input-gradient backward) is also defensible; both are reported.

Writes ``benchmarks/gpu_step.json`` (or ``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from darec.modules.text import pack_items
from darec.modules.adapters import apply_adapters, count_trainable, mark_only_adapters_trainable
from darec.modules.backbone import load_backbone_from_config
from darec.modules.masking import item_causal_mask  # noqa: E402

PEAK_BF16_DENSE = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12}


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak of a known accelerator (by name substring), else ``None``."""
    for key, value in PEAK_BF16_DENSE.items():
        if key in device_name:
            return value
    return None


def hf_config(tiny: bool) -> Any:
    """Qwen2-0.5B shape, or a tiny Qwen2 for CPU smoke runs."""
    from transformers import Qwen2Config

    if tiny:
        return Qwen2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, vocab_size=1000, max_position_embeddings=512, use_cache=False,
        )
    return Qwen2Config(
        hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True,
        use_cache=False,
    )


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the repository, or ``None``."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny Qwen2 config and small batch (CPU smoke test)")
    p.add_argument("--device", default=None, help="default: cuda if available else cpu")
    p.add_argument("--items", type=int, default=None, help="items encoded fresh per step (default 512; tiny 16)")
    p.add_argument("--item-len", type=int, default=20, help="mean item sentence length in tokens")
    p.add_argument("--pack-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=None, help="histories per step (default 32; tiny 4)")
    p.add_argument("--max-len", type=int, default=None, help="items per history (default 50; tiny 8)")
    p.add_argument("--catalogue", type=int, default=1682)
    p.add_argument("--adapter", default="serial", help="adapter assignment for every layer, e.g. serial:64")
    p.add_argument("--warmup", type=int, default=None, help="default 3 (tiny 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 10; tiny 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/gpu_step.json)")
    args = p.parse_args(argv)
    defaults = {"items": (512, 16), "batch": (32, 4), "max_len": (50, 8), "warmup": (3, 1), "steps": (10, 2)}
    for key, (full, tiny) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, tiny if args.tiny else full)
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns (and writes) the result dictionary."""
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    cfg = hf_config(args.tiny)
    backbone = load_backbone_from_config(
        cfg, attn_implementation="sdpa", dtype=dtype, name="qwen2-0.5b-shape-random", seed=args.seed, device=device
    )
    apply_adapters(backbone, args.adapter)
    mark_only_adapters_trainable(backbone)
    hidden = backbone.hidden_size
    heads = torch.nn.ModuleDict(
        {"w_s": torch.nn.Linear(hidden, hidden), "w_o": torch.nn.Linear(hidden, hidden),
         "w_p": torch.nn.Linear(hidden, hidden)}
    ).to(device)
    cache = torch.randn(args.catalogue, hidden, device=device)

    lengths = [max(1, min(args.pack_len - 1, round(rng.gauss(args.item_len, 4)))) for _ in range(args.items)]
    token_lists = [[rng.randrange(backbone.vocab_size) for _ in range(n)] for n in lengths]
    item_ids = rng.sample(range(args.catalogue), min(args.items, args.catalogue))
    token_lists = token_lists[: len(item_ids)]
    packed = pack_items(token_lists, item_ids, backbone.align_id, args.pack_len).to(device)
    history = torch.randint(0, len(item_ids), (args.batch, args.max_len), device=device)
    targets = torch.randint(1, args.catalogue, (args.batch, args.max_len + 1), device=device)
    seq_len = args.max_len + 1
    seq_mask = item_causal_mask(torch.ones(args.batch, seq_len, dtype=torch.bool, device=device), backbone.dtype)
    seq_pos = torch.arange(seq_len, device=device).expand(args.batch, -1)
    seq_token = torch.full((args.batch, 1), backbone.seq_id, device=device)
    item_index = packed.item_ids.to(device)

    params = [p for p in backbone.parameters() if p.requires_grad] + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)

    def step() -> float:
        states = backbone.encode_segments(packed.input_ids, packed.segment_ids, packed.position_ids)
        s = states[packed.align_index[:, 0], packed.align_index[:, 1]].float()
        x = torch.cat([heads["w_s"](s[history]), backbone.embed(seq_token).float()], dim=1)
        h = backbone(x, seq_mask, seq_pos).float()
        table = heads["w_p"](cache.index_put((item_index,), s))
        logits = heads["w_o"](h) @ table.T
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, args.catalogue), targets.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    for _ in range(args.steps):
        _sync(device)
        t0 = time.perf_counter()
        losses.append(step())
        _sync(device)
        times.append(time.perf_counter() - t0)

    item_tokens = packed.num_tokens
    seq_positions = args.batch * seq_len
    tokens = item_tokens + seq_positions
    step_s = sum(times) / len(times)
    n_total = sum(p.numel() for p in backbone.model.parameters())
    n_embed = backbone.word_embeddings.weight.numel()
    n_nonembed = n_total - n_embed
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = peak_flops(device_name) if device.type == "cuda" else None
    flops6 = 6 * n_nonembed * tokens / step_s
    flops4 = 4 * n_nonembed * tokens / step_s
    import transformers

    result = {
        "device": device_name,
        "device_type": device.type,
        "dtype": str(dtype).replace("torch.", ""),
        "attn_implementation": backbone.model.config._attn_implementation,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "command": " ".join([sys.executable, str(Path(__file__).relative_to(ROOT))] + list(argv if argv is not None else sys.argv[1:])),
        "git_commit": git_commit(),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "model": {"hidden": hidden, "layers": backbone.num_layers, "params_total": n_total,
                  "params_non_embedding": n_nonembed, "trainable_params": count_trainable(backbone) +
                  sum(p.numel() for p in heads.parameters())},
        "item_rows": packed.num_rows,
        "items_per_row": packed.num_items / packed.num_rows,
        "item_tokens": item_tokens,
        "item_slots": packed.num_rows * args.pack_len,
        "sequence_positions": seq_positions,
        "tokens_per_step": tokens,
        "step_time_s": step_s,
        "step_time_min_s": min(times),
        "tokens_per_s": tokens / step_s,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "flops_formula": "achieved = k * params_non_embedding * tokens_per_step / step_time_s (k=6, or k=4 since "
                         "the frozen backbone needs no weight gradients); attention scores and heads ignored",
        "achieved_flops_6N": flops6,
        "achieved_flops_4N": flops4,
        "peak_bf16_dense_flops": peak,
        "mfu_6N": flops6 / peak if peak else None,
        "mfu_4N": flops4 / peak if peak else None,
        "losses": losses,
    }
    out = Path(args.out) if args.out else Path(__file__).with_suffix(".json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    _print_table(result, out)
    return result


def _print_table(r: dict[str, Any], out: Path) -> None:
    def fmt(v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    rows = [
        ("device", r["device"]), ("dtype / attention", f"{r['dtype']} / {r['attn_implementation']}"),
        ("items / rows / items per row", f"{r['config']['items']} / {r['item_rows']} / {r['items_per_row']:.2f}"),
        ("tokens per step (items + seq)", f"{r['tokens_per_step']} ({r['item_tokens']} + {r['sequence_positions']})"),
        ("step time (s, mean / min)", f"{fmt(r['step_time_s'])} / {fmt(r['step_time_min_s'])}"),
        ("tokens/s", fmt(r["tokens_per_s"])),
        ("peak memory (GiB)", fmt(r["peak_memory_bytes"] / 2**30 if r["peak_memory_bytes"] else None)),
        ("achieved TFLOP/s (6N / 4N)", f"{r['achieved_flops_6N'] / 1e12:.4g} / {r['achieved_flops_4N'] / 1e12:.4g}"),
        ("MFU (6N / 4N)", f"{fmt(r['mfu_6N'])} / {fmt(r['mfu_4N'])}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    print(f"written to {out}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
