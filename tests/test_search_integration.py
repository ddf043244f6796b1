"""`darec search` end to end: real tiny-bert trials on synthetic data, each `darec fit` in its own process."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from darec.cli.main import main
from darec.data.dataset import PreparedData
from darec.errors import ConfigError
from darec.search import load_search_config
from darec.search.space import SearchSpace
from darec.search.trial import TrialResult, _failure_reason, load_base_config, num_layers_of, read_report

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_search_config_loads_and_derives_its_space(tmp_path):
    cfg = load_search_config(ROOT / "configs" / "search_darec_ml100k.yaml")
    assert cfg.base_config == "configs/darec_ml100k.yaml" and cfg.rerun.seeds == 2 and cfg.rerun.baseline == "serial"
    cfg.base_config = str(ROOT / cfg.base_config)
    cfg.overrides = {"model.init_args.backbone.name": "tiny-llama", "model.init_args.backbone.tiny_layers": 3}
    base = load_base_config(cfg)
    space = SearchSpace.from_config(cfg, num_layers_of(base))  # the layer count comes from the backbone
    names = [p.name for p in space.ax_parameters()]
    assert names == ["layer_0", "layer_1", "layer_2"]
    assert space.ax_parameters()[0].values == ["none", "skip", "serial", "parallel", "lora", "mixture"]
    assert cfg.multi_objective is False and cfg.costs == ["seconds_per_epoch", "trainable_params"]
    assert (cfg.budget.epochs, cfg.early_stopping.percentile, cfg.early_stopping.grace_epochs) == (2, 50, 1)
    cfg.space.sizes = {"serial": [16, 64], "lora": [4, 8]}
    cfg.space.lr = [1e-4, 1e-2]
    space = SearchSpace.from_config(cfg, 2)
    params = {p.name: p for p in space.ax_parameters()}
    assert list(params) == ["layer_0", "size_0", "layer_1", "size_1", "lr"] and params["size_0"].is_ordered
    cand = space.candidate({"layer_0": "lora", "size_0": 1, "layer_1": "none", "size_1": 0, "lr": 0.003})
    assert cand.assignment == ("lora:8", "none") and cand.knobs == (("lr", 0.003),)
    cfg.base_config = str(ROOT / "configs" / "sasrec_ml100k.yaml")
    with pytest.raises(ConfigError, match="DARec"):
        load_base_config(cfg)


def test_failure_reasons_name_the_cause(tmp_path):
    assert _failure_reason("...\ntorch.OutOfMemoryError: CUDA out of memory. Tried 2 GiB", 1).startswith("out of memory")
    assert _failure_reason("", -9).startswith("out of memory")
    assert _failure_reason("x\nerror: unknown adapter type 'nope'\n", 2) == "exit code 2: error: unknown adapter type 'nope'"
    report = tmp_path / "result.json"
    report.write_text(json.dumps({"trainable_params": 7, "val": [{"val/ndcg@10": 0.2}, {"val/ndcg@10": float("nan")}]}))
    res = read_report(report)
    assert res.status == "failed" and "not finite" in res.reason and res.trainable_params == 7
    report.write_text(json.dumps({"trainable_params": 7, "val": [{"val/ndcg@10": 0.2}, {"val/ndcg@10": 0.3, "val/hr@10": 0.5}]}))
    assert read_report(report) == TrialResult("completed", 0.3, {"val/ndcg@10": 0.3, "val/hr@10": 0.5}, 7,
                                              curve=[0.2, 0.3])
    report.write_text(json.dumps({"trainable_params": 7, "val": [{"val/ndcg@10": 0.2}], "train_s": [3.0, 5.0],
                                  "stopped": "pruned after epoch 1: ..."}))
    res = read_report(report)
    assert res.seconds_per_epoch == 4.0 and res.pruned and res.curve == [0.2]


def _metrics(path: Path) -> dict[str, str]:
    merged: dict[str, str] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            merged.update({k: v for k, v in row.items() if v})
    return merged


def test_three_real_trials_rerun_refit(small_synth_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump({
        "base_config": str(ROOT / "configs" / "darec_tiny.yaml"), "out_dir": "runs/s", "trials": 3, "parallel": 2,
        "init_trials": 2, "space": {"types": ["none", "serial", "lora"]}, "budget": {"epochs": 1, "steps": 2},
        "rerun": {"top_k": 1, "seeds": 1}, "refit": {"epochs": 1},
        "overrides": {"data.init_args.data_dir": str(small_synth_dir), "data.init_args.batch_size": 16},
    }))
    assert main(["search", "--config", str(config), "--refit", "--no-progress"]) == 0
    out = tmp_path / "runs" / "s"
    rows = [json.loads(ln) for ln in (out / "trials.jsonl").read_text().splitlines()]
    search = [r for r in rows if r["phase"] == "search"]
    assert sorted(r["trial"] for r in search) == [0, 1, 2]
    assert [r["seed"] for r in sorted(search, key=lambda r: r["trial"])] == [0, 1, 2]
    for r in search:
        assert r["status"] == "completed" and 0.0 < r["ndcg@10"] <= 1.0 and r["duration_s"] > 0
        assert len(r["adapters"]) == 2 and set(r["adapters"]) <= {"none", "serial", "lora"}  # tiny-bert: 2 layers
        assert r["metrics"]["val/ndcg@10"] == r["ndcg@10"] and r["curve"] == [r["ndcg@10"]]
        assert r["epochs"] == 1 and r["stopped"] == "max_epochs reached (1)" and not r["pruned"]
        assert 0 < r["seconds_per_epoch"] < r["duration_s"]  # training seconds only, measured inside the trial
        trial = Path(r["trial_dir"])
        cfg = yaml.safe_load((trial / "trial.yaml").read_text())
        assert cfg["test_after_fit"] is False and cfg["model"]["init_args"]["adapters"] == r["adapters"]
        assert not any(k.startswith("test/") for k in _metrics(trial / "metrics.csv"))  # the test split is never read
    # trainable parameters as the model the trial configured counts them
    from darec.modules.adapters import count_trainable
    from darec.modules.darec import DARec

    data = PreparedData(small_synth_dir)
    for r in search[:1]:
        init = yaml.safe_load((Path(r["trial_dir"]) / "trial.yaml").read_text())["model"]["init_args"]
        model = DARec(**{**init, "num_items": data.num_items, "num_users": data.num_users, "cache_dir": str(tmp_path / "c")})
        assert r["trainable_params"] == count_trainable(model)
    from ax import Client

    df = Client.load_from_json_file(str(out / "ax_state.json")).summarize()
    assert sorted(df["trial_index"]) == [0, 1, 2] and set(df["trial_status"]) == {"COMPLETED"}
    reruns = [r for r in rows if r["phase"] == "rerun"]
    assert {tuple(r["adapters"]) for r in reruns} >= {("serial", "serial")} and {r["seed"] for r in reruns} == {100_000}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["uniform"]["adapters"] == ["serial", "serial"] and len(summary["best"]["fresh_ndcg@10"]) == 1
    best_doc = yaml.safe_load((out / "best.yaml").read_text())
    assert best_doc["model"]["init_args"]["adapters"] == summary["best"]["adapters"] and best_doc["test_after_fit"]
    # --refit ran `darec fit` on best.yaml itself (its own config only adds the log directory and the report)
    assert "model" not in yaml.safe_load((out / "refit" / "trial.yaml").read_text())
    refit = json.loads((out / "refit.json").read_text())
    assert refit["adapters"] == summary["best"]["adapters"] and 0.0 <= refit["test"]["test/ndcg@10"] <= 1.0
    for name in ("trace.png", "choices.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    # resuming the finished search reports the refit again without training anything
    before = (out / "trials.jsonl").read_text()
    assert main(["search", "--config", str(config), "--resume", "--refit", "--no-progress"]) == 0
    assert (out / "trials.jsonl").read_text() == before
    assert json.loads((out / "refit.json").read_text())["duration_s"] == refit["duration_s"]


def test_a_search_can_score_trials_by_another_validation_metric(tmp_path):
    from darec.search import config_from_dict
    from darec.search.space import Candidate
    from darec.search.trial import REPORT_CALLBACK, TrialJob, trial_fit_config

    report = tmp_path / "result.json"
    report.write_text(json.dumps({"trainable_params": 7, "val": [{"val/ndcg@10": 0.3, "val/lm_ndcg@10": 0.10},
                                                                 {"val/ndcg@10": 0.2, "val/lm_ndcg@10": 0.15}]}))
    assert read_report(report).ndcg10 == 0.3  # the default: the fused score's best epoch
    lm = read_report(report, "val/lm_ndcg@10")  # the language model's best epoch is another one
    assert (lm.ndcg10, lm.curve, lm.metrics["val/ndcg@10"]) == (0.15, [0.10, 0.15], 0.2)
    missing = read_report(report, "val/hr@10")
    assert missing.status == "failed" and "val/hr@10" in missing.reason and "val/lm_ndcg@10" in missing.reason
    cfg = config_from_dict({"out_dir": str(tmp_path / "out"), "metric": "val/lm_ndcg@10"})
    job = TrialJob(0, "search", Candidate(("serial", "none")), 0, tmp_path / "t")
    ckpt = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"monitor": "val/ndcg@10"}}
    base = {"model": {"init_args": {}}, "trainer": {"callbacks": [ckpt]}}
    callbacks = trial_fit_config(cfg, base, job)["trainer"]["callbacks"]
    assert [c["init_args"]["metric"] for c in callbacks if c["class_path"] == REPORT_CALLBACK] == ["val/lm_ndcg@10"]
    # the trial keeps the checkpoint of its best epoch by that metric; the base config is left as it was
    assert callbacks[0]["init_args"]["monitor"] == "val/lm_ndcg@10" and ckpt["init_args"]["monitor"] == "val/ndcg@10"
    for bad in ("ndcg@10", "test/ndcg@10", "val/", 3):
        with pytest.raises(ConfigError, match="metric must be a logged validation metric"):
            config_from_dict({"out_dir": str(tmp_path / "out"), "metric": bad})


def test_re_runs_train_at_their_own_epochs_without_the_trial_caps(tmp_path):
    from darec.search import config_from_dict
    from darec.search.space import Candidate
    from darec.search.trial import TrialJob, trial_fit_config

    budget = {"epochs": 2, "steps": 5, "minutes": 1.5}
    base = {"model": {"init_args": {}}, "trainer": {"max_epochs": 30}}
    candidate = Candidate(("serial", "none"))

    def trainer(phase: str, rerun: dict) -> dict:
        cfg = config_from_dict({"out_dir": str(tmp_path / "out"), "budget": budget, "rerun": rerun})
        return trial_fit_config(cfg, base, TrialJob(0, phase, candidate, 0, tmp_path / phase))["trainer"]

    search = trainer("search", {"epochs": 12})
    assert (search["max_epochs"], search["limit_train_batches"], search["max_time"]) == (2, 5, "00:00:01:30")
    full = trainer("rerun", {"epochs": 12})
    assert full["max_epochs"] == 12 and "limit_train_batches" not in full and "max_time" not in full
    same = trainer("rerun", {})  # by default a re-run gets the search budget
    assert (same["max_epochs"], same["limit_train_batches"], same["max_time"]) == (2, 5, "00:00:01:30")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="rerun.epochs must be a positive integer"):
            config_from_dict({"out_dir": str(tmp_path / "out"), "rerun": {"epochs": bad}})
