"""`fabric run` launch through darec/cli/launch.py: joins the launched world and agrees with one process."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import lightning as L
import pytest

from darec.data.datamodules.base import RecDataModule
from darec.cli.launch import launcher_args
from darec.modules.popularity import Popularity

ROOT = Path(__file__).resolve().parents[1]


def test_launcher_args_fill_only_missing_trainer_flags():
    env = {"LT_CLI_USED": "1", "LT_ACCELERATOR": "cpu", "LT_STRATEGY": "ddp", "LT_DEVICES": "2", "LT_NUM_NODES": "1"}
    out = launcher_args(["fit", "--config", "x.yaml", "--trainer.devices=4"], env)
    assert out[:4] == ["fit", "--config", "x.yaml", "--trainer.devices=4"]
    assert "--trainer.devices" not in out[4:]
    assert out[out.index("--trainer.strategy") + 1] == "ddp" and out[out.index("--trainer.num_nodes") + 1] == "1"
    assert launcher_args(["data", "stats", "d"], env) == ["data", "stats", "d"]
    assert launcher_args(["fit"], {}) == ["fit"]


@pytest.mark.skipif(shutil.which("fabric") is None, reason="the `fabric` launcher (lightning + click) is not installed")
def test_fabric_run_two_processes_agrees_with_one(synth_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = ["fabric", "run", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", str(ROOT / "darec/cli/launch.py"),
           "test", "--config", str(ROOT / "configs/pop_ml100k.yaml"), "--data.init_args.data_dir", str(synth_dir),
           "--trainer.enable_progress_bar", "false"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in out
    launched = float(re.search(r"test/ndcg@10\s*│\s*([0-9.]+)", out).group(1))
    dm = RecDataModule(str(synth_dir))
    one = L.Trainer(logger=False, enable_progress_bar=False).test(Popularity(num_items=dm.num_items), datamodule=dm, verbose=False)
    assert launched == pytest.approx(one[0]["test/ndcg@10"], abs=1e-7)
