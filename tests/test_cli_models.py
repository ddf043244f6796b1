"""`darec fit` with the shipped SASRec/LightGCN configs on synthetic data, then `darec export-embeddings`."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from darec.cli.main import main
from darec.data.dataset import PreparedData
from darec.data.synth import SynthConfig, write_synthetic
from darec.modules.cf import load_cf_embeddings

CONFIGS = Path(__file__).resolve().parents[1] / "configs"



@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic(out, SynthConfig(num_users=60, num_items=30, seed=5))
    return str(out)


def _metrics(run: Path) -> dict[str, str]:
    merged: dict[str, str] = {}
    with open(run / "metrics.csv") as f:
        for row in csv.DictReader(f):
            merged.update({k: v for k, v in row.items() if v})
    return merged


@pytest.mark.parametrize(
    "config,extra",
    [
        ("sasrec_ml100k.yaml", ["--model.init_args.hidden_size", "16", "--model.init_args.inner_size", "32", "--data.init_args.batch_size", "32"]),
        ("lightgcn_ml100k.yaml", ["--model.init_args.embedding_size", "16", "--data.init_args.batch_size", "256"]),
    ],
)
def test_fit_checkpoints_tests_and_exports(config: str, extra: list[str], synth_dir: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    rc = main(["fit", "--config", str(CONFIGS / config), "--data.init_args.data_dir", synth_dir,
               "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu", "--trainer.log_every_n_steps", "1", *extra])
    assert rc == 0
    name = config.removesuffix(".yaml")
    run = tmp_path / "logs" / name / "version_0"
    best = sorted((run / "checkpoints").glob("best-epoch*.ckpt"))
    assert len(best) == 1 and (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "config.yaml").is_file()
    metrics = _metrics(run)
    assert "val/ndcg@10" in metrics
    # the test figure `fit` reports is the best checkpoint's: `darec test` on that checkpoint gives the same numbers
    (tmp_path / "retest").mkdir()
    monkeypatch.chdir(tmp_path / "retest")  # its logs go to retest/logs/<name>/version_0
    assert main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(best[0])]) == 0
    retest = _metrics(tmp_path / "retest" / "logs" / name / "version_0")
    monkeypatch.chdir(tmp_path)
    for key in ("test/ndcg@10", "test/hr@10", "test/mrr@10"):
        assert float(retest[key]) == pytest.approx(float(metrics[key]), abs=1e-6), key
    assert any((tmp_path / "logs" / "tensorboard" / name).rglob("events.out.tfevents.*"))

    out = tmp_path / "cf" / f"{name}.safetensors"
    assert main(["export-embeddings", "--ckpt", str(best[0]), "--out", str(out)]) == 0
    cf = load_cf_embeddings(out, PreparedData(synth_dir).fingerprint)
    assert cf.kind == name.split("_")[0] and cf.item_emb.shape == (31, 16)
    assert main(["export-embeddings", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(out)]) == 2
