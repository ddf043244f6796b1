"""Adapter search (``darec search``) on ml-100k with MiniLM on the CPU: does the chosen assignment beat uniform serial?

Two Bayesian-optimisation searches from ``configs/darec_ml100k.yaml`` (SASRec and LightGCN injected from
``--cf-dir``), each over every MiniLM layer's adapter type and size plus the shared learning rate, with two
objectives beside validation NDCG@10 (training seconds per epoch measured in each trial, trainable parameters):

- ``static``: types none / skip / serial / parallel / lora; its fresh-seed baseline is uniform serial (the default
  DARec); ``skip`` leaves a layer out of the forward pass, the one choice that makes the sequence level cheaper;
- ``mixture``: the same plus ``mixture`` (serial, parallel and LoRA experts with a per-token router); its baseline
  is uniform mixture.

Every trial trains ``--epochs`` epochs (2 reach about 0.9x the converged validation NDCG@10 of the default DARec,
``benchmarks/ablation.json``), unless the percentile rule stops it after an epoch as clearly worse, or, with
``--reference-floor F``, it falls below F times the uniform baseline's curve at the search budget (a reference run
trained first, beside the first trials, which the percentile rule cannot judge). The JSON reports which completed
trials stayed below 0.9x the converged validation value of the uniform baseline (``trained_far_enough``). The Pareto point
with the best search NDCG@10 of each search (``--prefer cost``: the cheapest Pareto point within ``--tolerance``
of that value) and its baseline are then trained on ``--seeds`` fresh seeds with the
same budget, or to convergence with ``--rerun-epochs N`` (at most N epochs; the base config's early stopping on the
language model's validation NDCG@10 ends them). Each re-run's best checkpoint is scored per user on validation and test, and the benchmark reports:

- winner against uniform serial: validation NDCG@10 difference with a paired bootstrap CI over users (the mean over
  seeds per user), and the ratio of training seconds per epoch (target: CI above 0, or within the CI at <= 0.7x
  the seconds); the same for the language-model path alone (the checkpoint without SASRec's residual score, which
  is the part the adapters change), reported beside it;
- test NDCG@10 (read after selection, for the report only) of the four candidates, the refit of the static winner
  (``--refit`` at the same budget) and SASRec (``benchmarks/darec_ml100k.json``, 3 seeds);
- Ax's own leave-one-out fit of its surrogate against a constant, and repeated arms.

``--metric val/lm_ndcg@10`` makes the searches score trials (and pick each trial's checkpoint) by the language-model
path's validation NDCG@10 instead of the fused score's; the target is still read on the fused score.

It resumes after a kill (``--resume``): finished trials and re-runs are read from each search's journal, never run
again, and the counts found at the start are written to the JSON.

    python benchmarks/search_ml100k.py --cf-dir DIR [--trials 8] [--init-trials 4] [--epochs 2] [--seeds 3]
                                       [--rerun-epochs 15] [--parallel 2] [--resume]
                                       [--base-config configs/darec_ml100k.yaml]
                                       [--metric val/ndcg@10|val/lm_ndcg@10] [--accelerator cpu|gpu]
                                       [--prefer quality|cost] [--tolerance T] [--knob-control] [--reference-floor F]

``--accelerator gpu`` trains every trial and re-run on the CUDA device (``--parallel`` trials share one GPU) and
scores the re-runs there.

``--cf-dir`` holds ``sasrec.safetensors`` and ``lightgcn.safetensors`` (``darec export-embeddings`` of SASRec and
LightGCN trained on this split). Writes ``benchmarks/search_ml100k.json`` and copies each search's plots beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import command, git_commit, machine, paired_bootstrap  # noqa: E402
from runs import ACCELERATORS, accelerator_device, lm_only_score_matrices, ndcg10, ranks, score_matrices  # noqa: E402

from darec.search.state import Journal  # noqa: E402

SEARCHES = {"static": (["none", "skip", "serial", "parallel", "lora"], "serial"),
            "mixture": (["none", "skip", "serial", "parallel", "lora", "mixture"], "mixture")}
SIZES = {"serial": [16, 64], "parallel": [16, 64], "lora": [4, 16], "mixture": [16, 64]}
LR = [3e-4, 3e-3]


def search_config(a: argparse.Namespace, name: str) -> dict[str, Any]:
    types, baseline = SEARCHES[name]
    work = Path(a.work_dir)
    overrides = {"data.init_args.data_dir": a.data_dir, "model.init_args.cache_dir": str(work / "cache"),
                 "trainer.accelerator": a.accelerator}
    if a.cf_dir:
        overrides.update({"model.init_args.injection.sasrec": str(Path(a.cf_dir) / "sasrec.safetensors"),
                          "model.init_args.injection.lightgcn": str(Path(a.cf_dir) / "lightgcn.safetensors")})
    else:
        overrides.update({"model.init_args.injection.mode": "none", "model.init_args.injection.residual": False,
                          "model.init_args.injection.sasrec": None, "model.init_args.injection.lightgcn": None})
    return {
        "base_config": a.base_config, "out_dir": str(work / name), "trials": a.trials,
        "parallel": a.parallel, "seed": 0, "method": "bo", "init_trials": a.init_trials, "metric": a.metric,
        "multi_objective": True,
        "costs": ["seconds_per_epoch", "trainable_params"], "share_cache": True,
        "overrides": overrides,
        "space": {"types": types, "sizes": {t: SIZES[t] for t in types if t in SIZES}, "lr": LR},
        "budget": {"epochs": a.epochs},
        "early_stopping": {"percentile": 50, "grace_epochs": 1, "min_trials": 3, "reference": a.reference_floor},
        "rerun": {"top_k": 1, "seeds": a.seeds, "baseline": baseline, "epochs": a.rerun_epochs,
                  "prefer": a.prefer, "tolerance": a.tolerance, "knob_control": a.knob_control},
        "refit": {"epochs": a.rerun_epochs or a.epochs},
    }


def journal_counts(out_dir: Path) -> dict[str, int]:
    journal = Journal(out_dir / "trials.jsonl")
    return {"search_trials": len(journal.search()), "reruns": len(journal.reruns())}


def per_user_scores(trial_dir: Path, data_dir: str, accelerator: str = "cpu") -> dict[str, np.ndarray]:
    """Per-user NDCG@10 on validation and test of a trial's best checkpoint (``val``, ``test``), and of its
    language-model path alone (``val_lm``, ``test_lm``; the same as the fused score without SASRec's residual)."""
    from darec.data.datamodules.sequence import SequenceDataModule
    from darec.modules.darec import DARec

    ckpt = sorted((trial_dir / "checkpoints").glob("best-*.ckpt"))
    if not ckpt:
        raise FileNotFoundError(f"no best checkpoint under {trial_dir}/checkpoints")
    device = accelerator_device(accelerator)
    model = DARec.load_from_checkpoint(str(ckpt[-1]), map_location=device).to(device)
    dm = SequenceDataModule(data_dir=data_dir, max_len=model.max_len, eval_batch_size=256)
    dm.setup("fit")
    mats = score_matrices(model, dm)
    lm = lm_only_score_matrices(model, dm) or mats
    out = {split: ndcg10(ranks(m["scores"], m["targets"], m["history"])) for split, m in mats.items()}
    out.update({f"{split}_lm": ndcg10(ranks(m["scores"], m["targets"], m["history"])) for split, m in lm.items()})
    return out


def candidate_runs(out_dir: Path, key: str) -> list[dict[str, Any]]:
    reruns = Journal(out_dir / "trials.jsonl").reruns()
    return sorted((r for (k, _), r in reruns.items() if k == key and r["status"] == "completed"), key=lambda r: r["seed"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data/ml-100k")
    p.add_argument("--cf-dir", default=None, help="directory with sasrec.safetensors and lightgcn.safetensors; "
                   "without it injection is off")
    p.add_argument("--base-config", default=str(ROOT / "configs" / "darec_ml100k.yaml"), help="the DARec fit config")
    p.add_argument("--trials", type=int, default=8, help="search trials per search")
    p.add_argument("--init-trials", type=int, default=4, help="quasi-random trials before BO")
    p.add_argument("--epochs", type=int, default=2, help="epochs per trial (and per fresh-seed re-run without --rerun-epochs)")
    p.add_argument("--rerun-epochs", type=int, default=None, help="max epochs of each fresh-seed re-run and the refit "
                   "(full training: the base config's early stopping ends it); default --epochs")
    p.add_argument("--metric", default="val/ndcg@10", choices=["val/ndcg@10", "val/lm_ndcg@10"],
                   help="what the searches score trials by (and pick checkpoints by): the fused score, or the "
                        "language-model path alone; the comparisons report both")
    p.add_argument("--prefer", default="quality", choices=["quality", "cost"], help="which Pareto point each search "
                   "re-runs as its winner: the best search value, or the cheapest (training seconds per epoch) within "
                   "--tolerance of it")
    p.add_argument("--tolerance", type=float, default=0.005, help="with --prefer cost: NDCG@10 below the best search value "
                   "a Pareto point may lie")
    p.add_argument("--knob-control", action="store_true", help="also re-run uniform serial at each winner's searched "
                   "knobs (learning rate) on the same fresh seeds, and compare the winner with it")
    p.add_argument("--reference-floor", type=float, default=None, help="early_stopping.reference: train the uniform "
                   "baseline at the search budget first, beside the first trials, and stop any trial below this fraction "
                   "of its best so far at the same epoch (e.g. 0.9); default: no reference run")
    p.add_argument("--seeds", type=int, default=3, help="fresh seeds per re-run")
    p.add_argument("--parallel", type=int, default=2, help="trials at once (each a 1-thread process)")
    p.add_argument("--accelerator", default="cpu", choices=ACCELERATORS, help="where trials train and re-runs are scored")
    p.add_argument("--no-refit", action="store_true", help="skip the refit of the static winner (the re-runs' test "
                   "figures are reported either way)")
    p.add_argument("--searches", nargs="+", default=list(SEARCHES), choices=list(SEARCHES))
    p.add_argument("--resume", action="store_true", help="continue the searches in --work-dir")
    p.add_argument("--search-only", action="store_true", help="run the searches (and re-runs, refit) and stop: run "
                   "one process per search at once with --searches, then all of them with --resume for the report")
    p.add_argument("--note", default=None, help="how the run was done (stored in the JSON), e.g. the earlier commands")
    p.add_argument("--darec-json", default=str(ROOT / "benchmarks" / "darec_ml100k.json"), help="SASRec's test figures")
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / "_work" / "search_ml100k"))
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["OMP_NUM_THREADS"] = "1"  # each trial process: one thread, `parallel` of them on the cores
    import torch

    from darec.search import config_from_dict, run_search

    work = Path(a.work_dir)
    if not a.resume and not a.search_only and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    found = {name: journal_counts(work / name) for name in a.searches}
    machine_at_start = machine()  # the load average before the searches start; the end's is added at the end
    print(f"finished before this start (trials.jsonl): {found}", flush=True)
    t0 = time.time()
    outcomes = {}
    for name in a.searches:
        print(f"== search {name}: types {SEARCHES[name][0]}, baseline uniform {SEARCHES[name][1]}", flush=True)
        cfg = config_from_dict(search_config(a, name))
        outcomes[name] = run_search(cfg, resume=a.resume or (work / name / "search.json").is_file(),
                                    refit=name == "static" and not a.no_refit, progress=True)
    search_wall = time.time() - t0
    if a.search_only:
        print(f"searches {a.searches} done in {search_wall / 60:.1f} min; the report needs every search (--resume)")
        return {}

    torch.set_num_threads(2)
    scored: dict[str, dict[str, Any]] = {}
    pairs: list[tuple[str, str]] = []  # (model, reference) beyond "every candidate - uniform_serial"
    for name, out in outcomes.items():  # the winner and the baseline of each search, on the fresh seeds
        labelled = [(f"{name}_winner", out.best), (f"uniform_{SEARCHES[name][1]}", out.uniform)]
        if out.knob_control:
            labelled.append((f"uniform_{SEARCHES[name][1]}_at_{name}_winner_knobs", out.knob_control))
            pairs.append((f"{name}_winner", labelled[-1][0]))
        for label, stats in labelled:
            runs = candidate_runs(out.out_dir, stats.candidate.key)
            users = [per_user_scores(Path(r["trial_dir"]), a.data_dir, a.accelerator) for r in runs]
            scored[label] = {"adapters": list(stats.candidate.assignment), "knobs": dict(stats.candidate.knobs),
                             "label": stats.candidate.label(), "seeds": [r["seed"] for r in runs],
                             "val_ndcg@10": [float(u["val"].mean()) for u in users],
                             "test_ndcg@10": [float(u["test"].mean()) for u in users],
                             "val_lm_ndcg@10": [float(u["val_lm"].mean()) for u in users],
                             "test_lm_ndcg@10": [float(u["test_lm"].mean()) for u in users],
                             "seconds_per_epoch": stats.fresh_seconds_per_epoch, "trainable_params": stats.trainable_params,
                             "_val_users": np.mean([u["val"] for u in users], 0),
                             "_val_lm_users": np.mean([u["val_lm"] for u in users], 0)}
    comparisons = {}
    pairs = [(label, "uniform_serial") for label in scored if label != "uniform_serial"] + pairs
    for label, ref in pairs:
        s, base = scored[label], scored[ref]
        ratio = s["seconds_per_epoch"] / base["seconds_per_epoch"] if s["seconds_per_epoch"] and base["seconds_per_epoch"] else None
        row: dict[str, Any] = {"seconds_per_epoch_ratio": ratio}
        # the target reads the fused score (DARec's validation NDCG@10); the language-model path alone is reported beside it
        for key, suffix in (("val_ndcg@10", ""), ("val_lm_ndcg@10", "_lm_path")):
            ci = paired_bootstrap(s["_" + key.replace("_ndcg@10", "_users")] - base["_" + key.replace("_ndcg@10", "_users")])
            low, high = ci["bootstrap_95ci"]
            row.update({key: ci, "beats" + suffix: low > 0,
                        "matches_at_0.7x_seconds" + suffix: low <= 0 <= high and ratio is not None and ratio <= 0.7})
        comparisons[f"{label} - {ref}"] = row
    for s in scored.values():
        s.pop("_val_users")
        s.pop("_val_lm_users")
        for k in ("val_ndcg@10", "test_ndcg@10", "val_lm_ndcg@10", "test_lm_ndcg@10"):
            s[k + "_mean"] = float(np.mean(s[k]))
    sasrec = None
    if Path(a.darec_json).is_file():
        models = json.loads(Path(a.darec_json).read_text())["models"]
        sasrec = {k: models["sasrec"][k] for k in ("test_ndcg@10_mean", "test_ndcg@10_std")}
        sasrec["source"] = str(Path(a.darec_json).relative_to(ROOT)) + " (3 seeds, converged)"
    searches = {}
    for name, out in outcomes.items():
        summary = json.loads((out.out_dir / "summary.json").read_text())
        records = sorted(out.records.values(), key=lambda r: r["trial"])
        searches[name] = {
            "types": SEARCHES[name][0], "trials": len(records), "completed": summary["completed"],
            "stopped_early": summary["stopped_early"], "epochs_trained": summary["epochs_trained"],
            "diagnostics": summary["diagnostics"],
            "trial_table": [{"trial": r["trial"], "adapters": r["adapters"], "knobs": r["knobs"], "val_ndcg@10": r["ndcg@10"],
                             "epochs": r.get("epochs"), "stopped": r.get("stopped"), "seconds_per_epoch": r.get("seconds_per_epoch"),
                             "trainable_params": r["trainable_params"], "status": r["status"]} for r in records],
            "pareto": [c.to_json() for c in out.pareto], "winner": out.best.to_json(), "baseline": out.uniform.to_json(),
            "refit": out.refit, "reference": summary.get("reference"),
            "trained_far_enough": trained_far_enough(records, out.uniform.mean),
        }
        for plot in ("trace.png", "choices.png", "pareto.png"):
            if (out.out_dir / plot).is_file():
                shutil.copy(out.out_dir / plot, Path(a.out).with_name(f"{Path(a.out).stem}_{name}_{plot}"))
    static = comparisons.get("static_winner - uniform_serial")
    result = {
        "benchmark": "darec search on ml-100k (MiniLM, CPU): per-layer adapter type and size plus the learning rate by Ax "
                     "BO with early stopping and cost objectives; winners against uniform serial on fresh seeds",
        "machine": machine_at_start, "command": command("benchmarks/search_ml100k.py", argv), "git": git_commit((a.out, *Path(a.out).parent.glob(f"{Path(a.out).stem}_*.png"))),
        "budget": {"trials_per_search": a.trials, "init_trials": a.init_trials, "epochs": a.epochs,
                   "rerun_epochs": a.rerun_epochs, "fresh_seeds": a.seeds, "parallel": a.parallel, "threads_per_trial": 1,
                   "accelerator": a.accelerator},
        "note": a.note,
        "resume": {"resumed": a.resume, "found_at_start": found,
                   "repeated_trials": {n: _repeats(work / n) for n in a.searches}},
        "searches": searches, "candidates": scored, "comparisons": comparisons, "sasrec": sasrec,
        "target": "static winner beats uniform serial on fresh seeds (paired 95% CI on validation NDCG@10 above 0), or "
                  "matches it within the CI at <= 0.7x its training seconds per epoch",
        "target_met": None if static is None else bool(static["beats"] or static["matches_at_0.7x_seconds"]),
        "target_met_on_the_language_model_path": None if static is None else bool(
            static["beats_lm_path"] or static["matches_at_0.7x_seconds_lm_path"]),
        "metric": a.metric,
        "search_and_reruns_wall_s": search_wall, "wall_s": time.time() - t0,
    }
    result["machine"]["load_average_1_5_15_end"] = [round(x, 2) for x in os.getloadavg()]
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    _print(result)
    print(f"wrote {a.out}")
    return result


def trained_far_enough(records: list[dict[str, Any]], converged: float | None) -> dict[str, Any]:
    """Issue 14's first target: every completed trial reaches 0.9x the converged validation value (the search's metric)
    of the uniform baseline (its fresh-seed re-runs' mean), or was stopped early as clearly worse."""
    if converged is None:
        return {"uniform_converged": None}
    full = [r for r in records if r["status"] == "completed" and not r.get("pruned")]
    short = [r["trial"] for r in full if r["ndcg@10"] < 0.9 * converged]
    return {"uniform_converged": converged, "floor": 0.9 * converged, "completed_without_stop": len(full),
            "stopped_early": sum(bool(r.get("pruned")) for r in records), "below_floor": short, "met": not short}


def _repeats(out_dir: Path) -> int:
    """Finished trials, re-runs or reference runs that the journal holds more than once (0 after a correct resume)."""
    journal = Journal(out_dir / "trials.jsonl")
    return len(journal.records) - len(journal.search()) - len(journal.reruns()) - (journal.reference() is not None)


def _print(result: dict[str, Any]) -> None:
    for name, s in result["searches"].items():
        d = s["diagnostics"]
        loo = d.get("surrogate_loo") or {}
        print(f"\nsearch {name}: {s['trials']} trials, {s['stopped_early']} stopped early, {s['epochs_trained']} epochs trained; "
              f"surrogate LOO MSE / constant {loo.get('mse_ratio')}; repeated arms {d['arms']['repeated']}")
        if s.get("reference"):
            ref = s["reference"]
            print(f"  reference run (uniform at the search budget): {' '.join(f'{v:.4f}' for v in ref['curve'] or [])}")
        far = s.get("trained_far_enough") or {}
        if far.get("uniform_converged") is not None:
            print(f"  completed trials below 0.9x uniform's converged {far['uniform_converged']:.4f}: {far['below_floor']} "
                  f"({far['completed_without_stop']} completed without a stop, {far['stopped_early']} stopped early)")
        print(f"  {'trial':>5}  {result['metric']:>14}  {'epochs':>6}  {'s/epoch':>7}  {'params':>9}  adapters; knobs")
        for r in s["trial_table"]:
            v = f"{r['val_ndcg@10']:.4f}" if r["val_ndcg@10"] is not None else "failed"
            sec = f"{r['seconds_per_epoch']:.1f}" if r["seconds_per_epoch"] else "-"
            print(f"  {r['trial']:>5}  {v:>14}  {r['epochs'] or 0:>6}  {sec:>7}  {r['trainable_params'] or 0:>9,}  "
                  f"{','.join(r['adapters'])}; {r['knobs']}")
    print(f"\n{'candidate':<18}{'val NDCG@10 (fresh seeds)':>28}{'test NDCG@10':>14}{'LM alone: val':>15}{'test':>8}"
          f"{'s/epoch':>9}{'params':>11}")
    for label, c in result["candidates"].items():
        print(f"{label:<18}{c['val_ndcg@10_mean']:>20.4f} (n={len(c['val_ndcg@10'])}){c['test_ndcg@10_mean']:>14.4f}"
              f"{c['val_lm_ndcg@10_mean']:>15.4f}{c['test_lm_ndcg@10_mean']:>8.4f}"
              f"{c['seconds_per_epoch'] or 0:>9.1f}{c['trainable_params'] or 0:>11,}  {c['label']}")
    if result["sasrec"]:
        print(f"{'SASRec':<18}{'':>28}{result['sasrec']['test_ndcg@10_mean']:>14.4f}")
    refit = result["searches"].get("static", {}).get("refit")
    if refit:
        print(f"refit of the static winner (seed {refit['seed']}): test NDCG@10 {refit['test'].get('test/ndcg@10', float('nan')):.4f}")
    for k, c in result["comparisons"].items():
        ci, lm = c["val_ndcg@10"], c["val_lm_ndcg@10"]
        sec = f", seconds/epoch x{c['seconds_per_epoch_ratio']:.2f}" if c["seconds_per_epoch_ratio"] else ""
        print(f"{k}: val {ci['mean']:+.4f} [{ci['bootstrap_95ci'][0]:+.4f}, {ci['bootstrap_95ci'][1]:+.4f}]; language model "
              f"alone {lm['mean']:+.4f} [{lm['bootstrap_95ci'][0]:+.4f}, {lm['bootstrap_95ci'][1]:+.4f}]{sec}")
    print(f"target met: {result['target_met']} (on the language-model path alone: "
          f"{result['target_met_on_the_language_model_path']}); search metric {result['metric']}; "
          f"wall {result['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
