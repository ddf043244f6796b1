"""Training runs shared by the ml-100k quality benchmarks: one model, one seed, kept as full score matrices.

A run trains the model of a shipped config (``configs/<kind>_ml100k.yaml``, with overrides) with early stopping
on validation NDCG@10, reloads the best checkpoint, and stores the score of every (user, item) pair on the
validation and the test split. Scores rather than metrics, so that benchmarks can combine models (seed
ensembles, fusions) and pair them user by user. A run is stored under ``WORK/<name>/`` and is never trained twice:
``meta.json`` marks it done. SASRec and LightGCN runs also export their embeddings there (``cf/``), which the
DARec runs of the same seed inject.

Several runs execute in parallel as subprocesses (``python benchmarks/runs.py SPEC WORK DATA [ACCELERATOR]``), one
torch thread each unless ``threads`` says otherwise. ``accelerator="gpu"`` trains and scores every run on the first
CUDA device (runs in parallel share it); the default is the CPU.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import inspect
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import git_commit  # noqa: E402

CONFIGS = {"sasrec": "sasrec_ml100k.yaml", "lightgcn": "lightgcn_ml100k.yaml", "darec": "darec_ml100k.yaml"}
ACCELERATORS = ("cpu", "gpu")
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): the signal a child gets when its parent dies
# fit-time cap of a run, in minutes (a spec's trainer["max_minutes"] overrides it). SASRec's is longer: with mask_seen it
# improves for longer, and on a 2-core AMD EPYC one seed was still improving at 173 epochs, the 45th minute
# (benchmarks/sasrec_mask_seen.json); DARec's 30 is the budget.
FIT_MINUTES = {"sasrec": 45, "lightgcn": 30, "darec": 30}


def accelerator_device(accelerator: str) -> torch.device:
    """The torch device of a Lightning ``accelerator`` of :data:`ACCELERATORS` (``"gpu"``: the first CUDA device)."""
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator must be one of {ACCELERATORS}, got {accelerator!r}")
    return torch.device("cuda" if accelerator == "gpu" else "cpu")


@dataclass
class RunSpec:
    """One training run: which model (``kind``), seed and overrides of its shipped config."""

    name: str
    kind: str
    seed: int
    model: dict[str, Any] = field(default_factory=dict)  # overrides of model.init_args (nested dicts merge)
    data: dict[str, Any] = field(default_factory=dict)  # overrides of data.init_args
    trainer: dict[str, Any] = field(default_factory=dict)  # max_epochs, patience, max_minutes
    cf_from: str | None = None  # DARec: the SASRec run whose exports (and that seed's LightGCN run) it injects
    lightgcn_from: str | None = None
    shuffle_text: bool = False  # DARec: item sentences permuted across items (text then carries no meaning)
    test_every_epoch: bool = False  # diagnostic: also score test after every validation pass (selection never reads it)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def shipped_config(kind: str) -> dict[str, Any]:
    """The shipped ml-100k config of ``kind`` (``configs/<kind>_ml100k.yaml``), parsed."""
    return yaml.safe_load((ROOT / "configs" / CONFIGS[kind]).read_text())


def early_stopping_args(cfg: dict[str, Any]) -> dict[str, Any]:
    """The EarlyStopping callback's ``init_args`` in a parsed fit config (patience 5 on val/ndcg@10 if it has none)."""
    return next((c["init_args"] for c in cfg["trainer"].get("callbacks", []) if c["class_path"].endswith("EarlyStopping")),
                {"patience": 5, "monitor": "val/ndcg@10"})


def shipped_sasrec_patience() -> int:
    """SASRec's early-stopping patience in its shipped config (the default of the benchmarks that inject SASRec)."""
    return int(early_stopping_args(shipped_config("sasrec"))["patience"])


def shipped_darec_patience() -> int:
    """DARec's early-stopping patience in its shipped config (the default of ``darec_ml100k.py``'s converged runs)."""
    return int(early_stopping_args(shipped_config("darec"))["patience"])


