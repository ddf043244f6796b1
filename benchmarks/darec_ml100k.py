"""DARec against SASRec on ml-100k, with honest controls, several seeds, paired bootstrap over users.

Per seed ``s`` (every model from its shipped config, early stopping on validation NDCG@10, tested once with
its best validation checkpoint; see ``benchmarks/runs.py``):

- SASRec (seed ``s``) and LightGCN (seed ``s``), exported for DARec's knowledge injection;
- DARec with its default configuration (``configs/darec_ml100k.yaml``), injecting that SASRec and LightGCN;
- DARec's language-model path alone: the same DARec checkpoint scored without SASRec's residual score (with
  ``injection.residual_weight: validation`` the language model trains alone, so this is a model in its own right);
  it must carry real signal, at least SASRec's NDCG@10;
- control 1, a 2-seed SASRec ensemble: SASRec ``s`` plus SASRec ``s + 100``, scores summed (DARec's residual
  adds SASRec's score, so it is partly an ensemble);
- control 2, SASRec plus a frozen-text similarity: ``score + w * cos(mean of the last k history items' frozen
  MiniLM vectors, item vector)``, with ``w`` and ``k`` chosen per seed on validation.

SASRec's history length is tuned first on seed 0's validation split (``--sasrec-lens``); the best length is
used for every seed (``--tune-only`` stops there and writes just the tuning). ``--sasrec-patience`` sets SASRec's early-stopping patience (default: the shipped config's, 25;
with 11, most seeds stop on a plateau and then miss 0.01-0.03 test NDCG@10). Run names carry the patience, so runs
at another patience are never reused by mistake. ``--darec-patience`` does the same for DARec's own early stopping
(default: the shipped config's; a DARec run's name is ``darec_p<its patience>_sasL<SASRec's length>p<SASRec's patience>_s<seed>``), and
``--darec-lr`` for its learning rate (named ``darec_p3_lr0.00036_...``) and ``--darec-adapters`` for its per-layer
adapters (named ``darec_p3_adskip-skip-serial64-...``) and ``--darec-max-len`` for its history length (model and
windows, named ``darec_p3_L100_...``), and ``--darec-set KEY=VALUE ...`` for any other key under ``model.init_args``
(dotted, YAML values, e.g. ``dropout=0.3``; named ``darec_p3_set-dropout0.3_...``), or under the data module's
``init_args`` with a ``data.`` prefix (e.g. ``data.stride=25``, named ``darec_p3_set-stride25_...``); any of them is compared with DARec
at the shipped settings. Per-user
test NDCG@10 is averaged over seeds and every comparison is paired over users with a bootstrap 95% CI; with several
seeds, also with a bootstrap that resamples the seeds as well as the users (``seed_user_95ci``), since one run's figure
varies with the epoch that validation selects (``epoch_curves.py``), which resampling users leaves out. Also
reported: test NDCG@10 by history-length and target-popularity bucket.

    python benchmarks/darec_ml100k.py [--seeds 0 1 2] [--jobs 2] [--threads 1] [--sasrec-lens 50 100 200] [--sasrec-patience P]
                                      [--darec-patience P] [--darec-lr LR] [--darec-adapters A,B,...] [--darec-max-len N]
                                      [--darec-set KEY=VALUE ...] [--tune-only]
                                      [--accelerator cpu|gpu]

With ``--accelerator gpu`` every run trains and is scored on the first CUDA device (``--jobs`` runs share it).

Runs go to ``--work-dir`` and are reused, so an interrupted benchmark resumes. Prints tables and writes
``benchmarks/darec_ml100k.json`` (machine, command, commit).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import comma_list, command, git_commit, interval, machine, paired_comparison, print_targets  # noqa: E402
from darec.search.trial import set_dotted  # noqa: E402
from runs import (ACCELERATORS, Run, RunSpec, accelerator_device, converged_darec_name, load, ndcg10,  # noqa: E402
                  run_all, sasrec_name, sasrec_spec, shipped_darec_patience, shipped_sasrec_patience, target_popularity_groups,
                  training_popularity)

TEXT_K = (1, 3, 10)
TEXT_W = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
TUNING_FIELDS = ("best_val_ndcg@10", "test_ndcg@10", "epochs_run", "fit_s", "stopped_by", "stopped_by_time", "torch_threads")


Extra = tuple[tuple[str, Any], ...]  # (dotted key under model.init_args, value) pairs, sorted
Setting = tuple[int, float | None, list[str] | None, int | None, Extra]  # DARec's (patience, lr, adapters, max_len,
# other keys); None / () = the shipped config's


def parse_set(items: list[str]) -> Extra:
    """``KEY=VALUE`` pairs of ``--darec-set`` (dotted keys under ``model.init_args``, or under ``data.init_args``
    with a ``data.`` prefix; YAML values), sorted by key."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--darec-set takes KEY=VALUE (e.g. dropout=0.3, losses.lambda_hard=0), got {item!r}")
        out[key] = yaml.safe_load(value)
    return tuple(sorted(out.items()))


