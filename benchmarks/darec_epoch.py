"""The cost of one DARec epoch on ml-100k (training plus validation): today's default against the previous one.

Both settings run side by side in one process, on the same data, threads and CF exports:

- ``before``: the settings DARec shipped with until this benchmark was written (serial adapters in every layer,
  windows of 50 with stride 25, 128 fresh items per step replacing cached rows, ``[ALIGN]`` vector without the
  backbone's framing tokens, the cache rebuilt once per epoch, float32, no weight average, no label smoothing, the
  window's earlier items left in the softmax). The frozen-backbone dropout defect is fixed in both: it is not a setting.
- ``after``: ``configs/darec_ml100k.yaml`` as shipped (``backbone.autocast: auto``: bfloat16 on a CPU or GPU that runs
  it natively, float32 elsewhere; the JSON records what each run used);
- ``after_float32``: the same in float32 (``backbone.autocast: none``), to show what bfloat16 adds on this machine;
- ``after_autocast_attention``: the same with attention in bfloat16 too (``backbone.cpu_attention: autocast``, the
  path before attention was kept in float32 on a CPU), to show what that choice adds;
- ``after_item_level``: the same with the paper's item-level adaptation (adapters at the item level in every layer,
  64 fresh items per step with straight-through gradients, the cache rebuilt every 10 steps, the masked-context loss):
  what that costs on top, and how far cached rows drift between refreshes;
- ``after_adapters`` (with ``--adapters A,B,...``): the shipped settings with other per-layer adapters, for example the
  adapter search's winner, whose ``skip`` layers leave the forward pass.

For each it reports the measured epoch (the second of a two-epoch ``Trainer.fit``, validation included), the time per part
(item level with gradient, sequence level, cache refreshes, validation), how far cached item rows drift from
fresh encodings within an epoch, and exactness checks (frozen-prefix caching, fresh == cached in train mode,
bfloat16 against float32). It also reports how much of an item's text its semantic vector carries: the share
of each item's 10 nearest neighbours that share its year or a genre.

    python benchmarks/darec_epoch.py [--data-dir data/ml-100k] [--cf-dir DIR] [--threads 2] [--adapters A,B,...]
                                     [--skip PART ...] [--out FILE]

``--cf-dir`` holds ``sasrec.safetensors`` and ``lightgcn.safetensors`` (``darec export-embeddings``) for the
injection both settings use; without it injection is off. Prints a table and writes ``benchmarks/darec_epoch.json``.
Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import comma_list, command, git_commit, machine  # noqa: E402

CONFIG = ROOT / "configs" / "darec_ml100k.yaml"
BEFORE_MODEL = dict(
    adapters="serial", max_fresh_items=128, fresh_gradient="replace", refresh_every=0, item_vector="align",
    item_framing=False, item_adapter_layers=None, frozen_prefix=False, calibrate_inputs=False, dropout=0.0,
    text_path=0, lr_adapters=None, warmup_steps=0, ema=0.0,
)
BEFORE_LOSSES = dict(label_smoothing=0.0, mask_seen=False)
BEFORE_BACKBONE = dict(autocast="none")
BEFORE_DATA = dict(max_len=50, stride=25, batch_size=64)


def settings(data_dir: str, cf_dir: str | None, cache_dir: str,
             adapters: list[str] | None = None) -> dict[str, tuple[dict, dict]]:
    """``{name: (model kwargs, data kwargs)}`` for ``before``, ``after`` and its variants (``after_adapters`` with
    ``adapters`` in place of the shipped per-layer adapters, when given)."""
    cfg = yaml.safe_load(CONFIG.read_text())
    model = dict(cfg["model"]["init_args"])
    data = dict(cfg["data"]["init_args"], data_dir=data_dir)
    model["cache_dir"] = cache_dir
    inj = dict(model.get("injection") or {})
    if cf_dir:
        inj.update(mode="input", sasrec=str(Path(cf_dir) / "sasrec.safetensors"),
                   lightgcn=str(Path(cf_dir) / "lightgcn.safetensors"))
    else:
        inj.update(mode="none", sasrec=None, lightgcn=None, residual=False)
    model["injection"] = inj
    before = dict(model, **BEFORE_MODEL, backbone=dict(model.get("backbone") or {}, **BEFORE_BACKBONE),
                  losses=dict(model.get("losses") or {}, **BEFORE_LOSSES))
    before["max_len"] = BEFORE_DATA["max_len"]
    item_level = dict(model, item_adapter_layers=None, max_fresh_items=64, refresh_every=10,
                      losses=dict(model.get("losses") or {}, masked_context=True))
    float32 = dict(model, backbone=dict(model.get("backbone") or {}, autocast="none"))
    bf16_attention = dict(model, backbone=dict(model.get("backbone") or {}, cpu_attention="autocast"))
    out = {"before": (before, dict(data, **BEFORE_DATA)), "after": (model, data), "after_float32": (float32, data),
           "after_autocast_attention": (bf16_attention, data), "after_item_level": (item_level, data)}
    if adapters is not None:
        out["after_adapters"] = (dict(model, adapters=adapters), data)
    return out


def build(model_kw: dict, data_kw: dict):
    from darec.data.datamodules.sequence import SequenceDataModule
    from darec.modules.darec import DARec

    dm = SequenceDataModule(**data_kw)
    model = DARec(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint, **model_kw)
    return model, dm


class _Clock:
    """Wall seconds and calls per named part; parts are timed by wrapping the model's own methods."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, obj: Any, attr: str, name: str, when: Callable[[], bool] = lambda: True) -> None:
        fn = getattr(obj, attr)

        def timed(*a: Any, **k: Any) -> Any:
            if not when():
                return fn(*a, **k)
            t = time.perf_counter()
            out = fn(*a, **k)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t
            self.calls[name] = self.calls.get(name, 0) + 1
            return out

        setattr(obj, attr, timed)