def sasrec_name(length: int, seed: int, patience: int) -> str:
    """A SASRec run's name, with its early-stopping patience (runs are reused by name)."""
    return f"sasrec_L{length}_p{patience}_s{seed}"


def darec_name(variant: str, seed: int, sasrec_len: int, sasrec_patience: int) -> str:
    """A DARec run's name: the variant, and the history length and patience of the SASRec run it injects."""
    return f"{variant}_sasL{sasrec_len}p{sasrec_patience}_s{seed}"


def extra_label(extra: tuple[tuple[str, Any], ...]) -> str:
    """Run-name part for settings away from a shipped config (sorted (dotted key, value) pairs): each key's last part
    followed by its value, ``-``-joined, colons dropped (``(("data.stride", 50), ("mask_seen", True))`` ->
    ``stride50-mask_seenTrue``)."""
    return "-".join(f"{key.rsplit('.', 1)[-1]}{value}" for key, value in extra).replace(":", "")


def converged_darec_name(seed: int, sasrec_len: int, sasrec_patience: int, darec_patience: int,
                         lr: float | None = None, adapters: list[str] | None = None, max_len: int | None = None,
                         extra: tuple[tuple[str, Any], ...] = ()) -> str:
    """The name of a default DARec run trained to convergence, with its own early-stopping patience and, when they
    are not the shipped config's, its learning rate, per-layer adapters, history length and other settings (``extra``:
    sorted (dotted key, value) pairs)."""
    variant = f"darec_p{darec_patience}" + (f"_lr{lr:g}" if lr is not None else "")
    if adapters is not None:
        variant += "_ad" + "-".join(a.replace(":", "") for a in adapters)
    if max_len is not None:
        variant += f"_L{max_len}"
    if extra:
        variant += "_set-" + extra_label(extra)
    return darec_name(variant, seed, sasrec_len, sasrec_patience)


def sasrec_spec(length: int, seed: int, patience: int) -> RunSpec:
    return RunSpec(sasrec_name(length, seed, patience), "sasrec", seed, {"max_len": length}, {"max_len": length},
                   {"patience": patience})


def run_dir(work: Path, name: str) -> Path:
    return work / name


def is_done(work: Path, name: str) -> bool:
    return (run_dir(work, name) / "meta.json").is_file()


