"""Early stopping of search trials (multi-fidelity): the percentile rule, the trial callback that obeys it in a real
fit, and a search whose trials train epoch by epoch: what is stopped, what Ax is told, and resume."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from darec.search import run_search
from darec.search.report import TrialReport
from darec.search.state import Journal
from darec.errors import ConfigError
from darec.search.stopping import EarlyStoppingConfig, Thresholds, decide, thresholds, write_thresholds

from test_search_bo import PLANTED, Planted, _cfg, true_value

RULE = EarlyStoppingConfig(percentile=50, grace_epochs=1, min_trials=3)


def test_thresholds_are_percentiles_of_best_so_far_at_each_epoch():
    curves = [[0.1, 0.3, 0.2], [0.2, 0.1], [0.05, 0.4, 0.5], [0.3]]
    table = thresholds(curves, RULE)
    # best so far: [.1 .3 .3], [.2 .2], [.05 .4 .5], [.3]
    assert table[1] == {"value": pytest.approx(np.percentile([0.1, 0.2, 0.05, 0.3], 50)), "trials": 4}
    assert table[2] == {"value": pytest.approx(np.percentile([0.3, 0.2, 0.4], 50)), "trials": 3}
    assert 3 not in table  # only 2 trials reached epoch 3 (min_trials 3)
    assert thresholds(curves, EarlyStoppingConfig(percentile=None)) == {}
    assert thresholds(curves, EarlyStoppingConfig(percentile=25, min_trials=2))[3]["value"] == pytest.approx(
        np.percentile([0.3, 0.5], 25))


def test_decide_prunes_below_the_threshold_only_where_the_rule_allows():
    table = {1: {"value": 0.2, "trials": 4}, 2: {"value": 0.3, "trials": 3}}
    judge = Thresholds(RULE, table)
    m = "val/ndcg@10"
    assert decide(judge, [0.1], max_epochs=3, metric=m).startswith("pruned after epoch 1: best val/ndcg@10 0.1000 below 0.2000")
    assert decide(judge, [0.25], max_epochs=3, metric=m) is None  # above
    assert decide(judge, [0.1, 0.29], max_epochs=3, metric=m) is not None  # best so far 0.29 < 0.3
    assert decide(judge, [0.31, 0.1], max_epochs=3, metric=m) is None  # best so far counts, not the last value
    assert decide(judge, [0.1], max_epochs=1, metric=m) is None  # the last epoch: stopping saves nothing
    assert decide(Thresholds(EarlyStoppingConfig(grace_epochs=2), table), [0.1], max_epochs=3, metric=m) is None  # grace
    assert decide(Thresholds(RULE, {2: table[2]}), [0.1], max_epochs=3, metric=m) is None  # too few trials at epoch 1


def test_the_reference_floor_judges_a_trial_with_no_other_trials_and_waits_for_the_reference():
    rule = EarlyStoppingConfig(percentile=None, grace_epochs=1, reference=0.9)
    reference = [0.10, 0.20, 0.15]  # best so far: 0.10, 0.20, 0.20
    m = "val/ndcg@10"
    assert decide(Thresholds(rule, {}, reference), [0.08], max_epochs=4, metric=m) == (
        "pruned after epoch 1: best val/ndcg@10 by epoch 1 0.0800 below 0.0900, 0.9x the reference run's (the uniform "
        "baseline) by that epoch")
    assert decide(Thresholds(rule, {}, reference), [0.091], max_epochs=4, metric=m) is None  # above the floor
    assert decide(Thresholds(rule, {}, reference), [0.091, 0.17], max_epochs=4, metric=m).startswith(
        "pruned after epoch 2: best val/ndcg@10 by epoch 2 0.1700 below 0.1800")
    assert decide(Thresholds(rule, {}, reference), [0.091, 0.17, 0.19], max_epochs=4, metric=m) is None  # 0.19 >= 0.18
    # the reference has reached epoch 1 only: a trial at epoch 2 is judged at epoch 1, by its best by then
    assert decide(Thresholds(rule, {}, reference[:1]), [0.091, 0.05], max_epochs=4, metric=m) is None
    assert decide(Thresholds(rule, {}, reference[:1]), [0.05, 0.5], max_epochs=4, metric=m).startswith(
        "pruned after epoch 2: best val/ndcg@10 by epoch 1 0.0500")
    assert decide(Thresholds(rule, {}, []), [0.0], max_epochs=4, metric=m) is None  # no reference epoch yet
    assert decide(Thresholds(rule, {}, reference), [0.0], max_epochs=1, metric=m) is None  # the last epoch
    assert decide(Thresholds(EarlyStoppingConfig(reference=0.9, grace_epochs=2), {}, reference), [0.0], 4, m) is None
    off = EarlyStoppingConfig(percentile=None)  # no reference fraction: a reference curve is ignored
    assert decide(Thresholds(off, {}, reference), [0.0], max_epochs=4, metric=m) is None
    # the floor and the percentile rule together: either stops
    both = Thresholds(EarlyStoppingConfig(percentile=50, min_trials=1, reference=0.5), {1: {"value": 0.3, "trials": 5}},
                      reference)
    assert "percentile" in decide(both, [0.2], max_epochs=4, metric=m)
    assert "reference" in decide(both, [0.04], max_epochs=4, metric=m)


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, True, "0.9"])
def test_a_bad_reference_fraction_is_refused(bad):
    with pytest.raises(ConfigError, match="early_stopping.reference must be a fraction"):
        EarlyStoppingConfig(reference=bad).validate()


class _Constant(L.LightningModule):
    """Trains a scalar; validation NDCG@10 is a fixed number per epoch."""

    def __init__(self, curve, lm_curve=None):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.curve = curve
        self.lm_curve = lm_curve  # also logged as the language model's own NDCG@10

    def training_step(self, batch, batch_idx):
        return (self.w - 1.0) ** 2 + 0 * batch[0].sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/ndcg@10", self.curve[self.current_epoch])
        if self.lm_curve:
            self.log("val/lm_ndcg@10", self.lm_curve[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path, curve, stop_file, lm_curve=None, metric="val/ndcg@10"):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 1)), batch_size=2)
    report = TrialReport(str(tmp_path / "result.json"), stop_file=stop_file, metric=metric)
    trainer = L.Trainer(max_epochs=len(curve), logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[report])
    trainer.fit(_Constant(curve, lm_curve), train_dataloaders=data, val_dataloaders=data)
    return json.loads((tmp_path / "result.json").read_text()), trainer


def test_a_real_fit_stops_when_the_rule_says_and_reports_why(tmp_path):
    stop = tmp_path / "stopping.json"
    write_thresholds(stop, [[0.3, 0.4, 0.5]] * 3, RULE)  # three finished trials at 0.3 after one epoch
    report, trainer = _fit(tmp_path, [0.1, 0.2, 0.6], str(stop))
    assert [h["val/ndcg@10"] for h in report["val"]] == pytest.approx([0.1])  # one epoch, then stopped
    assert report["stopped"].startswith("pruned after epoch 1") and trainer.current_epoch == 1
    assert len(report["train_s"]) == 1 and report["train_s"][0] > 0
    # the same curve above the thresholds trains every epoch
    good, _ = _fit(tmp_path, [0.35, 0.45, 0.6], str(stop))
    assert len(good["val"]) == 3 and good["stopped"] == "max_epochs reached (3)" and len(good["train_s"]) == 3
    # without a stop file (re-runs and refit) nothing stops early
    free, _ = _fit(tmp_path, [0.1, 0.2, 0.6], None)
    assert len(free["val"]) == 3


def test_the_rule_reads_the_search_metric(tmp_path):
    stop = tmp_path / "stopping.json"
    write_thresholds(stop, [[0.3, 0.4, 0.5]] * 3, RULE)
    fused, lm = [0.35, 0.45, 0.6], [0.1, 0.2, 0.6]  # the fused score is above the thresholds, the language model below
    kept, _ = _fit(tmp_path, fused, str(stop), lm_curve=lm)
    assert len(kept["val"]) == 3
    cut, trainer = _fit(tmp_path, fused, str(stop), lm_curve=lm, metric="val/lm_ndcg@10")
    assert trainer.current_epoch == 1 and cut["stopped"].startswith("pruned after epoch 1: best val/lm_ndcg@10 0.1000")


def _trial_report(path, curve, error=None, metric="val/ndcg@10"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"val": [{"epoch": i, metric: v} for i, v in enumerate(curve)], "stopped": None,
                                "error": error}))


def test_a_first_wave_is_judged_against_the_trials_running_beside_it(tmp_path):
    """Trials started together: none has finished when the others reach epoch 1, so the running ones' reports count."""
    stop = tmp_path / "stopping.json"
    write_thresholds(stop, [], RULE)  # no trial has finished
    trials = tmp_path / "trials"
    for i, curve in enumerate([[0.30], [0.32, 0.40], [0.34]]):  # three trials still running, past epoch 1
        _trial_report(trials / f"trial_{i:04d}" / "result.json", curve)
    _trial_report(trials / "trial_0003" / "result.json", [0.9], error="RuntimeError: CUDA error")  # failed: not counted
    own = trials / "trial_0004"
    own.mkdir()
    report, trainer = _fit(own, [0.1, 0.2, 0.6], str(stop))
    assert trainer.current_epoch == 1
    assert report["stopped"] == ("pruned after epoch 1: best val/ndcg@10 0.1000 below 0.3200, the 50th percentile of "
                                 "3 other trials at that epoch")  # the median of 0.30, 0.32, 0.34; not its own report
    above, _ = _fit(own, [0.33, 0.2, 0.6], str(stop))
    assert len(above["val"]) == 3
    (trials / "trial_0002" / "result.json").unlink()  # two other trials are fewer than min_trials: nothing stops
    few, _ = _fit(own, [0.1, 0.2, 0.6], str(stop))
    assert len(few["val"]) == 3


