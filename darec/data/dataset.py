"""The prepared-dataset format: the contract between data preparation and every model.

A prepared directory holds::

    manifest.json    format version, darec version, resolved config, input sha256 sums,
                     fingerprint (id maps + the three splits) and text hash
    stats.json       counts, density, sequence-length percentiles, rows dropped per reason
    sequences/       HF DatasetDict with splits train / validation / test; one row per user
                     (user id order), columns user:int32, items:list<int32>, timestamps:list<int64>
    items/           HF Dataset, one row per item id 1..N: item, raw_id, sentence, cold, attrs (JSON)
    users/           HF Dataset, one row per user id 1..U: user, raw_id

Ids: users are 1..U and items 1..N with 0 as padding. Warm items (at least one interaction)
come first, ``1..num_items``; this is the evaluation catalogue. Cold items (metadata only) follow,
``num_items+1..num_items+num_cold``.

Leave-one-out: each user's validation and test lists hold one item. Under the global time split
they hold every interaction of that period; the evaluation target is the first one, and the test
history is training plus all validation items.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from darec import __version__
from darec.errors import DataError, FingerprintError

FORMAT_VERSION = 1
SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.json"
STATS = "stats.json"


@dataclass
class Ragged:
    """Per-user variable-length sequences in CSR form. Row ``u`` is user id ``u``; row 0 is empty."""

    offsets: np.ndarray  # int64 [num_users + 2]
    items: np.ndarray  # int32 [nnz]
    timestamps: np.ndarray  # int64 [nnz]

    @classmethod
    def from_lists(cls, rows: list[list[int]], times: list[list[int]] | None = None) -> "Ragged":
        """Build from python lists; ``rows[0]`` must be the padding user (empty)."""
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        items = np.fromiter((i for r in rows for i in r), dtype=np.int32, count=int(offsets[-1]))
        if times is None:
            ts = np.zeros_like(items, dtype=np.int64)
        else:
            ts = np.fromiter((t for r in times for t in r), dtype=np.int64, count=int(offsets[-1]))
        return cls(offsets, items, ts)

    @property
    def num_rows(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u] : self.offsets[u + 1]]

    def row_times(self, u: int) -> np.ndarray:
        return self.timestamps[self.offsets[u] : self.offsets[u + 1]]

    def to_arrow(self) -> pa.Table:
        users = np.arange(self.num_rows, dtype=np.int32)[1:]
        off = (self.offsets[1:] - self.offsets[1]).astype(np.int64)
        items = self.items[self.offsets[1] :]
        times = self.timestamps[self.offsets[1] :]
        return pa.table(
            {
                "user": pa.array(users),
                "items": pa.LargeListArray.from_arrays(pa.array(off), pa.array(items)),
                "timestamps": pa.LargeListArray.from_arrays(pa.array(off), pa.array(times)),
            }
        )

    @classmethod
    def from_arrow(cls, table: pa.Table) -> "Ragged":
        table = table.combine_chunks()
        items_col = table.column("items").chunk(0) if table.num_rows else None
        if items_col is None:
            return cls(np.zeros(2, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64))
        times_col = table.column("timestamps").chunk(0)
        off = np.asarray(items_col.offsets, dtype=np.int64)
        base = off[0]
        offsets = np.concatenate([[0], off - base]).astype(np.int64)
        items = np.asarray(items_col.values, dtype=np.int32)[base : off[-1]]
        times = np.asarray(times_col.values, dtype=np.int64)[base : off[-1]]
        return cls(offsets, items, times)

    def digest(self, h: "hashlib._Hash") -> None:
        h.update(np.ascontiguousarray(self.offsets, dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(self.items, dtype="<i4").tobytes())
        h.update(np.ascontiguousarray(self.timestamps, dtype="<i8").tobytes())


@dataclass
class EvalSplit:
    """The evaluation examples of one split: one target per user, with the history before it."""

    users: np.ndarray  # int64 [n]
    targets: np.ndarray  # int64 [n]
    history: Ragged  # row k is the history of users[k] (row 0 unused: shifted by one)

    def __len__(self) -> int:
        return len(self.users)

    def history_of(self, k: int) -> np.ndarray:
        return self.history.row(k + 1)


@dataclass
class PreparedTables:
    """Everything a prepared directory holds, in memory, before it is written."""

    user_raw_ids: list[str]  # index 0 = padding ""
    item_raw_ids: list[str]  # index 0 = padding ""
    sentences: list[str]  # index 0 = ""
    attrs: list[dict[str, Any]]  # index 0 = {}
    num_items: int  # warm catalogue size
    splits: dict[str, Ragged]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.user_raw_ids) - 1

    @property
    def num_cold(self) -> int:
        return len(self.item_raw_ids) - 1 - self.num_items


def _hash_strings(h: "hashlib._Hash", values: Iterable[str]) -> None:
    for v in values:
        b = v.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)


def fingerprint_of(tables: PreparedTables) -> str:
    """sha256 of the id maps and the three splits (not of the darec version)."""
    h = hashlib.sha256(b"darec-fingerprint-v1")
    _hash_strings(h, tables.user_raw_ids)
    _hash_strings(h, tables.item_raw_ids)
    h.update(int(tables.num_items).to_bytes(8, "little"))
    for name in SPLITS:
        tables.splits[name].digest(h)
    return h.hexdigest()


def text_hash_of(sentences: list[str]) -> str:
    """sha256 of the item sentences in id order: keys text-dependent caches."""
    h = hashlib.sha256(b"darec-text-v1")
    _hash_strings(h, sentences)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_prepared_dir(path: str | os.PathLike) -> bool:
    p = Path(path) / MANIFEST
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("format") == "darec-prepared"
    except (OSError, ValueError):
        return False


class _QuietDatasets:
    """Silence HF ``datasets`` progress bars inside a block (our own logs say what happens)."""

    def __enter__(self) -> None:
        from datasets.utils import logging as ds_logging

        self._was = ds_logging.is_progress_bar_enabled()
        ds_logging.disable_progress_bar()

    def __exit__(self, *exc: object) -> None:
        from datasets.utils import logging as ds_logging

        if self._was:
            ds_logging.enable_progress_bar()


def save_prepared(
    tables: PreparedTables,
    out_dir: str | os.PathLike,
    config: dict[str, Any],
    inputs: dict[str, str],
) -> dict[str, Any]:
    """Write ``tables`` to ``out_dir`` atomically and return the manifest.

    The data is written to a temporary sibling directory and renamed into place only when complete.
    An existing ``out_dir`` that is not a darec prepared directory is never touched.
    """
    out = Path(out_dir)
    if out.exists() and not (is_prepared_dir(out) or (out.is_dir() and not any(out.iterdir()))):
        raise DataError(
            f"{out}: output directory exists and is not a darec prepared dataset; "
            "choose another --out or remove it yourself"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        with _QuietDatasets():
            return _write(tables, out, tmp, config, inputs)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write(tables: PreparedTables, out: Path, tmp: Path, config: dict[str, Any], inputs: dict[str, str]) -> dict[str, Any]:
    from datasets import Dataset, DatasetDict

    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    seqs = DatasetDict({name: Dataset(tables.splits[name].to_arrow()) for name in SPLITS})
    seqs.save_to_disk(str(tmp / "sequences"))
    n_total = len(tables.item_raw_ids) - 1
    ids = np.arange(1, n_total + 1, dtype=np.int32)
    Dataset(
        pa.table(
            {
                "item": pa.array(ids),
                "raw_id": pa.array(tables.item_raw_ids[1:], pa.string()),
                "sentence": pa.array(tables.sentences[1:], pa.string()),
                "cold": pa.array(ids > tables.num_items),
                "attrs": pa.array(
                    [json.dumps(a, ensure_ascii=False) for a in tables.attrs[1:]], pa.string()
                ),
            }
        )
    ).save_to_disk(str(tmp / "items"))
    Dataset(
        pa.table(
            {
                "user": pa.array(np.arange(1, tables.num_users + 1, dtype=np.int32)),
                "raw_id": pa.array(tables.user_raw_ids[1:], pa.string()),
            }
        )
    ).save_to_disk(str(tmp / "users"))
    manifest = {
        "format": "darec-prepared",
        "format_version": FORMAT_VERSION,
        "darec_version": __version__,
        "config": config,
        "inputs": inputs,
        "fingerprint": fingerprint_of(tables),
        "text_hash": text_hash_of(tables.sentences),
        "num_users": tables.num_users,
        "num_items": tables.num_items,
        "num_cold_items": tables.num_cold,
    }
    (tmp / STATS).write_text(json.dumps(tables.stats, indent=2, sort_keys=True))
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return manifest


class PreparedData:
    """A prepared dataset loaded from disk (read-only, numpy-backed)."""

    def __init__(self, path: str | os.PathLike):
        from datasets import load_from_disk

        self.path = Path(path)
        if not is_prepared_dir(self.path):
            raise DataError(
                f"{self.path}: not a darec prepared dataset (no valid {MANIFEST}); "
                "run `darec data prepare` first"
            )
        self.manifest: dict[str, Any] = json.loads((self.path / MANIFEST).read_text())
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{self.path}: prepared with format {self.manifest.get('format_version')}, "
                f"this darec reads format {FORMAT_VERSION}; prepare it again"
            )
        self.stats: dict[str, Any] = json.loads((self.path / STATS).read_text())
        seqs = load_from_disk(str(self.path / "sequences"))
        self.train, self.valid, self.test = (Ragged.from_arrow(seqs[s].data.table) for s in SPLITS)
        items = load_from_disk(str(self.path / "items")).data.table
        users = load_from_disk(str(self.path / "users")).data.table
        self.item_raw_ids: list[str] = [""] + items.column("raw_id").to_pylist()
        self.sentences: list[str] = [""] + items.column("sentence").to_pylist()
        self._attrs_json: list[str] = ["{}"] + items.column("attrs").to_pylist()
        self.user_raw_ids: list[str] = [""] + users.column("raw_id").to_pylist()
        self.num_users: int = int(self.manifest["num_users"])
        self.num_items: int = int(self.manifest["num_items"])
        self.num_cold: int = int(self.manifest["num_cold_items"])
        self._item_index: dict[str, int] | None = None
        self._user_index: dict[str, int] | None = None

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def text_hash(self) -> str:
        return self.manifest["text_hash"]

    @property
    def num_total_items(self) -> int:
        return self.num_items + self.num_cold

    def attrs(self, item: int) -> dict[str, Any]:
        return json.loads(self._attrs_json[item])

    def item_id(self, raw_id: str) -> int:
        if self._item_index is None:
            self._item_index = {r: i for i, r in enumerate(self.item_raw_ids) if i > 0}
        try:
            return self._item_index[str(raw_id)]
        except KeyError:
            raise DataError(f"unknown item id {raw_id!r} (not in {self.path})") from None

    def user_id(self, raw_id: str) -> int:
        if self._user_index is None:
            self._user_index = {r: i for i, r in enumerate(self.user_raw_ids) if i > 0}
        try:
            return self._user_index[str(raw_id)]
        except KeyError:
            raise DataError(f"unknown user id {raw_id!r} (not in {self.path})") from None

    def check_fingerprint(self, fingerprint: str, what: str) -> None:
        """Raise :class:`FingerprintError` unless ``fingerprint`` matches this dataset."""
        if fingerprint != self.fingerprint:
            raise FingerprintError(
                f"{what} was built from a different prepared dataset "
                f"(fingerprint {fingerprint[:12]}…, this one is {self.fingerprint[:12]}… at "
                f"{self.path}); rebuild it from this dataset"
            )

    def train_sequences(self) -> list[np.ndarray]:
        """Every user's training sequence, users ``1..num_users`` in order (views, no copies)."""
        return [self.train.row(u) for u in range(1, self.num_users + 1)]

    def train_item_counts(self) -> np.ndarray:
        """Training interactions per item id, length ``num_total_items + 1``."""
        return np.bincount(self.train.items, minlength=self.num_total_items + 1).astype(np.int64)

    def eval_split(self, split: str) -> EvalSplit:
        """One target per user with a non-empty ``split``; the history is everything before it.

        ``validation``: history = training items. ``test``: history = training + validation items.
        """
        if split not in ("validation", "test"):
            raise ValueError(f"split must be 'validation' or 'test', got {split!r}")
        tgt = self.valid if split == "validation" else self.test
        lens = tgt.lengths
        users = np.nonzero(lens > 0)[0]
        users = users[users > 0]
        targets = tgt.items[tgt.offsets[users]].astype(np.int64)
        tr_len = self.train.lengths[users]
        hist_len = tr_len + (self.valid.lengths[users] if split == "test" else 0)
        offsets = np.zeros(len(users) + 2, dtype=np.int64)
        np.cumsum(hist_len, out=offsets[2:])
        items = np.empty(int(offsets[-1]), dtype=np.int32)
        times = np.empty(int(offsets[-1]), dtype=np.int64)
        for k, u in enumerate(users):
            parts = [self.train.row(u)]
            tparts = [self.train.row_times(u)]
            if split == "test":
                parts.append(self.valid.row(u))
                tparts.append(self.valid.row_times(u))
            items[offsets[k + 1] : offsets[k + 2]] = np.concatenate(parts)
            times[offsets[k + 1] : offsets[k + 2]] = np.concatenate(tparts)
        return EvalSplit(users.astype(np.int64), targets, Ragged(offsets, items, times))
