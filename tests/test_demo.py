"""`darec demo`'s output: one time figure everywhere, a plain-text help, a banner, a labelled chart (no training here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from darec.cli.main import HELP, main
from darec.cli.demo import (banner, comparison_figure, default_budgets, CONVERGED_BENCHMARK, CONVERGED_NOTE, DEMO_CONDITIONS,
                            DEMO_MINUTES, DEMO_TIME)

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_one_time_figure_in_readme_help_and_banner(capsys):
    assert DEMO_TIME == f"about {DEMO_MINUTES} minutes on {DEMO_CONDITIONS}"
    # every "... minutes" the README says about the whole demo is this figure
    assert [t.strip() for t in re.findall(r"demo takes (about [\d.]+ minutes on [^.;()]+)", README)] == [DEMO_TIME]
    assert DEMO_TIME in HELP
    with pytest.raises(SystemExit) as done:
        main(["demo", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert DEMO_TIME in text and "``" not in text and "--verbose" in text
    b = default_budgets()
    lines = banner(Path("w"), b["sasrec_epochs"], b["lightgcn_epochs"], b["darec_epochs"], b["darec_batches"], 42)
    assert f"With these budgets it takes {DEMO_TIME}." in lines[-1]


def test_the_quoted_time_is_the_recorded_runs():
    """DEMO_MINUTES is the wall time of the run benchmarks/demo_ml100k.json records, on the CPU DEMO_CONDITIONS names."""
    record = json.loads((ROOT / "benchmarks" / "demo_ml100k.json").read_text())
    assert round(record["wall_s"] / 60) == DEMO_MINUTES
    assert record["demo_args"] == [], "the quoted time is for the default budgets"
    assert record["machine"]["cpu"]["onednn_native_bfloat16"] == ("float32" not in DEMO_CONDITIONS)
    assert record["machine"]["load_average_1_5_15"][0] < 1.0, "timed on unloaded cores"


def test_banner_says_what_runs_and_when_the_figure_does_not_apply():
    lines = banner(Path("/tmp/d"), 1, 1, 1, 3, 7)
    text = "\n".join(lines)
    assert "SASRec, up to 1 epoch " in text and "LightGCN, up to 1 epoch " in text
    assert "DARec (MiniLM backbone, SASRec + LightGCN injected), up to 1 epoch of 3 batches" in text
    assert "residual weight chosen on validation" in text
    assert f"With the default budgets it takes {DEMO_TIME}; these budgets differ." in text
    assert "Seed 7; working directory /tmp/d." in text
    assert "50% of the batches" in "\n".join(banner(Path("d"), 30, 40, 2, 0.5, 42))


def test_chart_labels_both_axes():
    import matplotlib.pyplot as plt

    results = {name: {"test": {"hr@10": 0.1 * k, "ndcg@10": 0.05 * k}} for k, name in enumerate(["Popularity", "SASRec"], 1)}
    fig = comparison_figure(results)
    try:
        ax = fig.axes[0]
        assert ax.get_ylabel() and [t.get_text() for t in ax.get_xticklabels()] == ["Popularity", "SASRec"]
    finally:
        plt.close(fig)


def test_the_note_under_the_table_points_at_a_converged_comparison_and_says_what_it_shows():
    record = json.loads((ROOT / CONVERGED_BENCHMARK).read_text())
    assert CONVERGED_BENCHMARK in CONVERGED_NOTE and len(record["seeds"]) >= 3
    assert f"over {len(record['seeds'])} seeds" in CONVERGED_NOTE
    comparison = record["comparisons"]["darec - sasrec"]
    low, high = comparison["seed_user_95ci"]
    # the note's words match the committed comparison: its ratio, and where the seeds-and-users CI lies
    assert f"{comparison['ratio']:.2f}x" in CONVERGED_NOTE
    assert ("lies above 0" in CONVERGED_NOTE) == (low > 0) and ("crosses 0" in CONVERGED_NOTE) == (low <= 0 <= high)
    ensemble = record["comparisons"]["darec - sasrec_2seed_ensemble"]
    assert f"ensemble ({ensemble['ratio']:.2f}x)" in CONVERGED_NOTE and ("does not beat" in CONVERGED_NOTE) == (
        ensemble["bootstrap_95ci"][0] <= 0)


def test_the_demos_models_use_the_shipped_configs_adapters_learning_rate_weight_average_smoothing_and_mask():
    import yaml

    from darec.cli.demo import DAREC_ADAPTERS, DAREC_EMA, DAREC_LABEL_SMOOTHING, DAREC_LR, MASK_SEEN

    shipped = yaml.safe_load((ROOT / "configs" / "darec_ml100k.yaml").read_text())
    model = shipped["model"]["init_args"]
    assert list(DAREC_ADAPTERS) == model["adapters"] and DAREC_LR == model["lr"]
    assert DAREC_EMA == model["ema"] and DAREC_LABEL_SMOOTHING == model["losses"]["label_smoothing"]
    assert model["backbone"]["autocast"] == "auto" and model["injection"]["residual"] is True
    sasrec = yaml.safe_load((ROOT / "configs" / "sasrec_ml100k.yaml").read_text())
    assert MASK_SEEN == model["losses"]["mask_seen"] == sasrec["model"]["init_args"]["mask_seen"]