def test_search_stops_clearly_worse_trials_and_never_the_planted_best(tmp_path):
    epochs = 3
    cfg = _cfg(tmp_path, trials=12, init_trials=4, method="random", budget={"epochs": epochs},
               early_stopping={"percentile": 50, "grace_epochs": 1, "min_trials": 3})
    out = run_search(cfg, objective=Planted(epochs=epochs), num_layers=3, progress=False)
    rows = sorted(out.records.values(), key=lambda r: r["trial"])
    pruned = [r for r in rows if r["pruned"]]
    full = [r for r in rows if not r["pruned"]]
    assert pruned and all(r["epochs"] < epochs and r["stopped"].startswith("pruned") for r in pruned)
    assert all(r["epochs"] == epochs and r["stopped"] == f"max_epochs reached ({epochs})" for r in full)
    assert all(r["epochs"] == len(r["curve"]) for r in rows)
    assert not any(tuple(r["adapters"]) == PLANTED for r in pruned)
    # what was pruned was worse than what ran to the end, in truth
    assert np.mean([true_value(r["adapters"]) for r in pruned]) < np.mean([true_value(r["adapters"]) for r in full])
    summary = json.loads((out.out_dir / "summary.json").read_text())
    assert summary["stopped_early"] == len(pruned)
    assert summary["epochs_trained"] == sum(r["epochs"] for r in rows) < epochs * len(rows)
    # Ax knows them as early-stopped, and a pruned trial is never a candidate for the fresh-seed re-runs
    from ax import Client

    df = Client.load_from_json_file(str(out.out_dir / "ax_state.json")).summarize().set_index("trial_index")
    assert {i for i in df.index if df.loc[i, "trial_status"] == "EARLY_STOPPED"} == {r["trial"] for r in pruned}
    pruned_only = {r["candidate_key"] for r in pruned} - {r["candidate_key"] for r in full}
    assert not {c.candidate.key for c in out.candidates} & pruned_only


