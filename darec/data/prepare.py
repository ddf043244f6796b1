"""YAML-driven data preparation: read a source, filter, split, write a prepared directory.

A config looks like::

    reader: ml-100k               # a name in darec.data.readers.registry.READERS
    options: {path: data/raw/ml-100k}
    out: data/ml-100k
    filter: {rating_threshold: null, user_core: 0, item_core: 0, duplicates: keep_first}
    split: {kind: leave_one_out}
    text: {fields: [title, year, genres]}

:func:`prepare` reuses an existing output when its manifest records the same config and the same
input sha256 sums, and rebuilds it otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from darec.data.pipeline import FilterOptions, PrepareOptions, SplitOptions, TextOptions, build_tables
from darec.data.dataset import is_prepared_dir, MANIFEST, save_prepared, sha256_file, STATS
from darec.data.rawio import parse_time_value
from darec.data.readers.registry import check_reader_options, read_source
from darec.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Everything that decides a prepared dataset."""

    reader: str  # reader name, see darec.data.readers.registry.READERS
    out: str  # output directory of the prepared dataset
    options: dict[str, Any] = field(default_factory=dict)  # reader options (paths, sep, columns, flavour...)
    filter: FilterOptions = field(default_factory=FilterOptions)
    split: SplitOptions = field(default_factory=SplitOptions)
    text: TextOptions = field(default_factory=TextOptions)

    @property
    def prepare_options(self) -> PrepareOptions:
        return PrepareOptions(filter=self.filter, split=self.split, text=self.text)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible form (what the manifest records)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    def identity(self) -> dict[str, Any]:
        """The config without ``out``: what the cache compares."""
        d = self.to_dict()
        d.pop("out", None)
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "data config") -> "DataConfig":
        """Build and validate from a mapping; unknown keys or bad values raise ConfigError."""
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected a mapping at the top level, got {type(d).__name__}")
        _check_keys(d, cls, where)
        for key in ("reader", "out"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise ConfigError(f"{where}: `{key}` is required and must be a string")
        options = d.get("options") or {}
        if not isinstance(options, dict):
            raise ConfigError(f"{where}: `options` must be a mapping of reader options")
        check_reader_options(d["reader"], options, f"{where}: options")
        split = _section(SplitOptions, d.get("split"), f"{where}: split")
        for name in ("valid_start", "test_start"):
            v = getattr(split, name)
            if v is not None:
                setattr(split, name, parse_time_value(v, f"{where}: split.{name}"))
        if split.kind == "time" and (split.valid_start is None or split.test_start is None):
            raise ConfigError(f"{where}: split.kind 'time' needs split.valid_start and split.test_start")
        return cls(
            reader=d["reader"],
            out=d["out"],
            options=dict(options),
            filter=_section(FilterOptions, d.get("filter"), f"{where}: filter"),
            split=split,
            text=_section(TextOptions, d.get("text"), f"{where}: text"),
        )


def _check_keys(d: dict[str, Any], cls: type, where: str) -> None:
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in set(d) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {valid}")


def _check_value(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a simple type hint (Literal, Optional, int, float, str, list[str])."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(hint))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_value(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return list(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _section(cls: type, d: Any, where: str) -> Any:
    """Build the options dataclass ``cls`` from mapping ``d`` (None: defaults)."""
    if d is None:
        return cls()
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {d!r}")
    _check_keys(d, cls, where)
    hints = typing.get_type_hints(cls)
    values = {}
    for k, v in d.items():
        if cls is SplitOptions and k in ("valid_start", "test_start") and v is not None and not isinstance(v, (int, float)):
            values[k] = v
            continue
        values[k] = _check_value(v, hints[k], f"{where}.{k}")
    return cls(**values)


def load_config(path: str | os.PathLike) -> DataConfig:
    """Read and validate a data config YAML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read the config ({e})") from None
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}, line {mark.line + 1}" if mark is not None else str(p)
        raise ConfigError(f"{where}: invalid YAML ({getattr(e, 'problem', None) or e})") from None
    if d is None:
        raise ConfigError(f"{p}: the config file is empty")
    return DataConfig.from_dict(d, str(p))


def _inputs_unchanged(inputs: dict[str, str]) -> bool:
    for path, digest in inputs.items():
        p = Path(path)
        if not p.is_file() or sha256_file(p) != digest:
            return False
    return bool(inputs)


def is_up_to_date(cfg: DataConfig, out: str | os.PathLike) -> bool:
    """True when ``out`` is a prepared dataset built from this config and from unchanged inputs."""
    out = Path(out)
    if not is_prepared_dir(out):
        return False
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    recorded = dict(manifest.get("config") or {})
    recorded.pop("out", None)
    return recorded == cfg.identity() and _inputs_unchanged(manifest.get("inputs") or {})


def prepare(cfg: DataConfig, out: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Build the prepared dataset of ``cfg`` in ``out`` (default ``cfg.out``); return its path.

    When ``out`` already holds the dataset of the same config and unchanged inputs it is reused
    (unless ``force``). Nothing half-written is ever left in ``out``.
    """
    out_path = Path(out if out is not None else cfg.out)
    if not force and is_up_to_date(cfg, out_path):
        log.info("%s is up to date (same config and input sha256); reusing it", out_path)
        return out_path
    if out_path.exists() and not is_prepared_dir(out_path) and not (out_path.is_dir() and not any(out_path.iterdir())):
        raise DataError(
            f"{out_path}: output directory exists and is not a darec prepared dataset; "
            "choose another --out or remove it yourself"
        )
    interactions, items, inputs = read_source(cfg.reader, cfg.options)
    source = next(iter(inputs), cfg.reader)
    log.info("%s: %d interactions read; filtering and splitting", source, len(interactions))
    tables = build_tables(interactions, items, cfg.prepare_options, source=source)
    config = cfg.to_dict()
    config["out"] = str(out_path)
    manifest = save_prepared(tables, out_path, config, inputs)
    log.info("wrote %s (fingerprint %s)\n%s", out_path, manifest["fingerprint"][:12], format_stats(tables.stats))
    return out_path


def load_stats(path: str | os.PathLike) -> dict[str, Any]:
    """The stats of a prepared directory (checks it is one)."""
    p = Path(path)
    if not is_prepared_dir(p):
        raise DataError(f"{p}: not a darec prepared dataset (no valid {MANIFEST}); run `darec data prepare` first")
    try:
        return json.loads((p / STATS).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{p / STATS}: cannot read the stats ({e})") from None


def format_stats(stats: dict[str, Any]) -> str:
    """A readable table of a prepared dataset's stats."""
    rows: list[tuple[str, str]] = []

    def add(label: str, key: str, fmt: str = "{:,}") -> None:
        if key in stats:
            rows.append((label, fmt.format(stats[key])))

    add("users", "users")
    add("items (catalogue)", "items")
    add("cold items", "cold_items")
    add("interactions", "interactions")
    add("density", "density", "{:.4%}")
    add("train interactions", "train_interactions")
    add("validation interactions", "validation_interactions")
    add("test interactions", "test_interactions")
    add("split", "split", "{}")
    add("items without metadata", "items_without_metadata")
    add("input rows", "input_rows")
    seq = stats.get("sequence_length") or {}
    if seq:
        keys = [k for k in ("min", "p5", "p25", "median", "p75", "p95", "max", "mean") if k in seq]
        rows.append(("sequence length", "  ".join(f"{k} {seq[k]:g}" for k in keys)))
    for reason, n in (stats.get("dropped") or {}).items():
        rows.append((f"dropped: {reason.replace('_', ' ')}", f"{n:,}"))
    width = max((len(a) for a, _ in rows), default=0)
    return "\n".join(f"  {a:<{width}}  {b}" for a, b in rows)
