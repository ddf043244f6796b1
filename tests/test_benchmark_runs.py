"""The benchmarks' run store: a run is reused by name, so its name must carry every setting that changes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_converged_darec_runs_are_named_by_sasrecs_length_and_both_patiences_and_default_to_the_shipped_configs(benchmark_script) -> None:
    runs = benchmark_script("runs")
    shipped = yaml.safe_load((ROOT / "configs" / "darec_ml100k.yaml").read_text())
    stop = next(c["init_args"] for c in shipped["trainer"]["callbacks"] if c["class_path"].endswith("EarlyStopping"))
    assert runs.shipped_darec_patience() == stop["patience"]
    names = {runs.converged_darec_name(seed, n, sas, dp) for seed in (0, 1) for n in (50, 100) for sas in (11, 25) for dp in (3, 6)}
    assert len(names) == 16, "a run at another seed, SASRec length or patience must never be reused"
    assert runs.converged_darec_name(2, 100, 25, 6) == "darec_p6_sasL100p25_s2"
    assert runs.converged_darec_name(2, 100, 25, 3, 0.00036) == "darec_p3_lr0.00036_sasL100p25_s2"
    assert runs.converged_darec_name(2, 100, 25, 3, None, ["skip", "serial:64", "none"]) == (
        "darec_p3_adskip-serial64-none_sasL100p25_s2")
    assert runs.darec_name("ablation_full_e4", 1, 50, 25) == "ablation_full_e4_sasL50p25_s1"


def test_a_finished_run_is_reused_only_while_its_spec_resolves_to_the_configuration_it_was_trained_with(benchmark_script, tmp_path, capsys):
    runs = benchmark_script("runs")
    spec = runs.RunSpec("darec_p3_sasL100p25_s0", "darec", 0, trainer={"patience": 3}, cf_from="sasrec_L100_p25_s0",
                        lightgcn_from="lightgcn_s0")
    resolved = runs.resolved_config(spec)
    assert resolved["model"]["injection"]["sasrec"] == "sasrec_L100_p25_s0" and "cache_dir" not in resolved["model"]
    assert resolved["trainer"]["patience"] == 3 and "data_dir" not in resolved["data"]
    done = tmp_path / spec.name
    done.mkdir()
    (done / "meta.json").write_text(json.dumps({"config": resolved}))
    runs.check_reusable(tmp_path, spec)  # the same configuration: reused
    # the shipped default changed (or the spec did) since the run was trained: refused, naming what differs
    changed = runs.RunSpec(spec.name, "darec", 0, model={"lr": 0.01, "adapters": "serial"}, trainer={"patience": 3},
                           cf_from=spec.cf_from, lightgcn_from=spec.lightgcn_from)
    with pytest.raises(RuntimeError, match=r"differs at: model\.adapters, model\.lr\); delete"):
        runs.check_reusable(tmp_path, changed)
    with pytest.raises(RuntimeError, match="another configuration"):
        runs.run_all([changed], tmp_path, "unused-data-dir")
    # a run that also scored test after every epoch trained the same: it serves a spec without the diagnostic
    diagnostic = runs.RunSpec(spec.name, "darec", 0, trainer={"patience": 3}, cf_from=spec.cf_from,
                              lightgcn_from=spec.lightgcn_from, test_every_epoch=True)
    (done / "meta.json").write_text(json.dumps({"config": runs.resolved_config(diagnostic)}))
    runs.check_reusable(tmp_path, spec)
    with pytest.raises(RuntimeError, match=r"differs at: model\.adapters, model\.lr\); delete"):
        runs.check_reusable(tmp_path, changed)  # the diagnostic excuses nothing else
    (done / "meta.json").write_text(json.dumps({"config": resolved}))  # the other way round: the spec asks for it
    with pytest.raises(RuntimeError, match=r"differs at: test_every_epoch\); delete"):
        runs.check_reusable(tmp_path, diagnostic)
    (done / "meta.json").write_text(json.dumps({"fit_s": 1.0}))  # recorded before configurations were
    runs.check_reusable(tmp_path, changed)
    assert "trained before runs recorded their configuration" in capsys.readouterr().out


def test_a_run_from_before_a_model_option_existed_is_reused_only_while_the_option_is_at_its_default(benchmark_script, tmp_path, capsys):
    runs = benchmark_script("runs")
    spec = runs.RunSpec("darec_p3_sasL100p25_s0", "darec", 0, cf_from="sasrec_L100_p25_s0", lightgcn_from="lightgcn_s0")
    old = runs.resolved_config(spec)
    del old["model"]["item_embeddings"]  # an option added since, shipped at its class default (off)
    (tmp_path / spec.name).mkdir()
    (tmp_path / spec.name / "meta.json").write_text(json.dumps({"config": old}))
    runs.check_reusable(tmp_path, spec)
    assert "trained before model.item_embeddings existed" in capsys.readouterr().out
    on = runs.RunSpec(spec.name, "darec", 0, model={"item_embeddings": True}, cf_from=spec.cf_from,
                      lightgcn_from=spec.lightgcn_from)
    with pytest.raises(RuntimeError, match=r"differs at: model\.item_embeddings\)"):
        runs.check_reusable(tmp_path, on)
    # the shipped config turns label smoothing on (0.1, the class default 0): a run from before the option trained without it
    assert old["model"]["losses"]["label_smoothing"] != 0
    del old["model"]["losses"]["label_smoothing"]
    (tmp_path / spec.name / "meta.json").write_text(json.dumps({"config": old}))
    with pytest.raises(RuntimeError, match=r"differs at: model\.losses\.label_smoothing\)"):
        runs.check_reusable(tmp_path, spec)
    off = runs.RunSpec(spec.name, "darec", 0, model={"losses": {"label_smoothing": 0.0}}, cf_from=spec.cf_from,
                       lightgcn_from=spec.lightgcn_from)
    runs.check_reusable(tmp_path, off)  # at the class default: reused
    del old["model"]["lr"]  # an option the class has always had, missing: not explained by a later addition
    (tmp_path / spec.name / "meta.json").write_text(json.dumps({"config": old}))
    with pytest.raises(RuntimeError, match=r"differs at: model\.lr\)"):
        runs.check_reusable(tmp_path, off)


def test_converged_darec_names_carry_the_history_length_when_it_is_not_the_shipped_one(benchmark_script):
    runs = benchmark_script("runs")
    assert runs.converged_darec_name(0, 100, 25, 3, None, None, 100) == "darec_p3_L100_sasL100p25_s0"
    assert runs.converged_darec_name(0, 100, 25, 3) == "darec_p3_sasL100p25_s0"
    assert runs.converged_darec_name(0, 100, 25, 3, None, None, None, (("dropout", 0.3), ("losses.lambda_hard", 0))) == (
        "darec_p3_set-dropout0.3-lambda_hard0_sasL100p25_s0")


def test_darec_set_sends_data_keys_to_the_data_module_and_names_them(benchmark_script):
    runs = benchmark_script("runs")
    bench = benchmark_script("darec_ml100k")
    extra = bench.parse_set(["data.stride=25", "dropout=0.3"])
    darec = [s for s in bench.specs([0], 100, 25, (3, None, None, None, extra)) if s.kind == "darec"][0]
    assert darec.name == "darec_p3_set-stride25-dropout0.3_sasL100p25_s0"
    assert darec.data == {"stride": 25} and darec.model == {"dropout": 0.3}
    resolved = runs.resolved_config(darec)
    assert resolved["data"]["stride"] == 25 and resolved["data"]["max_len"] == 50 and resolved["model"]["dropout"] == 0.3
    assert "stride" not in resolved["model"]


def test_scoring_test_after_every_epoch_leaves_training_exactly_as_it_was(benchmark_script, small_synth_dir, tmp_path):
    """``RunSpec.test_every_epoch`` is a diagnostic: the extra scoring after each validation pass draws from torch's
    random state (the evaluation loaders do), so without restoring it the next epoch's dropout would differ."""
    import lightning as L
    import numpy as np
    import torch

    from darec.data.datamodules.sequence import SequenceDataModule
    from darec.modules.sasrec import SASRec

    runs = benchmark_script("runs")

    def fit(diagnose: bool) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
        L.seed_everything(0)
        dm = SequenceDataModule(str(small_synth_dir), batch_size=16, max_len=10, seed=0)
        model = SASRec(dm.num_items, dm.num_users, dm.fingerprint, hidden_size=16, inner_size=32, max_len=10,
                       hidden_dropout=0.3, attn_dropout=0.3)
        seen: list[dict[str, float]] = []

        class Diagnose(L.Callback):
            def on_validation_end(self, trainer, pl_module):
                logged = float(trainer.callback_metrics["val/ndcg@10"])
                prefix = tmp_path / "curves" / f"epoch{trainer.current_epoch}"
                seen.append({"logged_val": logged, **runs.per_epoch_scores(pl_module, trainer.datamodule, prefix)})

        trainer = L.Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False, num_sanity_val_steps=0,
                            callbacks=[Diagnose()] if diagnose else [])
        trainer.fit(model, dm)
        return {k: v.clone() for k, v in model.state_dict().items()}, seen

    plain, _ = fit(False)
    diagnosed, seen = fit(True)
    assert plain.keys() == diagnosed.keys()
    assert all(torch.equal(plain[k], diagnosed[k]) for k in plain)
    assert len(seen) == 3
    for epoch, s in enumerate(seen):
        assert s["diag_val_ndcg@10"] == pytest.approx(s["logged_val"], abs=1e-6)
        test = np.load(tmp_path / "curves" / f"epoch{epoch}_test.npy")
        assert test.shape == (120,) and ((test >= 0) & (test <= 1)).all()
        assert float(test.mean()) == pytest.approx(s["diag_test_ndcg@10"])
    assert "diag_test_lm_ndcg@10" not in seen[0]  # SASRec has no residual, so no language-model-only scores


