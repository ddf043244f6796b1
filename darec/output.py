"""What a ``darec`` command prints, and what it keeps quiet.

darec's own messages go through the ``darec`` logger, one line each: plain for information, ``warning:``
before warnings. :func:`command_output` sets this up for the duration of one command and, unless ``verbose``,
silences third-party output that tells a user nothing they can act on: Lightning's tips and accelerator
inventory, a deprecation inside Lightning, Hugging Face progress bars. On exit everything is put back as it
was, so calling :func:`darec.cli.main.main` from Python (a test, a notebook) leaves no handler, filter or switch
behind.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator

LEVEL_ENV = "DAREC_LOG_LEVEL"
"""Environment variable overriding the level of darec's own messages (``DEBUG``, ``INFO``, ``WARNING``)."""

LIGHTNING_CHATTER = (
    "💡 Tip:",  # advertisements for Lightning's cloud products, once per Trainer
    "GPU available:",  # the accelerator inventory, two lines per Trainer
    "TPU available:",
    "HPU available:",
    "`Trainer(limit_",  # confirms a value the user (or the demo) set on purpose
    "`Trainer(val_check_interval",
    "Loaded model weights from the checkpoint at",  # repeats the "Restoring states from ..." line before it
)
"""Prefixes of Lightning's info messages that a darec command hides unless ``--verbose``."""

THIRD_PARTY_WARNINGS = (
    # Lightning builds a ``LeafSpec`` for every batch it flattens; torch >= 2.10 deprecates that. Not ours to fix.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
)
"""(message regex, category) of library warnings a darec command hides unless ``--verbose``."""

HF_PROGRESS_ENV = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")
"""Read when ``huggingface_hub``/``transformers`` and ``datasets`` are imported: their weight-loading,
download and dataset-saving bars. darec logs what it does itself."""
HF_LOGGING = ("transformers.utils.logging", "datasets.utils.logging")
"""The modules holding those libraries' progress-bar switch once they are imported."""


class CurrentStderrHandler(logging.StreamHandler):
    """A stream handler that writes to ``sys.stderr`` as it is when a message comes, not as it was when the
    handler was made. pytest, notebooks and ``contextlib.redirect_stderr`` swap that stream and may close the
    old one; a handler holding the old one then fails with "I/O operation on closed file"."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: D401
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class MessageFormatter(logging.Formatter):
    """Information as the bare message, warnings and errors after ``warning:``/``error:``; ``verbose`` adds the
    level and the logger's name to every line."""

    def __init__(self, verbose: bool = False) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s")
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.verbose or record.levelno < logging.WARNING:
            return text
        return f"{'warning' if record.levelno == logging.WARNING else 'error'}: {text}"


class DropPrefixes(logging.Filter):
    """Drops records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefixes)


def _lightning_loggers() -> list[logging.Logger]:
    """The loggers Lightning's ``rank_zero_info`` writes to (both its packages, whichever is imported later)."""
    return [logging.getLogger(n) for n in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")]



def _quiet_hf_progress_bars() -> tuple[dict[str, str | None], list[str]]:
    """Hide the Hugging Face libraries' bars: through their switch when imported, else through the environment
    variables they read when imported. Returns what :func:`_restore_hf_progress_bars` needs."""
    env = {v: os.environ.get(v) for v in HF_PROGRESS_ENV}
    switched = []
    for name in HF_LOGGING:
        module = sys.modules.get(name)
        if module is not None and module.is_progress_bar_enabled():
            module.disable_progress_bar()
            switched.append(name)
    for var, value in env.items():
        if value is None:
            os.environ[var] = "1"
    return env, switched


def _restore_hf_progress_bars(env: dict[str, str | None], switched: list[str]) -> None:
    for var, value in env.items():
        if value is None:
            os.environ.pop(var, None)
    # A library first imported during the command read the variables then and keeps its bars off for the rest
    # of the process; only the ones switched off above can be switched back on.
    for name in switched:
        sys.modules[name].enable_progress_bar()


@contextmanager
def command_output(verbose: bool = False) -> Iterator[None]:
    """darec's messages on stderr, once each, and (unless ``verbose``) third-party chatter hidden, for one command.

    The ``darec`` logger gets one handler for the block and does not also pass its messages to the root logger,
    so an application that configured logging does not print them a second time. ``DAREC_LOG_LEVEL`` sets the
    level (default ``INFO``; ``DEBUG`` with ``verbose``).
    """
    logger = logging.getLogger("darec")
    saved = (logger.level, logger.propagate)
    handler = CurrentStderrHandler()
    handler.setFormatter(MessageFormatter(verbose))
    logger.addHandler(handler)
    logger.setLevel(os.environ.get(LEVEL_ENV, "DEBUG" if verbose else "INFO").upper())
    logger.propagate = False
    chatter = DropPrefixes(LIGHTNING_CHATTER)
    hf_state = None
    try:
        with warnings.catch_warnings():
            if not verbose:
                for pattern, category in THIRD_PARTY_WARNINGS:
                    warnings.filterwarnings("ignore", message=pattern, category=category)
                for lg in _lightning_loggers():
                    lg.addFilter(chatter)
                hf_state = _quiet_hf_progress_bars()
            yield
    finally:
        for lg in _lightning_loggers():
            lg.removeFilter(chatter)
        if hf_state is not None:
            _restore_hf_progress_bars(*hf_state)
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def is_terminal(stream: object) -> bool:
    """Whether ``stream`` is an interactive terminal (progress bars redraw in place there; in a log file every
    redraw would be a line)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False