def measured_epoch(model, dm, work: Path) -> dict[str, Any]:
    """Two real epochs (``Trainer.fit``, validation included); the second, in steady state, is the one reported
    with its parts timed. The first also pays the fit's one-off set-up (loading data, the first item encoding)."""
    import lightning as L

    clock = _Clock()
    clock.wrap(model, "refresh_cache", "refresh (no grad)")
    clock.wrap(model.encoder, "encode", "item level forward (grad)", when=torch.is_grad_enabled)
    clock.wrap(model, "sequence_states", "sequence level forward (grad)", when=torch.is_grad_enabled)

    epochs: list[float] = []

    class Phases(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            clock.seconds.clear()
            clock.calls.clear()
            self.t_train = time.perf_counter()

        def on_validation_start(self, trainer, pl_module):
            self.t_val = time.perf_counter()

        def on_validation_end(self, trainer, pl_module):
            clock.seconds["validation (with its refresh)"] = time.perf_counter() - self.t_val
            epochs.append(time.perf_counter() - self.t_train)

        def on_train_epoch_end(self, trainer, pl_module):
            clock.seconds["training (with its refreshes)"] = time.perf_counter() - self.t_train

    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Phases()],
                        default_root_dir=str(work), gradient_clip_val=1.0)
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    total = time.perf_counter() - t0
    return {"epoch_s": epochs[1], "first_epoch_with_setup_s": total - epochs[1], "steps": int(trainer.global_step) // 2,
            "val_ndcg@10": float(trainer.callback_metrics["val/ndcg@10"]),
            "parts_s": {k: round(v, 2) for k, v in clock.seconds.items()}, "calls": dict(clock.calls)}


