"""The real DARec training step (``DARec.training_step``) on a GPU: tokens/s and MFU.

Builds the ``DARec`` LightningModule itself with a randomly initialised Qwen2-0.5B-shaped backbone
(``backbone.name: random-qwen2-0.5b``; no hub weights can be fetched on the device) in bf16 with sdpa,
on a synthetic dataset shaped like ml-100k (1,682 items), and times forward + backward + AdamW step
of the module's own training step: fresh in-batch item encoding under context masking, the
sequence pass, full-softmax next-item loss, alignment and hard-negative losses.

    python benchmarks/gpu_darec_step.py                # CUDA, bf16
    python benchmarks/gpu_darec_step.py --tiny         # CPU smoke test (tiny-llama)

Writes JSON next to this script (``gpu_darec_step.json``, or ``--out``) and prints a table.
See ``benchmarks/gpu_step.py`` for the component-level variant and the MFU formula.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_step import git_commit, peak_flops  # noqa: E402
from darec.data.synth import SynthConfig, write_synthetic  # noqa: E402
from darec.data.datamodules.sequence import SequenceDataModule
from darec.modules.adapters import count_trainable
from darec.modules.backbone import BackboneConfig
from darec.modules.darec import DARec  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny-llama on the CPU (smoke test)")
    p.add_argument("--batch", type=int, default=None, help="windows per step (default 32; tiny 4)")
    p.add_argument("--max-len", type=int, default=None, help="window length (default 50; tiny 8)")
    p.add_argument("--fresh", type=int, default=None, help="max_fresh_items (default 512; tiny 16)")
    p.add_argument("--adapters", default="serial", help="adapter assignment")
    p.add_argument("--warmup", type=int, default=None, help="default 3 (tiny 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 10; tiny 2)")
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/gpu_darec_step.json)")
    a = p.parse_args(argv)
    tiny = a.tiny
    batch, max_len = a.batch or (4 if tiny else 32), a.max_len or (8 if tiny else 50)
    fresh, warmup, steps = a.fresh or (16 if tiny else 512), a.warmup or (1 if tiny else 3), a.steps or (2 if tiny else 10)
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="gpu_darec_"))
    synth = SynthConfig(num_users=200, num_items=100, min_len=10, max_len=20) if tiny else SynthConfig(
        num_users=943, num_items=1682, num_clusters=12, min_len=20, max_len=120)
    write_synthetic(work / "data", synth)
    dm = SequenceDataModule(str(work / "data"), batch_size=batch, max_len=max_len, num_negatives=0)
    backbone = BackboneConfig(name="tiny-llama", tiny_hidden=64) if tiny else BackboneConfig(
        name="random-qwen2-0.5b", dtype="bfloat16", attn_implementation="sdpa")
    t_build = time.perf_counter()
    model = DARec(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint, backbone=backbone,
                  adapters=a.adapters, max_len=max_len, max_fresh_items=fresh, cache_dir=str(work / "cache"))
    model.to(device)
    d = dm.data
    model.attach_data(d.sentences, d.text_hash, d.fingerprint, d.train_sequences(), d.item_raw_ids)
    model.refresh_cache()
    build_s = time.perf_counter() - t_build
    model.log = lambda *args, **kw: None
    model.train()
    opt = model.configure_optimizers()
    loader = iter(dm.train_dataloader())
    batches = [{k: v.to(device) for k, v in next(loader).items()} for _ in range(warmup + steps)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step(b: dict[str, torch.Tensor]) -> float:
        loss = model.training_step(b, 0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    for b in batches[:warmup]:
        step(b)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses, tokens = [], [], []
    lengths = [len(t) + 1 for t in model.encoder.token_lists]
    for b in batches[warmup:]:
        ids = torch.unique(torch.cat([b["input"], b["target"]], 1))
        ids = ids[ids > 0]
        item_tokens = sum(lengths[i] for i in ids.tolist()[:fresh])
        seq_positions = b["input"].shape[0] * (b["input"].shape[1] + 1)
        tokens.append(item_tokens + seq_positions)
        sync()
        t0 = time.perf_counter()
        losses.append(step(b))
        sync()
        times.append(time.perf_counter() - t0)
    step_s = sum(times) / len(times)
    tok = sum(tokens) / len(tokens)
    n_total = sum(p.numel() for p in model.backbone.model.parameters())
    n_nonembed = n_total - model.backbone.word_embeddings.weight.numel()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = peak_flops(name) if device.type == "cuda" else None
    f6, f4 = 6 * n_nonembed * tok / step_s, 4 * n_nonembed * tok / step_s
    import transformers

    result = {
        "benchmark": "DARec.training_step (module), random Qwen2-0.5B shape" if not tiny else "DARec.training_step, tiny-llama CPU smoke",
        "device": name, "device_type": device.type, "dtype": str(model.backbone.dtype).replace("torch.", ""),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "command": " ".join([sys.executable, "benchmarks/gpu_darec_step.py"] + list(argv if argv is not None else sys.argv[1:])),
        "git_commit": git_commit(),
        "config": {"batch": batch, "max_len": max_len, "max_fresh_items": fresh, "adapters": a.adapters,
                   "warmup": warmup, "steps": steps, "catalogue": dm.num_items},
        "model": {"layers": model.backbone.num_layers, "hidden": model.backbone.hidden_size, "params_total": n_total,
                  "params_non_embedding": n_nonembed, "trainable_params": count_trainable(model)},
        "build_and_cache_s": build_s,
        "tokens_per_step": tok, "step_time_s": step_s, "step_time_min_s": min(times), "tokens_per_s": tok / step_s,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "flops_formula": "k * params_non_embedding * tokens / step_time (k=6, or 4: frozen weights need no weight gradients)",
        "achieved_flops_6N": f6, "achieved_flops_4N": f4, "peak_bf16_dense_flops": peak,
        "mfu_6N": f6 / peak if peak else None, "mfu_4N": f4 / peak if peak else None,
        "losses": losses,
    }
    out = Path(a.out) if a.out else Path(__file__).with_suffix(".json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'device':<22}{name}\n{'tokens/step':<22}{tok:,.0f}\n{'step time (s)':<22}{step_s:.3f}\n"
          f"{'tokens/s':<22}{tok / step_s:,.0f}\n{'MFU (6N / 4N)':<22}{result['mfu_6N']} / {result['mfu_4N']}\n"
          f"{'losses':<22}{[round(x, 3) for x in losses]}\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
