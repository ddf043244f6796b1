"""The ``darec`` command: LightningCLI ``fit/validate/test/predict`` plus darec's own subcommands."""

from __future__ import annotations

import difflib
import sys
import warnings
from typing import Callable

from darec.demo import DEMO_TIME
from darec.errors import DarecError
from darec.output import command_output

OWN_COMMANDS: dict[str, str] = {
    "data": "darec.data.cli:data_main",
    "demo": "darec.demo:demo_main",
    "recommend": "darec.recommend:recommend_main",
    "export-item-vectors": "darec.recommend:export_item_vectors_main",
    "export-embeddings": "darec.export:export_main",
    "search": "darec.search.cli:search_main",
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
VERBOSE = "--verbose"
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
  export-embeddings   SASRec/LightGCN checkpoint -> safetensors + JSON sidecar:
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


def lightning_main(args: list[str]) -> None:
    """Run LightningCLI on ``args`` (the subcommand first)."""
    from lightning.pytorch.cli import LightningCLI

    from darec.callbacks import JsonlPredictionWriter
    from darec.data.datamodules import RecDataModule
    from darec.modules.base import RecModule

    class DarecCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--test_after_fit", type=bool, default=True, help="after fit, test the best checkpoint once")
            for src, dst in (("num_items", "num_items"), ("num_users", "num_users"), ("fingerprint", "data_fingerprint")):
                parser.link_arguments(f"data.{src}", f"model.init_args.{dst}", apply_on="instantiate")

        def after_fit(self) -> None:
            if self.config.fit.get("test_after_fit", True) and not self.trainer.fast_dev_run:
                ckpt = "best" if self.trainer.checkpoint_callback is not None and self.trainer.checkpoint_callback.best_model_path else None
                self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)

    with warnings.catch_warnings():
        # LightningCLI warns whenever it is given ``args`` while ``sys.argv`` has arguments, in case both were meant
        # to be parsed. darec passes the command line itself (minus what it consumed), so both are the same.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
        DarecCLI(
            RecModule,
            RecDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=42,
            trainer_defaults={"callbacks": [JsonlPredictionWriter()]},
            args=args,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )


def unknown_command(name: str) -> str:
    """The error line for a command darec does not have: every command, and the closest one."""
    commands = [*LIGHTNING_COMMANDS, *OWN_COMMANDS]
    close = difflib.get_close_matches(name, commands, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown command {name!r}{hint}. darec's commands: {', '.join(commands)}; darec --help describes them"


def main(argv: list[str] | None = None) -> int:
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