def forward_backward_parts(model, dm, batches: int = 4) -> dict[str, float]:
    """Seconds per training step of each part, forward and backward, measured in isolation on real batches."""
    model.train()
    loader = iter(dm.train_dataloader())
    item_s = seq_s = 0.0
    for _ in range(batches):
        batch = next(loader)
        seq, tgt = batch["input"], batch["target"]
        ids = torch.unique(torch.cat([seq, tgt], 1))
        ids = ids[ids > 0][: model.max_fresh_items]
        if len(ids) and not model.encoder.frozen:  # else the item level does no work during training
            t = time.perf_counter()
            fresh = model.encoder.encode(ids)
            fresh.backward(torch.randn_like(fresh))
            item_s += time.perf_counter() - t
        t = time.perf_counter()
        out = model.sequence_states(seq, model.sem_cache)
        out.backward(torch.randn_like(out))
        seq_s += time.perf_counter() - t
    model.zero_grad(set_to_none=True)
    return {"item level fwd+bwd per step": item_s / batches, "sequence level fwd+bwd per step": seq_s / batches}


def drift(model, dm, steps: int = 15, sample: int = 256) -> dict[str, float]:
    """After a cache refresh, train ``steps`` steps, then compare fresh encodings with the cached rows.

    ``cosine``: mean cosine(fresh, cached); ``relative_standardised``: mean ||std(fresh) - std(cached)|| /
    ||std(cached)|| after the model's standardisation; ``forward_gap``: the largest difference between an item row
    that the training step used and the cached row (0 with straight-through: the forward pass only sees the cache).
    """
    model.train()
    model.refresh_cache()
    opt = model.configure_optimizers()
    model.log = lambda *a, **k: None  # type: ignore[method-assign]
    loader = iter(dm.train_dataloader())
    for _ in range(steps):
        batch = next(loader)
        loss = model.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.refresh_every, keep = 0, model.refresh_every
    ids = torch.randperm(model.num_items, generator=torch.Generator().manual_seed(0))[:sample] + 1
    with torch.no_grad():
        fresh = model.encoder.encode(ids).float()
        cached = model.sem_cache[ids].float()
        batch = next(loader)
        table, fresh_ids, _ = model.fresh_semantics(torch.cat([batch["input"], batch["target"]], 1))
    model.refresh_every = keep
    age = model.steps_since_refresh
    cos = torch.nn.functional.cosine_similarity(fresh, cached, dim=-1).mean()
    sf, sc = model.standardise(fresh), model.standardise(cached)
    rel = ((sf - sc).norm(dim=-1) / sc.norm(dim=-1).clamp(min=1e-9)).mean()
    diff = (table[fresh_ids] - model.sem_cache[fresh_ids].float()).abs()
    gap = diff.max() if diff.numel() else torch.zeros(())  # no fresh rows: the forward pass reads the cache only
    return {"steps": steps, "cache_age_steps": age, "cosine": float(cos), "relative_standardised": float(rel), "forward_gap": float(gap)}


def exactness(model) -> dict[str, float]:
    """Frozen-prefix encodings against full passes; a fresh train-mode encoding against the cache."""
    out: dict[str, float] = {}
    enc = model.encoder
    model.train()
    model.refresh_cache()
    ids = torch.arange(1, model.num_items + 1)
    with torch.no_grad():
        out["fresh_vs_cached_train_mode_max_abs"] = float((enc.encode(ids[:256]) - model.sem_cache[ids[:256]]).abs().max())
        if enc.prefix is not None:
            cached = enc.encode_all()
            saved, enc.prefix = enc.prefix, None
            full = enc.encode_all()
            enc.prefix = saved
            out["frozen_prefix_vs_full_max_abs"] = float((cached - full).abs().max())
        bb = model.backbone
        if bb.autocast_dtype(model.sem_cache.device) is not None:
            low = enc.encode_all()
            with bb.full_precision():
                high = enc.encode_all()
            out["bf16_vs_fp32_item_vectors_relative"] = float(((low - high).norm(dim=-1) / high.norm(dim=-1).clamp(min=1e-9))[1:].mean())
    return out