def test_a_diagnostic_run_is_named_apart_and_leaves_older_runs_reusable(benchmark_script):
    runs = benchmark_script("runs")
    bench = benchmark_script("epoch_curves")
    base, darec = bench.curve_specs("data.stride=25", [0, 1], 100, 25)
    assert [s.name for s in darec] == ["curves_darec_p3_set-stride25_sasL100p25_s0", "curves_darec_p3_set-stride25_sasL100p25_s1"]
    assert all(s.test_every_epoch and s.data == {"stride": 25} for s in darec)
    assert sorted(s.name for s in base) == ["lightgcn_s0", "lightgcn_s1", "sasrec_L100_p25_s0", "sasrec_L100_p25_s1"]
    assert runs.resolved_config(darec[0])["test_every_epoch"] is True
    plain = runs.RunSpec("darec_p3_sasL100p25_s0", "darec", 0, trainer={"patience": 3})
    assert "test_every_epoch" not in runs.resolved_config(plain)  # runs trained before the option stay reusable
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        bench.variant_setting("stride25")


def test_a_variant_names_an_adapter_list_beside_other_keys(benchmark_script):
    bench = benchmark_script("epoch_curves")
    setting = bench.variant_setting("adapters=skip,skip,serial:16,none,dropout=0.2,item_adapter_layers=null")
    assert setting[2] == ["skip", "skip", "serial:16", "none"]
    assert setting[4] == (("dropout", 0.2), ("item_adapter_layers", None))
    _, darec = bench.curve_specs("adapters=skip,serial:16", [0], 100, 25)
    assert darec[0].name == "curves_darec_p3_adskip-serial16_sasL100p25_s0"
    assert darec[0].model["adapters"] == ["skip", "serial:16"]