def test_resume_keeps_early_stopped_trials_and_repeats_nothing(tmp_path):
    epochs = 3
    cfg = _cfg(tmp_path, trials=9, init_trials=4, method="random", budget={"epochs": epochs})
    first = Planted(epochs=epochs, interrupt_at=7)
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, objective=first, num_layers=3, progress=False)
    journal = tmp_path / "out" / "trials.jsonl"
    before = {r["trial"]: r for r in Journal(journal).records}
    assert sorted(before) == list(range(7)) and any(r["pruned"] for r in before.values())
    stop_before = json.loads((tmp_path / "out" / "stopping.json").read_text())
    second = Planted(epochs=epochs)
    out = run_search(cfg, resume=True, objective=second, num_layers=3, progress=False)
    assert [c[1] for c in second.calls if c[0] == "search"] == [7, 8]  # no finished trial again, pruned ones included
    after = {r["trial"]: r for r in Journal(journal).records if r["phase"] == "search"}
    assert sorted(after) == list(range(9))
    assert all(after[i] == before[i] for i in before)
    assert stop_before["thresholds"]  # the rule was live before the kill and is rebuilt from the journal after it
    from ax import Client

    df = Client.load_from_json_file(str(out.out_dir / "ax_state.json")).summarize().set_index("trial_index")
    assert {i for i in df.index if df.loc[i, "trial_status"] == "EARLY_STOPPED"} == {i for i, r in after.items() if r["pruned"]}
    assert set(df["trial_status"]) <= {"COMPLETED", "EARLY_STOPPED"}


