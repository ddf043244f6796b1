"""The `darec` entry point: help, popularity test and predict output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from darec.cli.main import BROKEN_PIPE_EXIT, HELP, main, OWN_COMMANDS
from darec.data.dataset import PreparedData

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("fit", "validate", "test", "predict", *OWN_COMMANDS):
        assert f"  {cmd} " in out, cmd
    assert out.strip() == HELP.strip()


def test_predict_writes_raw_ids_best_first_without_history(synth_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run also writes config.yaml where it runs
    out = tmp_path / "pred.jsonl"
    args = ["predict", "--config", str(ROOT / "configs/pop_ml100k.yaml"), "--data.init_args.data_dir", str(synth_dir),
            "--trainer.callbacks+=darec.callbacks.JsonlPredictionWriter",
            f"--trainer.callbacks.init_args.path={out}", "--trainer.enable_progress_bar=false"]
    assert main(args) == 0
    data = PreparedData(synth_dir)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == data.num_users
    counts = Counter(i for u in range(1, data.num_users + 1) for i in data.train.row(u).tolist())  # training rows only
    for rec in lines[:20]:
        u = data.user_id(rec["user"])
        history = set(data.train.row(u).tolist()) | {int(data.valid.row(u)[0])}  # the test history: train + validation
        ids = [data.item_id(r) for r in rec["items"]]
        assert len(ids) == 10 and not set(ids) & history
        assert [counts[i] for i in ids] == sorted((counts[i] for i in ids), reverse=True)


def test_bad_config_value_is_one_clear_error(synth_dir, capsys):
    missing = synth_dir / "does-not-exist"
    code = main(["data", "stats", str(missing)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {missing}: not a darec prepared dataset (no valid manifest.json); "
                   "run `darec data prepare` first"), err


def test_a_closed_reader_ends_the_command_quietly():
    """`darec --help | head -1`: the reader has gone before darec writes; no traceback, the shell's SIGPIPE status."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "darec.cli.main", "--help"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode == BROKEN_PIPE_EXIT


def test_a_mistyped_command_lists_every_command(capsys):
    assert main(["fitt", "--config", "x.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: unknown command 'fitt' (did you mean 'fit'?). darec's commands: ")
    for cmd in ("fit", "validate", "test", "predict", *OWN_COMMANDS):
        assert cmd in err, cmd


def test_verbose_is_accepted_anywhere_and_leaves_no_handler(synth_dir, capsys):
    import logging

    handlers = list(logging.getLogger("darec").handlers)
    assert main(["data", "stats", str(synth_dir), "--verbose"]) == 0
    assert "users" in capsys.readouterr().out
    assert logging.getLogger("darec").handlers == handlers


def test_lightning_commands_print_no_cli_args_warning(synth_dir, tmp_path, monkeypatch, recwarn):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["darec", "test", "--config", "configs/pop_ml100k.yaml"])  # as from a shell
    args = ["test", "--config", str(ROOT / "configs/pop_ml100k.yaml"), "--data.init_args.data_dir", str(synth_dir),
            "--trainer.enable_progress_bar=false"]
    assert main(args) == 0
    assert not [w for w in recwarn if "LightningCLI's args parameter" in str(w.message)]


def test_a_model_that_refuses_its_config_gives_darecs_error_not_a_namespace_dump(synth_dir, tmp_path, monkeypatch, capsys):
    # DARec's __init__ raises ConfigError for a missing CF export; jsonargparse wraps what __init__ raises in its own
    # error with the whole resolved namespace, and the command must print darec's message alone
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "cf" / "sasrec.safetensors"
    args = ["fit", "--config", str(ROOT / "configs/darec_tiny.yaml"), "--data.init_args.data_dir", str(synth_dir),
            "--model.init_args.cache_dir", str(tmp_path / "cache"), "--model.init_args.injection.mode", "input",
            "--model.init_args.injection.sasrec", str(missing), "--trainer.logger", "false"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: CF export not found: {missing} (each needs its .safetensors file and .json sidecar). Train each "
                   "CF model (darec fit --config ...) and export it: darec export-embeddings --ckpt <its run directory or "
                   f"checkpoint> --out {missing}"]
