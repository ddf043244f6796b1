"""``darec fit | validate | test | predict``: LightningCLI over every RecModule and RecDataModule."""

from __future__ import annotations

import warnings

from darec.errors import DarecError

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def lightning_main(args: list[str]) -> None:
    """Run LightningCLI on ``args`` (the subcommand first)."""
    from lightning.pytorch.cli import LightningCLI

    from darec.callbacks import JsonlPredictionWriter
    from darec.data.datamodules.base import RecDataModule
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
        try:
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
        except Exception as e:
            own = darec_cause(e)
            if own is None or own is e:
                raise
            raise own from None


def darec_cause(exc: BaseException) -> DarecError | None:
    """The :class:`DarecError` behind ``exc``, if any: jsonargparse re-raises what a model's or data module's
    ``__init__`` raises as its own error, with the whole resolved namespace, and darec's message is the useful part."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, DarecError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None
