"""``darec search``: command-line entry point."""

from __future__ import annotations

import argparse

USAGE = "darec search --config configs/search_darec_ml100k.yaml [--resume] [--parallel N] [--refit]"


def search_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="darec search", usage=USAGE,
        description="Bayesian optimisation (Ax) of DARec's adapter type and size per backbone layer, with early "
                    "stopping of clearly worse trials and optional cost objectives; see the README.")
    parser.add_argument("--config", required=True, help="search config YAML (configs/search_darec_ml100k.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue the search saved in out_dir")
    parser.add_argument("--parallel", type=int, default=None, help="trials at once, each in its own process")
    parser.add_argument("--refit", action="store_true", help="retrain the best fully and test it once")
    parser.add_argument("--trials", type=int, default=None, help="override the config's number of trials")
    parser.add_argument("--out-dir", default=None, help="override the config's out_dir")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    from darec.search.config import load_search_config
    from darec.search.run import run_search

    cfg = load_search_config(args.config, parallel=args.parallel, trials=args.trials, out_dir=args.out_dir)
    outcome = run_search(cfg, resume=args.resume, refit=args.refit, progress=not args.no_progress)
    print(outcome.table)
    best, uniform = outcome.best, outcome.uniform
    if uniform.mean is not None:
        print(f"best {best.mean:.4f} ± {best.std:.4f} vs uniform {cfg.rerun.baseline} {uniform.mean:.4f} ± "
              f"{uniform.std:.4f} (validation NDCG@10, {len(best.fresh)} fresh seeds)")
    records = list(outcome.records.values())
    print(f"{len(records)} search trials, {sum(bool(r.get('pruned')) for r in records)} stopped early, "
          f"{sum(r.get('epochs') or 0 for r in records)} epochs trained")
    loo = outcome.diagnostics.get("surrogate_loo") or {}
    if loo.get("mse_ratio") is not None:
        print(f"Ax surrogate, leave-one-out over {loo['points']} trials: squared error {loo['mse_ratio']:.2f}x a constant's; "
              f"repeated assignments proposed: {outcome.diagnostics['arms']['repeated']}")
    if outcome.pareto:
        print(f"Pareto front: {len(outcome.pareto)} point(s), configs under {outcome.out_dir / 'pareto'}")
    if "best_config" in outcome.files:
        print(f"best config: {outcome.files['best_config']}  (darec fit --config {outcome.files['best_config']})")
    if outcome.refit is not None:
        test = outcome.refit["test"]
        print("refit test metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(test.items())))
    print(f"state, trials.jsonl, plots and summary.json in {outcome.out_dir}")
    return 0