def test_a_sasrec_variant_sets_model_and_data_keys_and_is_named_by_them(benchmark_script):
    bench = benchmark_script("sasrec_variant")
    runs = benchmark_script("runs")
    extra = bench.parse_set(["mask_seen=false", "data.stride=50"])
    spec = bench.variant_spec(100, 2, 25, extra)
    assert spec.name == "sasrec_L100_p25_set-stride50-mask_seenFalse_s2"
    assert spec.model == {"max_len": 100, "mask_seen": False} and spec.data == {"max_len": 100, "stride": 50}
    model, data = runs.resolved_config(spec)["model"], runs.resolved_config(spec)["data"]
    assert model["mask_seen"] is False and data["stride"] == 50
    assert spec.trainer == {"patience": 25, "max_minutes": 45}
    longer = bench.variant_spec(100, 2, 25, extra, 60)
    assert longer.name == "sasrec_L100_p25_set-stride50-mask_seenFalse_m60_s2"
    assert runs.resolved_config(longer)["trainer"]["max_minutes"] == 60
    shipped = runs.sasrec_spec(100, 2, 25)
    assert shipped.name != spec.name and runs.resolved_config(shipped)["model"]["mask_seen"] is True
    # SASRec's runs get 45 minutes of fit, the others 30 (runs.FIT_MINUTES)
    assert runs.resolved_config(shipped)["trainer"]["max_minutes"] == 45
    assert runs.resolved_config(runs.RunSpec("lightgcn_s2", "lightgcn", 2))["trainer"]["max_minutes"] == 30
    with pytest.raises(SystemExit, match="history length"):
        bench.main(["--set", "max_len=50", "--seeds", "0"])


def test_curves_can_inject_a_sasrec_variant_and_name_their_runs_after_it(benchmark_script):
    bench = benchmark_script("epoch_curves")
    extra = bench.parse_set(["mask_seen=false"])
    base, darec = bench.curve_specs("losses.mask_seen=false", [2], 100, 25, extra, 60)
    assert darec[0].name == "curves_darec_p3_set-mask_seenFalse_sasrec_L100_p25_set-mask_seenFalse_m60_s2"
    assert darec[0].cf_from == "sasrec_L100_p25_set-mask_seenFalse_m60_s2"
    assert {s.name for s in base} == {"sasrec_L100_p25_set-mask_seenFalse_m60_s2", "lightgcn_s2"}
    sas = next(s for s in base if s.kind == "sasrec")
    assert sas.model["mask_seen"] is False and sas.trainer["max_minutes"] == 60
    _, plain = bench.curve_specs("losses.mask_seen=false", [2], 100, 25)
    assert plain[0].name == "curves_darec_p3_set-mask_seenFalse_sasL100p25_s2"


