"""Is the search worth its Bayesian model? Leave-one-out fit of Ax's surrogate against a constant, and repeated arms.

``surrogate_fit`` asks Ax for its own cross-validation (``CrossValidationPlot``: each observed trial predicted by the
model fitted without it) and compares its squared error with the leave-one-out mean's: a surrogate that does not beat
that constant cannot guide the search better than random. ``repeated_arms`` counts proposals after the quasi-random
start that repeat an assignment already tried (BO should not spend trials on them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from darec.search.state import NDCG


def loo_constant_mse(observed: np.ndarray) -> float:
    """Squared error of predicting each value by the mean of the others."""
    n = len(observed)
    if n < 2:
        return float("nan")
    others = (observed.sum() - observed) / (n - 1)
    return float(np.mean((observed - others) ** 2))


def surrogate_fit(client: Any, metric: str = NDCG) -> dict[str, Any]:
    """Ax's leave-one-out predictions for ``metric``: points, R², surrogate MSE, constant MSE and their ratio.

    Values are in Ax's transformed (standardised) space, where the two errors compare directly. Returns
    ``{"error": ...}`` when Ax cannot cross-validate (no model fitted yet: too few trials, or random search).
    """
    try:
        from ax.analysis import CrossValidationPlot

        cards = client.compute_analyses([CrossValidationPlot()], display=False)
    except Exception as err:  # noqa: BLE001 - a diagnostic; the search result stands without it
        return {"error": f"{type(err).__name__}: {err}"}
    frames = [c.df for c in _leaves(cards) if f"Cross Validation for {metric}" in str(getattr(c, "title", ""))]
    frames = [f for f in frames if f is not None and {"observed", "predicted"} <= set(f.columns) and len(f)]
    if not frames:
        texts = [str(getattr(c, "subtitle", "") or getattr(c, "title", "")) for c in _leaves(cards)]
        return {"error": "Ax returned no cross-validation for " + metric + (f": {texts[0][:300]}" if texts else "")}
    df = frames[0]
    obs, pred = df["observed"].to_numpy(float), df["predicted"].to_numpy(float)
    mse = float(np.mean((obs - pred) ** 2))
    const = loo_constant_mse(obs)
    ss_tot = float(np.sum((obs - obs.mean()) ** 2))
    return {"points": int(len(obs)), "r2": 1.0 - float(np.sum((obs - pred) ** 2)) / ss_tot if ss_tot > 0 else None,
            "mse_surrogate": mse, "mse_loo_constant": const, "mse_ratio": mse / const if const > 0 else None,
            "better_than_constant": bool(mse < const)}


def _leaves(cards: Any) -> list[Any]:
    out = []
    for card in cards:
        children = getattr(card, "children", None)
        out.extend(_leaves(children) if children else [card])
    return out


def repeated_arms(records: dict[int, dict[str, Any]], init_trials: int) -> dict[str, Any]:
    """Search trials after the first ``init_trials`` whose assignment (and knobs) an earlier trial already had."""
    seen: set[str] = set()
    repeats = []
    for r in sorted(records.values(), key=lambda r: r["trial"]):
        if r["trial"] >= init_trials and r["candidate_key"] in seen:
            repeats.append(r["trial"])
        seen.add(r["candidate_key"])
    return {"proposed_after_init": sum(r["trial"] >= init_trials for r in records.values()), "repeated": len(repeats),
            "repeated_trials": repeats}