def _settings(spec: RunSpec) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``spec``'s model and data ``init_args`` (its shipped config with the overrides merged in) and its trainer
    settings, before any machine path is added: what :func:`train` runs and :func:`resolved_config` records."""
    cfg = shipped_config(spec.kind)
    model = _merge(cfg["model"]["init_args"], spec.model)
    data = _merge(cfg["data"]["init_args"], spec.data)
    if spec.kind == "darec":
        data["max_len"] = model.get("max_len", data.get("max_len"))
    stop = early_stopping_args(cfg)
    trainer = {"max_epochs": spec.trainer.get("max_epochs", cfg["trainer"].get("max_epochs", 100)),
               "patience": spec.trainer.get("patience", stop["patience"]), "monitor": stop["monitor"],
               "max_minutes": spec.trainer.get("max_minutes", FIT_MINUTES[spec.kind]),
               "gradient_clip_val": cfg["trainer"].get("gradient_clip_val")}
    return model, data, trainer


def resolved_config(spec: RunSpec) -> dict[str, Any]:
    """What ``spec`` trains, in full (:func:`_settings`), as JSON values. Machine paths are left out (the data and
    cache folders; the injected exports are named by the runs they come from), so the same spec resolves alike in any
    work folder. ``meta.json`` records it, and a finished run is reused only while its spec still resolves to it (a
    run's name holds only its overrides, and the shipped config can change)."""
    model, data, trainer = _settings(spec)
    model.pop("cache_dir", None)
    if spec.kind == "darec" and isinstance(model.get("injection"), dict):
        model["injection"] = dict(model["injection"], sasrec=spec.cf_from, lightgcn=spec.lightgcn_from)
    data.pop("data_dir", None)
    resolved = {"model_class": shipped_config(spec.kind)["model"]["class_path"], "model": model, "data": data,
                "trainer": trainer, "shuffle_text": spec.shuffle_text,
                **({"test_every_epoch": True} if spec.test_every_epoch else {})}
    return json.loads(json.dumps(resolved))


def check_reusable(work: Path, spec: RunSpec) -> None:
    """Refuse to reuse a finished run that was trained with another configuration than ``spec`` now resolves to
    (:func:`resolved_config`), naming what differs. Runs from before configurations were recorded are reused as they
    are, with a printed note; so are runs from before a model option existed, while it is at its class default, and
    runs that also scored test after every epoch (:attr:`RunSpec.test_every_epoch`) where ``spec`` does not."""
    meta = json.loads((run_dir(work, spec.name) / "meta.json").read_text())
    if "config" not in meta:
        print(f"note: reusing {spec.name}, trained before runs recorded their configuration", flush=True)
        return
    now = resolved_config(spec)
    if meta["config"].get("test_every_epoch") and not spec.test_every_epoch:
        # scoring test after each epoch leaves training and selection exactly as they were: the run serves as is
        now = dict(now, test_every_epoch=True)
    if meta["config"] == now:
        return
    differ = sorted(_differences(meta["config"], now))
    # a model option added since, at its class default: the run trained the behaviour that default keeps
    added = [d for d in differ if d.startswith("model.") and _absent(meta["config"], d)
             and _at(now, d) == _class_default(now["model_class"], d.split(".")[1:])]
    if added:
        print(f"note: reusing {spec.name}, trained before {', '.join(added)} existed (at their defaults)", flush=True)
    differ = [d for d in differ if d not in added]
    if differ:
        raise RuntimeError(
            f"run {spec.name} in {work} was trained with another configuration than its spec now gives "
            f"(differs at: {', '.join(differ)}); delete {run_dir(work, spec.name)} to retrain it, or use another --work-dir")


def _at(config: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        config = config[key]
    return config


def _absent(config: dict[str, Any], dotted: str) -> bool:
    try:
        _at(config, dotted)
    except (KeyError, TypeError):
        return True
    return False


def _class_default(class_path: str, keys: list[str]) -> Any:
    """The default of ``model.init_args`` key ``keys`` (dotted into a config dataclass) of the model class
    ``class_path``, as a JSON value; a sentinel that equals nothing when the key has no default."""
    module, _, name = class_path.rpartition(".")
    value: Any = inspect.signature(getattr(importlib.import_module(module), name).__init__).parameters.get(keys[0])
    value = inspect.Parameter.empty if value is None else value.default
    for key in keys[1:]:
        value = getattr(value, key, inspect.Parameter.empty)
    return object() if value is inspect.Parameter.empty else json.loads(json.dumps(value))


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(a.keys() | b.keys()) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


@torch.no_grad()
def score_matrices(model: Any, dm: Any) -> dict[str, dict[str, np.ndarray]]:
    """``{split: {scores [U, N+1] (column 0 = padding, -inf), targets [U], histories (ragged)}}`` for val and test,
    scored on the model's device."""
    from darec.modules.base import RecModule

    assert isinstance(model, RecModule)
    model.eval()
    out = {}
    for split, loader in (("val", dm.val_dataloader), ("test", dm.test_dataloader)):
        if split == "test":
            dm.setup("test")
        model.on_eval_start()
        scores, targets, hist = [], [], []
        for batch in loader():
            b = model.prepare_eval_batch({k: v.to(model.device) if torch.is_tensor(v) else v for k, v in batch.items()})
            s = model.score_chunk(b, 1, model.num_items + 1).float().cpu()
            scores.append(torch.cat([torch.full((s.shape[0], 1), float("-inf")), s], 1).numpy())
            targets.append(batch["target"].numpy())
            hist.extend([h[h > 0] for h in batch["history"].numpy()])
        out[split] = {"scores": np.concatenate(scores).astype(np.float32), "targets": np.concatenate(targets),
                      "history": hist}
    return out


@torch.no_grad()
def lm_only_score_matrices(model: Any, dm: Any) -> dict[str, dict[str, np.ndarray]] | None:
    """A DARec's score matrices without SASRec's residual score (its language-model path), or None without a residual
    (or for a model without injection, such as SASRec)."""
    injection = getattr(model, "injection", None)
    scale = None if injection is None else injection.residual_scale
    if scale is None:
        return None
    weight = float(scale)
    scale.fill_(0.0)
    try:
        return score_matrices(model, dm)
    finally:
        scale.fill_(weight)


def ranks(scores: np.ndarray, targets: np.ndarray, history: list[np.ndarray]) -> np.ndarray:
    """0-based full-ranking ranks with the project's rules (history masked, ties against the target)."""
    from darec.data.datamodules.base import left_pad
    from darec.evaluation.metrics import target_ranks

    s = torch.from_numpy(scores.copy())
    return target_ranks(s, torch.from_numpy(targets).long(), left_pad(list(history))).numpy()


def ndcg10(r: np.ndarray) -> np.ndarray:
    return np.where(r < 10, 1.0 / np.log2(r + 2.0), 0.0)


def per_epoch_scores(model: Any, dm: Any, prefix: Path) -> dict[str, float]:
    """Diagnostic (:attr:`RunSpec.test_every_epoch`): per-user NDCG@10 of ``model`` as it stands on validation and
    test, fused and (with a residual) its language model alone, saved as ``<prefix>_<split>[_lm].npy``; returns their
    means. Training is left exactly as it was: the random states are restored (the evaluation loaders draw from
    torch's), the model's train mode is restored by Lightning after ``on_validation_end``, and nothing here feeds
    checkpointing, early stopping or the residual weight."""
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    try:
        parts = {"": score_matrices(model, dm)}
        lm = lm_only_score_matrices(model, dm)
        if lm is not None:
            parts["_lm"] = lm
    finally:
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])
    prefix.parent.mkdir(parents=True, exist_ok=True)
    means = {}
    for suffix, mats in parts.items():
        for split, m in mats.items():
            per_user = ndcg10(ranks(m["scores"], m["targets"], m["history"])).astype(np.float32)
            np.save(f"{prefix}_{split}{suffix}.npy", per_user)
            means[f"diag_{split}{suffix}_ndcg@10"] = float(per_user.mean())
    return means