def _fake_runs(runs, monkeypatch, outcome: dict[str, str]) -> list:
    """Replaces a run's training command with ``outcome[name]`` (Python code), keeping everything else of the launch."""
    started = []
    real_popen = runs.subprocess.Popen

    def popen(cmd, **kwargs):
        name = json.loads(cmd[2])["name"]
        proc = real_popen([sys.executable, "-c", outcome[name]], **kwargs)
        started.append(proc)
        return proc

    monkeypatch.setattr(runs.subprocess, "Popen", popen)
    return started


def test_a_failed_run_stops_the_runs_still_training(benchmark_script, tmp_path, monkeypatch, capsys):
    runs = benchmark_script("runs")
    started = _fake_runs(runs, monkeypatch, {"slow": "import time; time.sleep(120)", "broken": "raise SystemExit(3)"})
    specs = [runs.RunSpec("slow", "sasrec", 0), runs.RunSpec("broken", "sasrec", 1)]
    with pytest.raises(RuntimeError, match=r"run broken failed \(exit 3\)"):
        runs.run_all(specs, tmp_path, "unused-data-dir", jobs=2)
    slow = started[0]
    assert slow.returncode == -signal.SIGTERM, "the run still training is ended, not left behind"
    assert "stopped slow" in capsys.readouterr().out
    assert not runs.is_done(tmp_path, "slow"), "a stopped run is trained again next time"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_run_ends_when_its_benchmark_is_killed_outright(tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time; sys.path.insert(0, sys.argv[1]); import runs; "
         "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], preexec_fn=runs.die_with_parent); "
         "print(child.pid, flush=True); time.sleep(120)", str(ROOT / "benchmarks")],
        stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)  # no finally, no handler: only the kernel can end the child now
    parent.wait()

    def alive() -> bool:
        stat = Path(f"/proc/{child_pid}/stat")
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 20
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(), "the run outlived the benchmark that started it"


def test_stored_converged_runs_load_together_and_refuse_other_data_or_targets(benchmark_script, stored_run, tmp_path):
    runs = benchmark_script("runs")
    name = runs.converged_darec_name(0, 100, 25, runs.shipped_darec_patience())
    with pytest.raises(SystemExit, match="not a finished run; train it with darec_ml100k.py"):
        runs.load_converged(tmp_path, 0, 100, 25, num_items=3)
    scores = np.array([[-np.inf, 1.0, 2.0, 3.0]] * 2, dtype=np.float32)
    stored_run(tmp_path, name, {"spec": {"name": name, "cf_from": "sas"}}, scores, np.array([1, 2]), scores - 1.0)
    stored_run(tmp_path, "sas", {"spec": {"name": "sas"}}, scores, np.array([1, 3]))
    with pytest.raises(SystemExit, match="scores 3 items, the data has 5"):
        runs.load_converged(tmp_path, 0, 100, 25, num_items=5)
    with pytest.raises(SystemExit, match="sas has other val targets"):
        runs.load_converged(tmp_path, 0, 100, 25, num_items=3)
    np.savez(tmp_path / "sas" / "eval_data.npz", val_targets=np.array([1, 2]), test_targets=np.array([1, 2]))
    loaded = runs.load_converged(tmp_path, 0, 100, 25, num_items=3)
    assert set(loaded) == {"darec", "darec_lm_only", "sasrec"}
    assert np.array_equal(loaded["darec_lm_only"].scores["test"], scores - 1.0)  # the same run, its language model alone
    assert loaded["sasrec"].meta["spec"]["name"] == "sas"


def test_training_popularity_counts_the_catalogue_from_training_data_only(benchmark_script, synth_dir):
    import torch

    from darec.data.dataset import PreparedData
    from darec.evaluation.metrics import popularity_edges

    runs = benchmark_script("runs")
    data = PreparedData(synth_dir)
    counts, edges = runs.training_popularity(synth_dir)
    assert data.num_cold > 0 and len(counts) == data.num_items + 1  # cold items are not in the catalogue runs score
    expected = np.zeros(data.num_items + 1, dtype=np.int64)
    for seq in data.train_sequences():
        np.add.at(expected, seq[seq <= data.num_items], 1)
    assert np.array_equal(counts.numpy(), expected)
    assert edges == popularity_edges(torch.as_tensor(expected))
    targets = np.array([int(np.argmax(expected[1:])) + 1, int(np.argmin(expected[1:])) + 1])
    groups, labels = runs.target_popularity_groups(counts, edges, targets)
    assert groups.tolist() == [len(labels) - 1, 0]  # the most trained item in the top group, the least in the first
