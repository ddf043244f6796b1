"""The ``darec`` command: LightningCLI ``fit/validate/test/predict`` plus darec's own subcommands."""

from __future__ import annotations

import difflib
import os
import sys
from typing import Callable

from darec.cli.demo import DEMO_TIME
from darec.cli.fit import LIGHTNING_COMMANDS, lightning_main
from darec.errors import DarecError
from darec.output import command_output

OWN_COMMANDS: dict[str, str] = {
    "data": "darec.cli.data:data_main",
    "demo": "darec.cli.demo:demo_main",
    "recommend": "darec.cli.recommend:recommend_main",
    "export-item-vectors": "darec.cli.recommend:export_item_vectors_main",
    "export-embeddings": "darec.cli.export:export_main",
    "search": "darec.cli.search:search_main",
}
VERBOSE = "--verbose"
BROKEN_PIPE_EXIT = 141  # what a shell reports for a writer ended by SIGPIPE
HELP = f"""usage: darec [--verbose] <command> [options]

Start here:
  demo         download ml-100k, prepare it, train popularity, SASRec, LightGCN and DARec, compare
               (on the CPU: {DEMO_TIME})

Training and evaluation (LightningCLI; `darec <command> --help` for every option):
  fit          train a model:           darec fit --config configs/sasrec_ml100k.yaml
  validate     evaluate on validation:  darec validate --config ... [--ckpt_path CKPT]
  test         evaluate on test:        darec test --config configs/pop_ml100k.yaml
  predict      top-K JSON lines:        darec predict --config ... --ckpt_path CKPT

Data:
  data download   fetch ml-100k:             darec data download ml-100k --dir data/raw
  data prepare    raw logs -> prepared dir:  darec data prepare --config configs/data/ml100k.yaml
  data synth      synthetic dataset:         darec data synth --out data/synth
  data stats      print a dataset's stats:   darec data stats data/ml-100k

DARec inference:
  recommend            top-k for a history:  darec recommend --ckpt CKPT --history "1,50,181" --k 10
  export-item-vectors  e_j for an ANN index: darec export-item-vectors --ckpt CKPT --out items.safetensors

Collaborative embeddings (for DARec's knowledge injection):
  export-embeddings   SASRec/LightGCN checkpoint (or its run directory) -> safetensors + JSON sidecar:
                      darec export-embeddings --ckpt CKPT --out cf/sasrec.safetensors

Dynamic adaption (per-layer adapter types by Bayesian optimisation, Ax):
  search       darec search --config configs/search_darec_ml100k.yaml [--resume] [--parallel N] [--refit]

Common LightningCLI options: --config FILE, --print_config, --seed_everything N,
  --trainer.max_epochs N, --trainer.devices N, --trainer.strategy ddp, --ckpt_path CKPT

--verbose (anywhere on the command line, any command): also show the libraries' own messages (Lightning's
  tips and accelerator lines, deprecation warnings, Hugging Face progress bars) and darec's debug messages,
  each with its level and logger name. DAREC_LOG_LEVEL=WARNING keeps darec's own messages to warnings.
"""


def _load(spec: str) -> Callable[[list[str]], int]:
    import importlib

    mod, fn = spec.split(":")
    return getattr(importlib.import_module(mod), fn)


def unknown_command(name: str) -> str:
    """The error line for a command darec does not have: every command, and the closest one."""
    commands = [*LIGHTNING_COMMANDS, *OWN_COMMANDS]
    close = difflib.get_close_matches(name, commands, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown command {name!r}{hint}. darec's commands: {', '.join(commands)}; darec --help describes them"


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _dispatch(argv)
        finally:  # also on SystemExit (LightningCLI's --help): a closed pipe shows up at this flush
            sys.stdout.flush()
    except BrokenPipeError:
        # the reader of our output (head, less, grep -m) has gone: stop quietly, as Unix tools do, and keep the
        # interpreter's final flush from raising again into a closed pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_EXIT


def _dispatch(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = VERBOSE in argv
    argv = [a for a in argv if a != VERBOSE]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(HELP)
        return 0
    command = argv[0]
    if not command.startswith("-") and command not in LIGHTNING_COMMANDS and command not in OWN_COMMANDS:
        print(f"error: {unknown_command(command)}", file=sys.stderr)
        return 2
    with command_output(verbose):
        try:
            if command in OWN_COMMANDS:
                return _load(OWN_COMMANDS[command])(argv[1:])
            lightning_main(argv)
            return 0
        except DarecError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