def train(spec: RunSpec, work: Path, data_dir: str, accelerator: str = "cpu") -> dict[str, Any]:
    """Train ``spec`` (unless done) on ``accelerator`` (``"cpu"`` or ``"gpu"``) and store its score matrices and
    ``meta.json``; returns the meta."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from darec.modules.cf import export_module

    out = run_dir(work, spec.name)
    if is_done(work, spec.name):
        check_reusable(work, spec)
        return json.loads((out / "meta.json").read_text())
    device = accelerator_device(accelerator)
    out.mkdir(parents=True, exist_ok=True)
    cfg = shipped_config(spec.kind)
    model_kw, data_kw, settings = _settings(spec)
    data_kw["data_dir"] = data_dir
    if spec.kind == "darec":
        model_kw["cache_dir"] = str(work / "cache")
        inj = dict(model_kw.get("injection") or {})
        if inj.get("mode", "none") != "none":
            inj["sasrec"] = str(run_dir(work, spec.cf_from) / "cf" / "sasrec.safetensors") if spec.cf_from else None
            inj["lightgcn"] = str(run_dir(work, spec.lightgcn_from) / "cf" / "lightgcn.safetensors") if spec.lightgcn_from else None
        model_kw["injection"] = inj
    max_epochs, patience, stop_on, max_minutes = (settings[k] for k in ("max_epochs", "patience", "monitor", "max_minutes"))
    L.seed_everything(spec.seed)
    dm = _import(cfg["data"]["class_path"])(**data_kw)
    cls = _import(cfg["model"]["class_path"])
    model = cls(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint, **model_kw)
    if spec.shuffle_text:
        d = dm.data
        body = list(d.sentences[1:])
        np.random.default_rng(spec.seed).shuffle(body)
        model.attach_data([""] + body, "shuffled-" + d.text_hash, d.fingerprint, d.train_sequences(), d.item_raw_ids)
    curve: list[dict[str, float]] = []

    class Curve(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            self.t = time.perf_counter()

        def on_validation_end(self, trainer, pl_module):
            m = trainer.callback_metrics
            curve.append({"epoch": trainer.current_epoch, "val_ndcg@10": float(m["val/ndcg@10"]),
                          **({"val_lm_ndcg@10": float(m["val/lm_ndcg@10"])} if "val/lm_ndcg@10" in m else {}),
                          "epoch_s": time.perf_counter() - self.t})
            lm = f", language model alone {curve[-1]['val_lm_ndcg@10']:.4f}" if "val_lm_ndcg@10" in curve[-1] else ""
            if spec.test_every_epoch:
                curve[-1].update(per_epoch_scores(pl_module, trainer.datamodule, out / "curves" / f"epoch{trainer.current_epoch}"))
                lm += f"; diagnostic test NDCG@10 {curve[-1]['diag_test_ndcg@10']:.4f}"
            print(f"{spec.name} epoch {trainer.current_epoch}: val NDCG@10 {curve[-1]['val_ndcg@10']:.4f}{lm} "
                  f"({curve[-1]['epoch_s']:.0f} s)", flush=True)

    ckpt = ModelCheckpoint(dirpath=out / "ckpt", monitor="val/ndcg@10", mode="max", save_top_k=1, filename="best")
    trainer = L.Trainer(
        max_epochs=max_epochs, max_time={"minutes": max_minutes}, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, accelerator=accelerator, devices=1,
        gradient_clip_val=settings["gradient_clip_val"],
        callbacks=[ckpt, stopper := EarlyStopping(monitor=stop_on, mode="max", patience=patience), Curve()],
    )
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    fit_s = time.perf_counter() - t0
    best = cls.load_from_checkpoint(ckpt.best_model_path, map_location=device).to(device)
    if spec.kind in ("sasrec", "lightgcn"):
        export_module(best, dm.data, out / "cf" / f"{spec.kind}.safetensors")
    mats = score_matrices(best, dm)
    lm_only = lm_only_score_matrices(best, dm) if spec.kind == "darec" else None
    # what ended training, read from the callbacks: early stopping's patience, the epoch cap, or else the time cap
    stopped_by = ("early stopping" if stopper.stopped_epoch > 0
                  else "max_epochs" if trainer.current_epoch >= max_epochs else "time cap")
    meta: dict[str, Any] = {"spec": asdict(spec), "config": resolved_config(spec), "git": git_commit(), "fit_s": fit_s, "epochs_run": trainer.current_epoch,
                            "best_val_ndcg@10": float(ckpt.best_model_score), "curve": curve, "stopped_by": stopped_by,
                            "stopped_by_time": stopped_by == "time cap", "torch_threads": torch.get_num_threads(),
                            "accelerator": accelerator,
                            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    for split, m in mats.items():
        np.save(out / f"{split}_scores.npy", m["scores"])
        r = ranks(m["scores"], m["targets"], m["history"])
        np.save(out / f"{split}_ranks.npy", r)
        meta[f"{split}_ndcg@10"] = float(ndcg10(r).mean())
        if lm_only is not None:
            np.save(out / f"{split}_scores_lm.npy", lm_only[split]["scores"])
            meta[f"{split}_ndcg@10_lm_only"] = float(ndcg10(ranks(lm_only[split]["scores"], m["targets"], m["history"])).mean())
    if lm_only is not None:
        meta["residual_weight"] = float(best.injection.residual_scale)
    np.savez(out / "eval_data.npz", **{f"{split}_targets": m["targets"] for split, m in mats.items()})
    with open(out / "histories.json", "w") as f:
        json.dump({split: [h.tolist() for h in m["history"]] for split, m in mats.items()}, f)
    os.remove(ckpt.best_model_path)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


@dataclass
class Run:
    """A finished run, loaded: meta, score matrices, targets and histories per split."""

    meta: dict[str, Any]
    scores: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    history: dict[str, list[np.ndarray]]

    def ranks(self, split: str, scores: np.ndarray | None = None) -> np.ndarray:
        return ranks(self.scores[split] if scores is None else scores, self.targets[split], self.history[split])


def has_lm_only(work: Path, name: str) -> bool:
    """Whether the run has language-model-only scores (a residual DARec), which ``load(..., lm_only=True)`` reads."""
    return (run_dir(work, name) / "test_scores_lm.npy").is_file()


def load(work: Path, name: str, lm_only: bool = False) -> Run:
    """A finished run; ``lm_only`` takes a residual DARec's scores without SASRec's part (same checkpoint)."""
    d = run_dir(work, name)
    ev = np.load(d / "eval_data.npz")
    hist = json.loads((d / "histories.json").read_text())
    suffix = "_lm" if lm_only else ""
    return Run(json.loads((d / "meta.json").read_text()),
               {s: np.load(d / f"{s}_scores{suffix}.npy") for s in ("val", "test")},
               {s: ev[f"{s}_targets"] for s in ("val", "test")},
               {s: [np.asarray(h, dtype=np.int64) for h in hist[s]] for s in ("val", "test")})


def add_converged_sasrec_args(p: argparse.ArgumentParser, script: str) -> None:
    """The options of a benchmark that reuses the converged SASRec (and DARec) runs of ``darec_ml100k.py``: data, seeds,
    SASRec's history length and patience, parallel runs, the shared work folder, and ``--out`` (``script``'s JSON)."""
    p.add_argument("--data-dir", default="data/ml-100k")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sasrec-len", type=int, default=100, help="SASRec's history length (tuned by darec_ml100k.py: 100)")
    p.add_argument("--sasrec-patience", type=int, default=25, help="SASRec's early-stopping patience")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / "_work" / "darec_ml100k"))
    p.add_argument("--out", default=str(Path(script).with_suffix(".json")))


def add_stored_runs_args(p: argparse.ArgumentParser, script: str) -> None:
    """The options of a benchmark that only reads the converged runs of ``darec_ml100k.py`` (it trains nothing): the
    prepared data they trained on, the seeds, SASRec's history length and patience, the work folder and ``--out``."""
    p.add_argument("--data-dir", default="data/ml-100k", help="the prepared data the runs trained on")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--sasrec-len", type=int, default=100)
    p.add_argument("--sasrec-patience", type=int, default=25)
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / "_work" / "ml100k_mask"))
    p.add_argument("--out", default=str(Path(script).with_suffix(".json")))


