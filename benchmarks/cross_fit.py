"""Cross-fitted SASRec user encoders for DARec: the user states DARec trains on come from a SASRec that never saw that user.

``sasrec_fit_gap.py`` measured that the converged SASRec runs rank a training target at 1.57x the NDCG@10 of a
held-out one. DARec learns from SASRec's causal user states ``u_t`` on training targets, so the language model is
taught to trust an input that is far weaker when it is evaluated (the stacking problem). Cross-fitting removes the
gap by construction: users are split into ``K`` folds by ``user_id % K``; the encoder of fold ``k`` is trained on
every other fold's training sequences, with the item table **frozen** at the seed's converged SASRec (so every fold
encoder's states live in the same space as the item vectors DARec injects), and gives the user states of fold ``k``'s
users, in training and in evaluation alike. SASRec's own score in DARec's residual stays the converged full model's.

Phases (each reuses what is already on disk):

- ``sasrec``: train and export the fold encoders of each seed (early stopping on the validation NDCG@10 of the
  encoder's own training users: no user's held-out items reach the encoder that serves that user), and measure
  each encoder's fit gap on the users it serves (last training item against the validation item), beside the
  full model's on the same users;
- ``darec``: train DARec's default configuration with ``injection.sasrec_folds`` (evaluation reading the
  out-of-fold states too, or with ``--fold-eval full`` the full SASRec's) at a fixed budget (``--epochs N``)
  or to convergence (``--epochs 0``: the shipped early stopping) and compare it, paired over test users, with the
  same configuration injected with the full SASRec (``ablation.py``'s ``full`` runs at the same budget, or
  ``darec_ml100k.py``'s converged DARec runs; any other run names by ``--reference``) and with SASRec itself.

    python benchmarks/cross_fit.py --phase sasrec darec [--seeds 0 1 2] [--folds 2] [--epochs 4] [--jobs 2]

Writes ``benchmarks/cross_fit.json`` (machine, command, commit, load average, per-encoder fit curves).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import command, git_commit, machine, paired_bootstrap  # noqa: E402
from runs import (  # noqa: E402
    RunSpec, darec_name, has_lm_only, is_done, load, ndcg10, run_all, run_dir, sasrec_name, shipped_darec_patience,
    shipped_sasrec_patience,
)
from sasrec_fit_gap import sasrec_ranks  # noqa: E402


def fold_export_path(work: Path, seed: int, length: int, patience: int, folds: int, fold: int) -> Path:
    return run_dir(work, sasrec_name(length, seed, patience)) / "cf" / f"sasrec_fold{fold}of{folds}.safetensors"


def train_fold_encoder(data: Any, full: Any, folds: int, fold: int, seed: int, patience: int, max_epochs: int,
                       batch_size: int = 256, lr: float = 1e-3, stride: int | None = None,
                       mask_seen: bool = False) -> tuple[Any, list[dict[str, float]]]:
    """A SASRec encoder trained on the users with ``user_id % folds != fold``, its item table frozen at ``full``'s;
    windows at ``stride`` (default half the length) and, with ``mask_seen``, the window's items out of the softmax, as
    the full SASRec trained (:func:`full_training`)."""
    from darec.data.datamodules.sequence import make_windows
    from darec.data.dataset import Ragged
    from darec.modules.losses import next_item_loss, seen_items
    from darec.modules.sasrec import SasrecConfig, SasrecEncoder

    torch.manual_seed(seed * 1000 + fold)
    cfg = SasrecConfig(**full.meta["sasrec"]["config"])
    enc = SasrecEncoder(cfg)
    items = full.item_emb.float()
    with torch.no_grad():
        enc.item_embedding.weight.copy_(items)
    enc.item_embedding.weight.requires_grad_(False)
    seqs = data.train_sequences()
    kept = [list(map(int, s)) if (u % folds != fold) else [] for u, s in enumerate(seqs, start=1)]
    _, inputs, targets = make_windows(Ragged.from_lists([[]] + kept), cfg.max_len, stride or max(1, cfg.max_len // 2))
    inputs, targets = torch.from_numpy(inputs), torch.from_numpy(targets)
    val = data.eval_split("validation")
    own = [(int(u), int(t)) for u, t in zip(val.users, val.targets) if u % folds != fold and len(seqs[u - 1])]
    prefixes, vt = [seqs[u - 1] for u, _ in own], np.array([t for _, t in own])
    opt = torch.optim.Adam([p for p in enc.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(seed * 1000 + fold)
    best, best_state, bad, curve = -1.0, None, 0, []
    for epoch in range(max_epochs):
        t0 = time.perf_counter()
        enc.train()
        order = torch.randperm(len(inputs), generator=gen)
        total = 0.0
        for i in range(0, len(order), batch_size):
            ix = order[i : i + batch_size]
            tgt = targets[ix]
            sel = tgt > 0
            h = enc(inputs[ix])[sel]
            if mask_seen:
                loss = next_item_loss(h, items, tgt[sel], exclude=seen_items(inputs[ix], tgt, sel, items.shape[0] - 1))
            else:
                loss = F.cross_entropy(h @ items[1:].T, tgt[sel] - 1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * int(sel.sum())
        enc.eval()
        ndcg = float(ndcg10(sasrec_ranks(enc, items, prefixes, vt)).mean())
        curve.append({"epoch": epoch, "train_loss": total / max(1, int((targets > 0).sum())), "val_ndcg@10": ndcg,
                      "epoch_s": time.perf_counter() - t0})
        if ndcg > best:
            best, bad = ndcg, 0
            best_state = {k: v.detach().clone() for k, v in enc.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    assert best_state is not None
    enc.load_state_dict(best_state)
    return enc.eval(), curve


def full_training(work: Path, name: str) -> dict[str, Any]:
    """How the full SASRec run ``name`` trained, for its fold encoders: its window ``stride`` and ``mask_seen`` (runs
    that predate recorded configurations: half the length, no mask)."""
    config = json.loads((run_dir(work, name) / "meta.json").read_text()).get("config") or {}
    return {"stride": (config.get("data") or {}).get("stride"), "mask_seen": bool((config.get("model") or {}).get("mask_seen", False))}


def export_fold(enc: Any, full: Any, data: Any, out: Path, folds: int, fold: int) -> Path:
    """Write ``enc`` as a SASRec CF export (its item table is ``full``'s) that names the users it serves."""
    from darec.modules.cf import export_module
    from darec.modules.sasrec import SASRec

    c = full.meta["sasrec"]["config"]
    model = SASRec(num_items=data.num_items, num_users=data.num_users, data_fingerprint=data.fingerprint,
                   **{k: v for k, v in c.items() if k != "num_items"})
    model.encoder.load_state_dict(enc.state_dict())
    return export_module(model, data, out, meta={"cross_fit": {"folds": folds, "fold": fold, "rule": "user_id % folds",
                                                                "full_export": str(full.path)}})


def phase_sasrec(a: argparse.Namespace, work: Path, pat: int) -> dict[str, Any]:
    from darec.data.dataset import PreparedData
    from darec.modules.cf import load_cf_embeddings
    from darec.modules.sasrec import SasrecUserEncoder

    data = PreparedData(a.data_dir)
    seqs = data.train_sequences()
    val = data.eval_split("validation")
    by_user = dict(zip(val.users.tolist(), val.targets.tolist()))
    out: dict[str, Any] = {}
    gaps: dict[str, list[np.ndarray]] = {"cross_fit": [], "full": []}
    for s in a.seeds:
        full_path = run_dir(work, sasrec_name(a.sasrec_len, s, pat)) / "cf" / "sasrec.safetensors"
        if not full_path.is_file():
            raise SystemExit(f"error: {full_path} is missing; run benchmarks/darec_ml100k.py first")
        full = load_cf_embeddings(full_path, data.fingerprint)
        full_enc, items = SasrecUserEncoder.from_cf(full).eval(), full.item_emb.float()
        per_seed: dict[str, list[np.ndarray]] = {"cross_fit": [], "full": []}
        for k in range(a.folds):
            path = fold_export_path(work, s, a.sasrec_len, pat, a.folds, k)
            log = path.with_suffix(".curve.json")
            if path.is_file() and log.is_file():
                curve = json.loads(log.read_text())
                enc = SasrecUserEncoder.from_export(path, data.fingerprint).eval()
            else:
                t0 = time.perf_counter()
                enc, curve = train_fold_encoder(data, full, a.folds, k, s, a.fold_patience, a.fold_max_epochs,
                                                **full_training(work, sasrec_name(a.sasrec_len, s, pat)))
                print(f"seed {s} fold {k}: {len(curve)} epochs, best val NDCG@10 of its training users "
                      f"{max(c['val_ndcg@10'] for c in curve):.4f}, {time.perf_counter() - t0:.0f} s", flush=True)
                export_fold(enc, full, data, path, a.folds, k)
                log.write_text(json.dumps(curve))
            served = [u for u in range(1, data.num_users + 1) if u % a.folds == k and u in by_user and len(seqs[u - 1]) >= 2]
            last = ([seqs[u - 1][:-1] for u in served], np.array([seqs[u - 1][-1] for u in served]))
            held = ([seqs[u - 1] for u in served], np.array([by_user[u] for u in served]))
            for name, e in (("cross_fit", enc), ("full", full_enc)):
                per_seed[name].append(np.stack([ndcg10(sasrec_ranks(e, items, *last)),
                                                ndcg10(sasrec_ranks(e, items, *held))]))
            out[f"s{s}_fold{k}"] = {"epochs": len(curve), "best_val_ndcg@10_own_users": max(c["val_ndcg@10"] for c in curve),
                                    "fit_s": sum(c["epoch_s"] for c in curve), "served_users": len(served)}
        for name in gaps:
            gaps[name].append(np.concatenate(per_seed[name], 1))
    rows = {}
    for name, v in gaps.items():
        m = np.mean(v, 0)  # [2, users]: last training item, validation item; seeds averaged
        rows[name] = {"last_training_item_ndcg@10": float(m[0].mean()), "validation_item_ndcg@10": float(m[1].mean()),
                      "gap": paired_bootstrap(m[0] - m[1])}
    print(f"\n{'user states from':<22}{'last training item':>20}{'validation item':>17}  gap (95% CI)")
    for name, r in rows.items():
        g = r["gap"]
        print(f"{name:<22}{r['last_training_item_ndcg@10']:>20.4f}{r['validation_item_ndcg@10']:>17.4f}  "
              f"{g['mean']:+.4f} [{g['bootstrap_95ci'][0]:+.4f}, {g['bootstrap_95ci'][1]:+.4f}]")
    return {"encoders": out, "fit_gap": rows}


def phase_darec(a: argparse.Namespace, work: Path, pat: int) -> dict[str, Any]:
    specs, pairs = [], []
    budget = {"max_epochs": a.epochs, "patience": a.epochs} if a.epochs else {}
    default = f"ablation_full_e{a.epochs}" if a.epochs else f"darec_p{shipped_darec_patience()}"  # ablation.py's or darec_ml100k.py's
    for s in a.seeds:
        folds = [str(fold_export_path(work, s, a.sasrec_len, pat, a.folds, k)) for k in range(a.folds)]
        if a.stacked:
            variant, injection = f"stacked{a.folds}", {"sasrec_folds": folds, "sasrec_folds_for": "residual",
                                                        "residual_weight": "stacked"}
        else:
            variant = f"cross_fit{a.folds}" + ("full" if a.fold_eval == "full" else "")
            injection = {"sasrec_folds": folds, "sasrec_folds_eval": a.fold_eval}
        name = darec_name(f"{variant}_" + (f"e{a.epochs}" if a.epochs else "converged"), s, a.sasrec_len, pat)
        specs.append(RunSpec(name, "darec", s, {"injection": injection},
                             {}, budget,
                             cf_from=sasrec_name(a.sasrec_len, s, pat), lightgcn_from=f"lightgcn_s{s}"))
        ref = (a.reference.format(seed=s, epochs=a.epochs, length=a.sasrec_len, patience=pat) if a.reference
               else darec_name(default, s, a.sasrec_len, pat))
        if not is_done(work, ref):
            raise SystemExit(f"error: reference run {ref} is not in {work}; run benchmarks/ablation.py --epochs {a.epochs} "
                             "--variants full (or darec_ml100k.py for --epochs 0) first, or name another with --reference")
        pairs.append((name, ref, sasrec_name(a.sasrec_len, s, pat)))
    run_all(specs, work, a.data_dir, a.jobs, a.threads)
    rows: dict[str, Any] = {}
    sasrec = [ndcg10(load(work, p[2]).ranks("test")) for p in pairs]
    rows["sasrec"] = {"test_ndcg@10_mean": float(np.mean([x.mean() for x in sasrec])), "per_seed": [float(x.mean()) for x in sasrec]}
    for label, lm in (("fused", False), ("language_model_alone", True)):
        runs = {side: [load(work, p[i], lm_only=lm and has_lm_only(work, p[i])) for p in pairs]
                for i, side in enumerate(("cross_fit", "full_sasrec"))}
        per = {side: [ndcg10(r.ranks("test")) for r in rs] for side, rs in runs.items()}
        if not lm:
            fused = runs
        rows[label] = {side: {"test_ndcg@10_mean": float(np.mean([x.mean() for x in v])),
                              "per_seed": [float(x.mean()) for x in v]} for side, v in per.items()}
        rows[label]["cross_fit_minus_full_sasrec"] = paired_bootstrap(np.mean(per["cross_fit"], 0) - np.mean(per["full_sasrec"], 0))
        val = {side: np.mean([ndcg10(r.ranks("val")) for r in rs], 0) for side, rs in runs.items()}  # what the rule reads
        rows[label]["val_cross_fit_minus_full_sasrec"] = paired_bootstrap(val["cross_fit"] - val["full_sasrec"])
        for side, v in per.items():
            diff = paired_bootstrap(np.mean(v, 0) - np.mean(sasrec, 0))
            rows[label][f"{side}_minus_sasrec"] = {**diff, "ratio": rows[label][side]["test_ndcg@10_mean"] / rows["sasrec"]["test_ndcg@10_mean"]}
    for side, rs in fused.items():
        rows[side + "_runs"] = [{k: r.meta.get(k) for k in ("best_val_ndcg@10", "val_ndcg@10_lm_only", "test_ndcg@10",
                                                            "test_ndcg@10_lm_only", "residual_weight", "fit_s", "epochs_run")}
                                for r in rs]
    def ci(d: dict[str, Any]) -> str:
        return f"{d['mean']:+.4f} [{d['bootstrap_95ci'][0]:+.4f}, {d['bootstrap_95ci'][1]:+.4f}]"

    print(f"\ntest NDCG@10, {len(pairs)} seeds (SASRec alone: {rows['sasrec']['test_ndcg@10_mean']:.4f})")
    print(f"{'DARec score':<22}{'cross-fitted':>14}{'full SASRec':>14}{'difference (95% CI)':>32}{'cross-fitted / SASRec':>24}")
    for label in ("fused", "language_model_alone"):
        r = rows[label]
        print(f"{label:<22}{r['cross_fit']['test_ndcg@10_mean']:>14.4f}{r['full_sasrec']['test_ndcg@10_mean']:>14.4f}"
              f"{ci(r['cross_fit_minus_full_sasrec']):>32}{r['cross_fit_minus_sasrec']['ratio']:>23.3f}x")
    for label in ("fused", "language_model_alone"):
        print(f"validation, {label}: cross-fitted - full SASRec {ci(rows[label]['val_cross_fit_minus_full_sasrec'])}")
    return {"pairs": pairs, **rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phase", nargs="+", choices=["sasrec", "darec"], default=["sasrec", "darec"])
    p.add_argument("--data-dir", default=str(ROOT / "data" / "ml-100k"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--folds", type=int, default=2, help="user folds (user_id %% folds)")
    p.add_argument("--fold-patience", type=int, default=10, help="early-stopping patience of a fold encoder")
    p.add_argument("--fold-max-epochs", type=int, default=200)
    p.add_argument("--sasrec-len", type=int, default=50, help="the full SASRec runs' history length")
    p.add_argument("--sasrec-patience", type=int, default=None, help="the full SASRec runs' (default: shipped config's)")
    p.add_argument("--epochs", type=int, default=4, help="DARec's fixed budget; 0: to convergence (shipped early stopping)")
    p.add_argument("--reference", default=None,
                   help="run name (with {seed}, {epochs}, {length}, {patience}) of the full-SASRec DARec each seed is paired with "
                        "(default: ablation.py's full runs, or darec_ml100k.py's with --epochs 0)")
    p.add_argument("--fold-eval", choices=["folds", "full"], default="folds",
                   help="injection.sasrec_folds_eval: evaluation reads the out-of-fold states too, or the full SASRec's")
    p.add_argument("--stacked", action="store_true",
                   help="DARec phase: injection.residual_weight stacked with sasrec_folds_for residual (the language model "
                        "trains on top of each user's out-of-fold SASRec score; inputs and evaluation read the full SASRec)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / "_work" / "darec_ml100k"))
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    a = p.parse_args(argv)
    if a.folds < 2:
        raise SystemExit("error: --folds must be at least 2")
    torch.set_num_threads(a.threads)
    work = Path(a.work_dir)
    pat = a.sasrec_patience if a.sasrec_patience is not None else shipped_sasrec_patience()
    old = json.loads(Path(a.out).read_text()) if Path(a.out).is_file() else {}
    result: dict[str, Any] = {"benchmark": "cross-fitted SASRec user states for DARec (ml-100k)", "machine": machine(),
                              "command": command("benchmarks/cross_fit.py", argv), "git": git_commit((a.out,)),
                              "seeds": a.seeds, "folds": a.folds, "fold_patience": a.fold_patience, "sasrec_patience": pat}
    same = old.get("folds") == a.folds and old.get("seeds") == a.seeds and old.get("sasrec_patience") == pat
    for key, value in old.items():  # the other phases' results of an earlier call (each with its own command and commit)
        if same and key.startswith(("sasrec", "darec_")) and key != "sasrec_patience":
            result[key] = value
    if "sasrec" in a.phase:
        result["sasrec"] = {**phase_sasrec(a, work, pat), "command": result["command"], "git": result["git"], "machine": result["machine"]}
    if "darec" in a.phase:
        key = ((f"darec_e{a.epochs}" if a.epochs else "darec_converged") + ("_eval_full" if a.fold_eval == "full" else "")
               + ("_stacked" if a.stacked else ""))
        result[key] = {**phase_darec(a, work, pat), "epochs": a.epochs or "early stopping",
                       "fold_eval": "full (stacked)" if a.stacked else a.fold_eval,
                       "command": result["command"], "git": result["git"], "machine": result["machine"]}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