def nested(extra: Extra) -> dict[str, Any]:
    """``(("losses.lambda_hard", 0),)`` -> ``{"losses": {"lambda_hard": 0}}``."""
    out: dict[str, Any] = {}
    for key, value in extra:
        set_dotted(out, key, value)
    return out


def model_and_data(extra: Extra) -> tuple[dict[str, Any], dict[str, Any]]:
    """``extra``'s keys under ``model.init_args`` and, without their ``data.`` prefix, under ``data.init_args``."""
    return (nested(tuple((k, v) for k, v in extra if not k.startswith("data."))),
            nested(tuple((k.removeprefix("data."), v) for k, v in extra if k.startswith("data."))))


def overrides(darec: Setting) -> Extra:
    """The model keys ``darec`` sets away from the shipped config, dotted, in :data:`Setting` order."""
    _, lr, adapters, max_len, extra = darec
    return tuple((k, v) for k, v in (("lr", lr), ("adapters", adapters), ("max_len", max_len)) if v is not None) + extra


def specs(seeds: list[int], sasrec_len: int, sasrec_patience: int, darec: Setting) -> list[RunSpec]:
    patience, max_len = darec[0], darec[3]
    keys = overrides(darec)
    model, data_keys = model_and_data(keys)
    data = {} if max_len is None else {"max_len": max_len, "stride": max_len}
    data.update(data_keys)
    out = []
    for s in seeds:
        out += [sasrec_spec(sasrec_len, s, sasrec_patience), sasrec_spec(sasrec_len, s + 100, sasrec_patience),
                RunSpec(f"lightgcn_s{s}", "lightgcn", s),
                RunSpec(converged_darec_name(s, sasrec_len, sasrec_patience, *darec), "darec", s, model, data,
                        trainer={"patience": patience},
                        cf_from=sasrec_name(sasrec_len, s, sasrec_patience), lightgcn_from=f"lightgcn_s{s}")]
    return out


def text_vectors(data_dir: str, cache_dir: str, device: torch.device = torch.device("cpu")) -> np.ndarray:
    """Frozen MiniLM item vectors (mean over the sentence's tokens with its framing, unit length), row = item id."""
    from darec.data.dataset import PreparedData
    from darec.modules.item_encoder import frozen_text_vectors

    d = PreparedData(data_dir)
    return frozen_text_vectors(d.sentences, cache_dir=str(Path(cache_dir) / "tokens"), text_hash=d.text_hash,
                               device=device).numpy()


def text_similarity(vec: np.ndarray, history: list[np.ndarray], k: int) -> np.ndarray:
    """[U, N+1]: cosine between each item and the mean of the user's last ``k`` history items (frozen text)."""
    users = np.stack([vec[h[-k:]].mean(0) if len(h) else np.zeros(vec.shape[1], np.float32) for h in history])
    users /= np.linalg.norm(users, axis=1, keepdims=True).clip(1e-9)
    return users @ vec.T


