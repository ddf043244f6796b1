"""The reader registry: readers by name, their options checked against their signatures.

A reader is ``fn(**options) -> (interactions, items, inputs)`` (see :mod:`darec.data.readers`);
:func:`register_reader` adds one under a name, and :func:`read_source` calls one with the options of a config.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Callable

import pandas as pd

from darec.data.coded import CodedInteractions
from darec.errors import ConfigError

log = logging.getLogger(__name__)

ReaderResult = tuple["pd.DataFrame | CodedInteractions", "pd.DataFrame | None", dict[str, str]]
Reader = Callable[..., ReaderResult]
READERS: dict[str, Reader] = {}


def register_reader(name: str) -> Callable[[Reader], Reader]:
    """Decorator registering ``fn(**options) -> (interactions, items, inputs)`` as reader ``name``."""

    def deco(fn: Reader) -> Reader:
        READERS[name] = fn
        return fn

    return deco


def reader_options(name: str) -> list[str]:
    """The option names reader ``name`` accepts (raises ConfigError for an unknown reader)."""
    if name not in READERS:
        raise ConfigError(f"unknown reader {name!r}; valid readers: {sorted(READERS)}")
    return [p for p in inspect.signature(READERS[name]).parameters]


def check_reader_options(name: str, options: dict[str, Any], where: str = "reader options") -> None:
    """Raise ConfigError for an unknown reader, an unknown option, or a missing required option."""
    valid = reader_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown} for reader {name!r}; valid options: {valid}")
    params = inspect.signature(READERS[name]).parameters
    missing = [p for p, v in params.items() if v.default is inspect.Parameter.empty and p not in options]
    if missing:
        raise ConfigError(f"{where}: reader {name!r} needs option(s) {missing}")


def read_source(name: str, options: dict[str, Any]) -> ReaderResult:
    """Run reader ``name`` with ``options`` (checked first)."""
    check_reader_options(name, options)
    log.info("reading %s data (%s)", name, ", ".join(f"{k}={v}" for k, v in options.items()))
    return READERS[name](**options)