def load_converged(work: Path, seed: int, sasrec_len: int, sasrec_patience: int, num_items: int) -> dict[str, Run]:
    """Seed ``seed``'s converged default DARec (``darec``), its language model alone (``darec_lm_only``, the same
    checkpoint) and the SASRec run it injects (``sasrec``); exits with a clear error when the DARec run is not finished,
    scores another number of items than ``num_items`` (other data) or the runs do not share their held-out targets."""
    name = converged_darec_name(seed, sasrec_len, sasrec_patience, shipped_darec_patience())
    if not is_done(work, name):
        raise SystemExit(f"error: {work / name} is not a finished run; train it with darec_ml100k.py")
    runs = {"darec": load(work, name), "darec_lm_only": load(work, name, lm_only=True)}
    runs["sasrec"] = load(work, runs["darec"].meta["spec"]["cf_from"])
    if runs["darec"].scores["val"].shape[1] != num_items + 1:
        raise SystemExit(f"error: {name} scores {runs['darec'].scores['val'].shape[1] - 1} items, the data has {num_items}; "
                         "pass the --data-dir it trained on")
    for split in ("val", "test"):
        if not np.array_equal(runs["sasrec"].targets[split], runs["darec"].targets[split]):
            raise SystemExit(f"error: {runs['darec'].meta['spec']['cf_from']} has other {split} targets than {name}")
    return runs