def test_a_real_fit_reads_the_reference_run_while_it_trains(tmp_path):
    """The first wave: no other trial has a curve, but the reference run training beside it has reached epoch 1."""
    stop = tmp_path / "stopping.json"
    write_thresholds(stop, [], EarlyStoppingConfig(percentile=50, reference=0.9))  # nothing finished, no reference yet
    own = tmp_path / "trials" / "trial_0000"
    own.mkdir(parents=True)
    free, _ = _fit(own, [0.05, 0.2, 0.6], str(stop))  # the reference has not started: nothing to judge against
    assert len(free["val"]) == 3
    _trial_report(tmp_path / "reference" / "result.json", [0.10])
    report, trainer = _fit(own, [0.05, 0.2, 0.6], str(stop))
    assert trainer.current_epoch == 1 and report["stopped"].startswith(
        "pruned after epoch 1: best val/ndcg@10 by epoch 1 0.0500 below 0.0900, 0.9x the reference run's")
    kept, _ = _fit(own, [0.095, 0.2, 0.6], str(stop))  # above 0.9x the reference's 0.10
    assert len(kept["val"]) == 3
    _trial_report(tmp_path / "reference" / "result.json", [0.10], error="RuntimeError: boom")  # a failed reference
    failed, _ = _fit(own, [0.05, 0.2, 0.6], str(stop))
    assert len(failed["val"]) == 3


def _floor_cfg(tmp_path, trials):
    # min_trials above the trial count: the percentile rule never applies, so every stop is the reference floor's
    return _cfg(tmp_path, trials=trials, init_trials=4, method="random", budget={"epochs": 3},
                early_stopping={"percentile": 50, "min_trials": 50, "reference": 0.9})


def test_search_with_a_reference_run_judges_its_first_trials(tmp_path):
    cfg = _floor_cfg(tmp_path, trials=10)
    objective = Planted(epochs=3)
    out = run_search(cfg, objective=objective, num_layers=3, progress=False)
    assert objective.calls[0] == ("reference", -1, ("serial",) * 3)  # trained first, as the uniform baseline
    assert sum(c[0] == "reference" for c in objective.calls) == 1
    journal = Journal(out.out_dir / "trials.jsonl")
    ref = journal.reference()
    assert ref["status"] == "completed" and ref["epochs"] == 3 and not ref["pruned"]
    floor = 0.9 * np.maximum.accumulate(ref["curve"])
    rows = sorted(out.records.values(), key=lambda r: r["trial"])
    assert len(rows) == 10
    for r in rows:  # stopped exactly when below the floor before the last epoch, whatever its position in the search
        best = np.maximum.accumulate(r["curve"])
        below = next((e for e in range(min(2, len(best))) if best[e] < floor[e]), None)
        if below is not None:
            assert r["pruned"] and r["epochs"] == below + 1 and "reference run" in r["stopped"]
        else:
            assert not r["pruned"] and r["epochs"] == 3
    assert any(r["pruned"] and r["trial"] < 3 for r in rows)  # a first trial, which the percentile rule cannot judge
    assert any(not r["pruned"] for r in rows)
    summary = json.loads((out.out_dir / "summary.json").read_text())
    assert summary["reference"]["curve"] == ref["curve"] and summary["trials"] == 10
    assert out.uniform.search_ndcg10 == pytest.approx(ref["ndcg@10"])
    assert json.loads((out.out_dir / "stopping.json").read_text())["reference"] == pytest.approx(ref["curve"])
    from ax import Client

    df = Client.load_from_json_file(str(out.out_dir / "ax_state.json")).summarize()
    assert sorted(df["trial_index"]) == list(range(10))  # the reference run is not an Ax trial


def test_resume_runs_the_reference_once(tmp_path):
    cfg = _floor_cfg(tmp_path, trials=7)
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, objective=Planted(epochs=3, interrupt_at=4), num_layers=3, progress=False)
    second = Planted(epochs=3)
    run_search(cfg, resume=True, objective=second, num_layers=3, progress=False)
    assert [c[:2] for c in second.calls if c[0] == "search"] == [("search", 4), ("search", 5), ("search", 6)]
    records = Journal(tmp_path / "out" / "trials.jsonl").records
    assert sum(r["phase"] == "reference" for r in records) == 1
    # adding the reference to a search that ran without one changes how it judged trials: refused
    plain = _cfg(tmp_path / "plain", trials=2, init_trials=2, method="random", budget={"epochs": 3})
    run_search(plain, objective=Planted(epochs=3), num_layers=3, progress=False)
    with_floor = _cfg(tmp_path / "plain", trials=2, init_trials=2, method="random", budget={"epochs": 3},
                      early_stopping={"reference": 0.9})
    with pytest.raises(ConfigError, match="early_stopping"):
        run_search(with_floor, resume=True, objective=Planted(epochs=3), num_layers=3, progress=False)