def neighbours(data_dir: str, cache_dir: str, k: int = 10) -> dict[str, dict[str, float]]:
    """Share of each item's ``k`` nearest neighbours (cosine, frozen backbone) with its year / a shared genre."""
    from darec.data.dataset import PreparedData

    d = PreparedData(data_dir)
    years, genres = [], []
    for s in d.sentences[1 : d.num_items + 1]:
        y = re.search(r"year: (\d+)", s)
        g = re.search(r"genres: ([^;]*)", s)
        years.append(y.group(1) if y else None)
        genres.append({x.strip() for x in g.group(1).split(",")} if g else set())

    def shares(vecs: torch.Tensor) -> dict[str, float]:
        v = torch.nn.functional.normalize(vecs.float(), dim=-1)
        sim = v @ v.T
        sim.fill_diagonal_(-2)
        nn_idx = sim.topk(k, dim=1).indices.numpy()
        same_year = np.mean([[years[i] is not None and years[i] == years[j] for j in row] for i, row in enumerate(nn_idx)])
        same_genre = np.mean([[bool(genres[i] & genres[j]) for j in row] for i, row in enumerate(nn_idx)])
        return {"same_year": float(same_year), "shared_genre": float(same_genre)}

    out = {}
    for name, kw in (("align, no framing (before)", dict(item_vector="align", item_framing=False)),
                     ("mean, framing (after)", dict(item_vector="mean", item_framing=True)),
                     ("align, framing", dict(item_vector="align", item_framing=True))):
        model, _ = build(dict(adapters="serial", cache_dir=cache_dir, frozen_prefix=False, calibrate_inputs=False,
                              losses={"hard_negative": False}, **kw), dict(data_dir=data_dir))
        model.attach_data(d.sentences, d.text_hash, d.fingerprint, [])
        out[name] = shares(model.encoder.encode_all(d.num_items)[1:])
    out["random"] = shares(torch.randn(d.num_items, 64, generator=torch.Generator().manual_seed(0)))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data/ml-100k")
    p.add_argument("--cf-dir", default=None, help="directory with sasrec.safetensors and lightgcn.safetensors")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip", nargs="*", default=[], choices=["before", "after", "after_float32", "after_autocast_attention", "after_item_level",
                                                                       "after_adapters", "neighbours"], help="parts to skip")
    p.add_argument("--adapters", type=comma_list, default=None,
                   help="also time after_adapters: the shipped settings with these per-layer adapters (comma-separated, "
                        "e.g. the search's winner skip,skip,serial:64,skip,serial:16,none)")
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / "_work" / "darec_epoch"))
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(a.threads)
    import lightning as L

    work = Path(a.work_dir)
    cache = str(work / "cache")
    result: dict[str, Any] = {"benchmark": "DARec epoch cost on ml-100k, before and after, side by side",
                              "machine": machine(), "command": command("benchmarks/darec_epoch.py", argv),
                              "git": git_commit((a.out,)), "settings": {}, "runs": {}}
    for name, (model_kw, data_kw) in settings(a.data_dir, a.cf_dir, cache, a.adapters).items():
        if name in a.skip:
            continue
        result["settings"][name] = {"model": model_kw, "data": data_kw}
        L.seed_everything(0)
        model, dm = build(model_kw, data_kw)
        run = measured_epoch(model, dm, work / name)
        run["isolated_parts_s"] = forward_backward_parts(model, dm)
        run["exactness"] = exactness(model)
        low = model.backbone.autocast_dtype(model.sem_cache.device)
        run["autocast"] = "none" if low is None else str(low).removeprefix("torch.")
        L.seed_everything(0)
        model, dm = build(model_kw, data_kw)
        dm.setup("fit")
        model.attach_data(dm.data.sentences, dm.data.text_hash, dm.data.fingerprint, dm.data.train_sequences())
        run["drift_after_15_steps"] = drift(model, dm)
        result["runs"][name] = run
        print(f"{name}: steady-state epoch {run['epoch_s']:.1f} s ({run['steps']} steps), val NDCG@10 {run['val_ndcg@10']:.4f}", flush=True)
    if "neighbours" not in a.skip:
        result["neighbours_top10"] = neighbours(a.data_dir, cache)
    runs = result["runs"]
    if {"before", "after"} <= runs.keys():
        result["speedup"] = runs["before"]["epoch_s"] / runs["after"]["epoch_s"]
        if "after_float32" in runs:
            result["speedup_float32"] = runs["before"]["epoch_s"] / runs["after_float32"]["epoch_s"]
        if "after_autocast_attention" in runs:
            result["speedup_autocast_attention"] = runs["before"]["epoch_s"] / runs["after_autocast_attention"]["epoch_s"]
        if "after_adapters" in runs:
            result["speedup_adapters"] = runs["before"]["epoch_s"] / runs["after_adapters"]["epoch_s"]
        result["target"] = "after epoch <= 1/6 of before, side by side"
        result["target_met"] = result["speedup"] >= 6.0
    result["machine"]["load_average_1_5_15_end"] = [round(x, 2) for x in os.getloadavg()]
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    _print(result)
    print(f"wrote {a.out}")
    return result