def text_fusion(sas: Run, vec: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Test scores of SASRec + w * text similarity, ``w`` and ``k`` chosen on validation NDCG@10."""
    best = (-1.0, 0.0, 1)
    scale = float(np.nanstd(np.where(np.isfinite(sas.scores["val"]), sas.scores["val"], np.nan)))
    for k in TEXT_K:
        sim = text_similarity(vec, sas.history["val"], k)
        for w in TEXT_W:
            v = float(ndcg10(sas.ranks("val", sas.scores["val"] + w * scale * sim)).mean())
            if v > best[0]:
                best = (v, w, k)
    _, w, k = best
    test = sas.scores["test"] + w * scale * text_similarity(vec, sas.history["test"], k)
    return test, {"w": w, "k": k, "score_std": scale, "val_ndcg@10": best[0]}


def buckets(data_dir: str, history: list[np.ndarray], targets: np.ndarray) -> dict[str, tuple[np.ndarray, list[str]]]:
    from darec.evaluation.metrics import history_length_buckets

    g_len, l_len = history_length_buckets(torch.tensor([len(h) for h in history]))
    return {"history_length": (g_len.numpy(), l_len),
            "target_popularity": target_popularity_groups(*training_popularity(data_dir), targets)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data/ml-100k")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sasrec-lens", type=int, nargs="+", default=[50, 100, 200], help="SASRec history lengths tuned on seed 0's validation")
    p.add_argument("--sasrec-patience", type=int, default=None,
                   help="SASRec's early-stopping patience (default: the shipped config's); DARec injects these runs")
    p.add_argument("--darec-patience", type=int, default=None,
                   help="DARec's early-stopping patience on val/lm_ndcg@10 (default: the shipped config's)")
    p.add_argument("--darec-lr", type=float, default=None,
                   help="DARec's learning rate (default: the shipped config's); the run names carry it, and the JSON "
                        "adds the paired comparison with DARec at the shipped rate")
    p.add_argument("--darec-adapters", type=comma_list, default=None,
                   help="DARec's per-layer adapters, comma-separated (e.g. skip,skip,serial:64,skip,serial:16,none; "
                        "default: the shipped config's); named and compared like --darec-lr")
    p.add_argument("--darec-max-len", type=int, default=None,
                   help="DARec's history length (model and window length, stride the same; default: the shipped config's, "
                        "50); named _L<N> and compared like --darec-lr")
    p.add_argument("--darec-set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="other DARec settings: dotted keys under model.init_args with YAML values (e.g. dropout=0.3 "
                        "losses.lambda_hard=0), or under the data module's init_args with a data. prefix (e.g. "
                        "data.stride=25); named _set-<key><value> and compared like --darec-lr")
    p.add_argument("--compare-darec-patience", type=int, default=None,
                   help="also compare DARec against its runs at this patience (already trained), on validation and test")
    p.add_argument("--tune-only", action="store_true",
                   help="stop after tuning SASRec's history length; write only the tuning (lengths, runs, choice) to --out")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (jobs x threads should not exceed the cores)")
    p.add_argument("--accelerator", default="cpu", choices=ACCELERATORS, help="where every run trains and is scored")
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / "_work" / "darec_ml100k"))
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    work = Path(a.work_dir)
    pat = a.sasrec_patience if a.sasrec_patience is not None else shipped_sasrec_patience()
    tune = [sasrec_spec(n, a.seeds[0], pat) for n in a.sasrec_lens]
    run_all(tune, work, a.data_dir, a.jobs, a.threads, a.accelerator)
    tuning_metas = {n: load(work, sasrec_name(n, a.seeds[0], pat)).meta for n in a.sasrec_lens}
    tuned = {n: m["best_val_ndcg@10"] for n, m in tuning_metas.items()}
    sas_len = max(tuned, key=tuned.get)
    print(f"SASRec history length by validation NDCG@10 (seed {a.seeds[0]}): {tuned} -> {sas_len}", flush=True)
    tuning_runs = {n: {k: m.get(k) for k in TUNING_FIELDS} for n, m in tuning_metas.items()}
    if a.tune_only:
        result = {"benchmark": "SASRec history length on ml-100k, chosen by validation NDCG@10 (test reported, never used)",
                  "machine": machine(), "command": command("benchmarks/darec_ml100k.py", argv), "git": git_commit((a.out,)),
                  "accelerator": a.accelerator, "seed": a.seeds[0], "sasrec_patience": pat,
                  "sasrec_len_tuning_val_ndcg@10": tuned, "sasrec_len": sas_len, "runs": tuning_runs}
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
        _print_tuning(result)
        print(f"wrote {a.out}")
        return result
    dpat = a.darec_patience if a.darec_patience is not None else shipped_darec_patience()
    lr, adapters, max_len, extra = a.darec_lr, a.darec_adapters, a.darec_max_len, parse_set(a.darec_set)
    setting: Setting = (dpat, lr, adapters, max_len, extra)
    shipped: Setting = (dpat, None, None, None, ())
    run_all(specs(a.seeds, sas_len, pat, setting), work, a.data_dir, a.jobs, a.threads, a.accelerator)
    if setting != shipped:  # DARec at the shipped settings, which the comparison below reads
        run_all(specs(a.seeds, sas_len, pat, shipped), work, a.data_dir, a.jobs, a.threads, a.accelerator)

    vec = text_vectors(a.data_dir, str(work / "cache"), accelerator_device(a.accelerator))
    per_user: dict[str, list[np.ndarray]] = {}
    details: dict[str, list[dict[str, Any]]] = {}
    for s in a.seeds:
        sas, sas_b = load(work, sasrec_name(sas_len, s, pat)), load(work, sasrec_name(sas_len, s + 100, pat))
        runs = {"sasrec": sas, "lightgcn": load(work, f"lightgcn_s{s}")}
        runs["darec"] = load(work, converged_darec_name(s, sas_len, pat, *setting))
        runs["darec_lm_only"] = load(work, converged_darec_name(s, sas_len, pat, *setting), lm_only=True)
        for name, run in runs.items():
            per_user.setdefault(name, []).append(ndcg10(run.ranks("test")))
            details.setdefault(name, []).append({k: run.meta.get(k) for k in ("fit_s", "epochs_run", "stopped_by", "stopped_by_time",
                                                                               "torch_threads", "best_val_ndcg@10",
                                                                               "test_ndcg@10", "residual_weight")})
        ens = sas.scores["test"] + sas_b.scores["test"]
        per_user.setdefault("sasrec_2seed_ensemble", []).append(ndcg10(sas.ranks("test", ens)))
        fused, chosen = text_fusion(sas, vec)
        per_user.setdefault("sasrec_plus_text", []).append(ndcg10(sas.ranks("test", fused)))
        details.setdefault("sasrec_plus_text", []).append(chosen)
    mean_user = {k: np.mean(v, 0) for k, v in per_user.items()}
    models = {k: {"test_ndcg@10_mean": float(np.mean([x.mean() for x in v])), "test_ndcg@10_std": float(np.std([x.mean() for x in v])),
                  "per_seed": [float(x.mean()) for x in v], "runs": details.get(k)} for k, v in per_user.items()}
    comparisons = {}
    for model, ref in (("darec", "sasrec"), ("darec", "sasrec_2seed_ensemble"), ("darec", "sasrec_plus_text"),
                       ("darec_lm_only", "sasrec"), ("sasrec_2seed_ensemble", "sasrec"), ("sasrec_plus_text", "sasrec")):
        comparisons[f"{model} - {ref}"] = paired_comparison(np.stack(per_user[model]), np.stack(per_user[ref]))
    first = load(work, sasrec_name(sas_len, a.seeds[0], pat))
    groups = buckets(a.data_dir, first.history["test"], first.targets["test"])
    breakdown = {}
    for kind, (g, labels) in groups.items():
        breakdown[kind] = {label: {"users": int((g == i).sum()),
                                   **{m: float(mean_user[m][g == i].mean()) for m in ("darec", "sasrec")}}
                           for i, label in enumerate(labels) if (g == i).any()}
    d = comparisons["darec - sasrec"]
    targets = {
        "darec >= 1.10x sasrec with CI above 0": {"value": d["ratio"], "ci_low": d["bootstrap_95ci"][0],
                                                 "met": d["ratio"] >= 1.10 and d["bootstrap_95ci"][0] > 0},
        "darec ahead of the 2-seed SASRec ensemble": {"diff": comparisons["darec - sasrec_2seed_ensemble"]["mean"],
                                                      "met": comparisons["darec - sasrec_2seed_ensemble"]["bootstrap_95ci"][0] > 0},
        "darec ahead of SASRec + frozen text": {"diff": comparisons["darec - sasrec_plus_text"]["mean"],
                                                "met": comparisons["darec - sasrec_plus_text"]["bootstrap_95ci"][0] > 0},
        "darec's language-model path alone >= sasrec": {"ratio": comparisons["darec_lm_only - sasrec"]["ratio"],
                                                        "met": comparisons["darec_lm_only - sasrec"]["ratio"] >= 1.0},
        # converged within the budget: early stopping ended training, not the 30-minute cap of benchmarks/runs.py
        "darec fit <= 30 min per seed, ended by early stopping": {
            "fit_s": [r["fit_s"] for r in details["darec"]],
            "stopped_by_time": [r["stopped_by_time"] for r in details["darec"]],
            "met": all(r["fit_s"] <= 1800 and r["stopped_by_time"] is False for r in details["darec"])},
    }
    if a.compare_darec_patience is not None:
        comparisons[f"darec - darec at patience {a.compare_darec_patience}"] = darec_comparison(
            work, a.seeds, sas_len, pat, setting, (a.compare_darec_patience, *setting[1:]))
    if setting != shipped:
        changed = " and ".join(k for k, _ in overrides(setting))
        comparisons[f"darec - darec at the shipped {changed}"] = darec_comparison(work, a.seeds, sas_len, pat, setting, shipped)
    result = {"benchmark": "DARec vs SASRec on ml-100k (full ranking, leave-one-out, history masked)",
              "machine": machine(), "command": command("benchmarks/darec_ml100k.py", argv), "git": git_commit((a.out,)),
              "accelerator": a.accelerator, "seeds": a.seeds, "sasrec_len_tuning_val_ndcg@10": tuned, "sasrec_len": sas_len, "sasrec_patience": pat,
              "sasrec_len_tuning_runs": tuning_runs, "darec_config": "configs/darec_ml100k.yaml", "darec_patience": dpat, "darec_lr": lr,
              "darec_adapters": adapters, "darec_max_len": max_len, "darec_set": dict(extra),
              "models": models, "comparisons": comparisons, "breakdowns_test_ndcg@10": breakdown, "targets": targets}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    _print(result)
    print(f"wrote {a.out}")
    return result


def darec_comparison(work: Path, seeds: list[int], sasrec_len: int, sasrec_patience: int,
                     setting: Setting, other: Setting) -> dict[str, Any]:
    """DARec at ``setting`` minus DARec at ``other`` (each a :data:`Setting`; same seeds and injected runs),
    paired over users: on validation (what a setting is chosen by), then on test, for the
    fused score and the language model alone."""
    out: dict[str, Any] = {}
    for lm_only in (False, True):
        runs = [[load(work, converged_darec_name(s, sasrec_len, sasrec_patience, *which), lm_only) for s in seeds]
                for which in (setting, other)]
        for split in ("val", "test"):
            mine, theirs = (np.stack([ndcg10(r.ranks(split)) for r in rs]) for rs in runs)
            key = split + ("_lm_only" if lm_only else "")
            out[key] = paired_comparison(mine, theirs)
    out.update(out.pop("test"))  # the test figures also fill the table's diff / CI / ratio columns
    return out


def _print_tuning(r: dict[str, Any]) -> None:
    print(f"\n{'SASRec length':<14}{'val NDCG@10':>12}{'test NDCG@10':>14}{'epochs':>8}{'fit s':>8}  stopped by")
    for n, m in r["runs"].items():
        print(f"{n:<14}{m['best_val_ndcg@10']:>12.4f}{m['test_ndcg@10']:>14.4f}{m['epochs_run']:>8}{m['fit_s']:>8.0f}  {m['stopped_by']}")
    print(f"chosen on validation: {r['sasrec_len']}")


def _comparison_row(c: dict[str, Any]) -> str:
    both = f"   {interval(c['seed_user_95ci'])}" if "seed_user_95ci" in c else ""
    return f"{c['mean']:>+9.4f}   {interval(c['bootstrap_95ci'])}{c['ratio']:>8.3f}{both}"


def _print(r: dict[str, Any]) -> None:
    print(f"\n{'model':<24}{'test NDCG@10':>20}   per seed")
    for name, m in r["models"].items():
        print(f"{name:<24}{m['test_ndcg@10_mean']:>12.4f} ± {m['test_ndcg@10_std']:.4f}   "
              + ", ".join(f"{x:.4f}" for x in m["per_seed"]))
    print(f"\n{'comparison':<46}{'diff':>9}{'95% CI, users':>22}{'ratio':>8}{'95% CI, seeds and users':>26}")
    for name, c in r["comparisons"].items():
        print(f"{name:<46}" + _comparison_row(c))
        for key in ("val", "val_lm_only", "test_lm_only"):
            if key in c:
                print(f"{'  ' + key:<46}" + _comparison_row(c[key]))
    for kind, rows in r["breakdowns_test_ndcg@10"].items():
        print(f"\n{kind:<16}{'users':>7}{'DARec':>9}{'SASRec':>9}")
        for label, v in rows.items():
            print(f"{label:<16}{v['users']:>7}{v['darec']:>9.4f}{v['sasrec']:>9.4f}")
    print()
    print_targets(r["targets"])


if __name__ == "__main__":
    main()