def training_popularity(data_dir: str | Path) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Each catalogue item's training interactions (``PreparedData.train_item_counts``: training data only, index 0
    padding; cold items, which no run scores, left out as the models leave them out) and the edges of the
    target-popularity groups the benchmarks break their figures down by."""
    from darec.data.dataset import PreparedData
    from darec.evaluation.metrics import popularity_edges

    data = PreparedData(data_dir)
    counts = torch.as_tensor(data.train_item_counts()[: data.num_items + 1])
    return counts, popularity_edges(counts)


def target_popularity_groups(counts: torch.Tensor, edges: tuple[int, ...], targets: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Each held-out target's popularity group (by its training count, :func:`training_popularity`) and the labels."""
    from darec.evaluation.metrics import popularity_buckets

    groups, labels = popularity_buckets(counts[torch.from_numpy(targets).long()], edges)
    return groups.numpy(), labels


def run_all(specs: list[RunSpec], work: Path, data_dir: str, jobs: int = 2, threads: int = 1,
            accelerator: str = "cpu") -> None:
    """Train every spec not done yet, ``jobs`` subprocesses at a time with ``threads`` torch threads each, each
    after the runs it injects, on ``accelerator`` (``"gpu"``: all of them on the first CUDA device)."""
    if jobs < 1 or threads < 1:
        raise ValueError(f"jobs and threads must be >= 1, got {jobs} and {threads}")
    if accelerator_device(accelerator).type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("accelerator 'gpu' asked for, but torch sees no CUDA device")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if jobs * threads > cores:
        print(f"warning: {jobs} jobs x {threads} threads exceed this machine's {cores} cores; runs will be slower",
              flush=True)
    for spec in specs:
        if is_done(work, spec.name):
            check_reusable(work, spec)
    pending = [s for s in specs if not is_done(work, s.name)]
    running: list[tuple[RunSpec, subprocess.Popen]] = []
    work.mkdir(parents=True, exist_ok=True)
    preexec = die_with_parent if sys.platform.startswith("linux") else None
    try:
        while pending or running:
            for spec, proc in list(running):
                if proc.poll() is not None:
                    running.remove((spec, proc))
                    if proc.returncode != 0 or not is_done(work, spec.name):
                        raise RuntimeError(f"run {spec.name} failed (exit {proc.returncode}); see {run_dir(work, spec.name)}/log.txt")
            ready = [s for s in pending if all(is_done(work, dep) for dep in (s.cf_from, s.lightgcn_from) if dep)]
            while ready and len(running) < jobs:
                spec = ready.pop(0)
                pending.remove(spec)
                run_dir(work, spec.name).mkdir(parents=True, exist_ok=True)
                env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
                cmd = [sys.executable, __file__, json.dumps(asdict(spec)), str(work), data_dir, accelerator]
                with open(run_dir(work, spec.name) / "log.txt", "w") as log:  # the run writes to its own copy
                    running.append((spec, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                           preexec_fn=preexec)))
                print(f"started {spec.name}", flush=True)
            if not ready and not running and pending:
                raise RuntimeError(f"runs waiting on runs that never finish: {[s.name for s in pending]}")
            time.sleep(2)
    finally:
        stop_runs(running)


def stop_runs(running: list[tuple[RunSpec, subprocess.Popen]]) -> None:
    """Ends the runs still training (a run failed, or the benchmark was interrupted), so that no training outlives
    the benchmark that started it; a stopped run is not done, so the next call trains it again from the start."""
    for spec, proc in running:
        if proc.poll() is None:
            proc.terminate()
            print(f"stopped {spec.name}", flush=True)
    for _, proc in running:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def die_with_parent() -> None:
    """A run's ``preexec_fn`` on Linux: the kernel ends it when the benchmark process dies, even by ``kill -9``."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    spec_json, work_dir, data = sys.argv[1:4]
    meta = train(RunSpec(**json.loads(spec_json)), Path(work_dir), data, sys.argv[4] if len(sys.argv) > 4 else "cpu")
    print(json.dumps({k: meta[k] for k in ("fit_s", "epochs_run", "best_val_ndcg@10", "test_ndcg@10")}))