def _print(result: dict[str, Any]) -> None:
    runs = result["runs"]
    names = list(runs)
    rows: list[tuple[str, list[str]]] = [
        ("epoch (training + validation), s", [f"{runs[n]['epoch_s']:.1f}" for n in names]),
        ("first epoch with the fit's set-up, s", [f"{runs[n]['first_epoch_with_setup_s']:.1f}" for n in names]),
        ("training steps per epoch", [str(runs[n]["steps"]) for n in names]),
    ]
    parts = sorted({k for n in names for k in runs[n]["parts_s"]})
    rows += [(f"  {k}, s", [f"{runs[n]['parts_s'].get(k, 0.0):.1f}" for n in names]) for k in parts]
    iso = sorted({k for n in names for k in runs[n]["isolated_parts_s"]})
    rows += [(f"  {k}, s", [f"{runs[n]['isolated_parts_s'][k]:.3f}" for n in names]) for k in iso]
    rows += [(f"drift after 15 steps: {k}", [f"{runs[n]['drift_after_15_steps'][k]:.3f}" for n in names])
             for k in ("cosine", "relative_standardised", "forward_gap")]
    ex = sorted({k for n in names for k in runs[n]["exactness"]})
    rows += [(f"exact: {k}", [f"{runs[n]['exactness'].get(k, float('nan')):.2e}" for n in names]) for k in ex]
    rows.append(("validation NDCG@10 after 2 epochs", [f"{runs[n]['val_ndcg@10']:.4f}" for n in names]))
    rows.append(("backbone passes in", [runs[n].get("autocast", "?") for n in names]))
    width = max(len(r[0]) for r in rows) + 2
    col = max(12, *(len(n) + 2 for n in names))
    print(f"{'':<{width}}" + "".join(f"{n:>{col}}" for n in names))
    for label, vals in rows:
        print(f"{label:<{width}}" + "".join(f"{v:>{col}}" for v in vals))
    if "speedup" in result:
        print(f"speed-up: {result['speedup']:.2f}x (target >= 6x)")
    if "speedup_float32" in result:
        print(f"speed-up with the backbone in float32: {result['speedup_float32']:.2f}x")
    if "speedup_autocast_attention" in result:
        print(f"speed-up with attention in bfloat16 too (cpu_attention: autocast): {result['speedup_autocast_attention']:.2f}x")
    if "speedup_adapters" in result:
        print(f"speed-up with the adapters {','.join(result['settings']['after_adapters']['model']['adapters'])}: "
              f"{result['speedup_adapters']:.2f}x")
    for name, s in result.get("neighbours_top10", {}).items():
        print(f"10-NN {name:<28} same year {s['same_year']:.3f}  shared genre {s['shared_genre']:.3f}")
    m = result["machine"]
    print(f"torch threads {m['torch_threads']}; load average start {m['load_average_1_5_15']}, end {m['load_average_1_5_15_end']}")


if __name__ == "__main__":
    main()
