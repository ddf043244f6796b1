"""Low-level reading of raw input files, with errors that name the file and, where it applies, the line.

Every failure a user can cause (missing or empty file, bad encoding, wrong delimiter, truncated
gzip, malformed JSON, non-numeric timestamp) becomes a :class:`~darec.errors.DataError`; no raw
pandas, json or gzip traceback escapes.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import logging
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from darec.errors import ConfigError, DataError

log = logging.getLogger(__name__)

LARGE_FILE = 32 << 20
"""Files at least this large (bytes on disk) are read with a progress bar."""

_CHUNK = 8 << 20
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)
_DELIMITER_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe", " ": "space", "::": "'::'"}


def describe_sep(sep: str) -> str:
    """A readable name for a delimiter (``"\\t"`` -> ``tab``)."""
    return _DELIMITER_NAMES.get(sep, repr(sep))


def _open_binary(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """Open ``path`` for reading bytes; returns (raw file, decompressed stream)."""
    try:
        raw = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror or e})") from None
    stream: BinaryIO = gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw  # type: ignore[assignment]
    return raw, stream


def _progress(path: Path) -> tqdm:
    size = path.stat().st_size
    return tqdm(total=size, unit="B", unit_scale=True, desc=f"reading {path.name}", disable=size < LARGE_FILE, leave=False)


def read_bytes(path: str | os.PathLike) -> bytes:
    """All bytes of ``path`` (gunzipped when it ends in ``.gz``), with a progress bar for large files."""
    path = Path(path)
    raw, stream = _open_binary(path)
    parts: list[bytes] = []
    try:
        with raw, stream, _progress(path) as bar:
            while block := stream.read(_CHUNK):
                parts.append(block)
                bar.update(raw.tell() - bar.n)
    except _GZIP_ERRORS as e:
        raise DataError(f"{path}: truncated or corrupt gzip file ({e}); download it again") from None
    return b"".join(parts)


def decode(path: str | os.PathLike, data: bytes, encoding: str = "utf-8") -> str:
    """Decode ``data`` read from ``path``; a decode error names the byte offset and line."""
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}, line {line}: not valid {encoding} (byte offset {e.start}: {data[e.start:e.start + 1]!r}); "
            "set the reader's `encoding` option (e.g. latin-1)"
        ) from None
    except LookupError:
        raise DataError(f"{path}: unknown encoding {encoding!r}") from None
    return text[1:] if text.startswith("\ufeff") else text


def read_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """The decoded text of ``path``; an empty (or whitespace-only) file is an error."""
    text = decode(path, read_bytes(path), encoding)
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    return text


@dataclass
class RawTable:
    """A table read as strings, able to name the source line of any data row.

    ``text`` is the decoded file for delimited text, or empty for a binary table (Parquet), whose
    rows are then named by position.
    """

    path: Path
    df: pd.DataFrame
    text: str
    header_lines: int

    def line(self, row: int) -> int:
        """The 1-based line number of data row ``row`` (blank lines skipped, as the parser does)."""
        seen = -self.header_lines
        for no, line in enumerate(self.text.splitlines(), start=1):
            if line.strip():
                if seen == row:
                    return no
                seen += 1
        return row + 1 + self.header_lines

    def where(self, row: int, column: str | None = None) -> str:
        """``path, line N[, column 'c']`` for error messages."""
        col = f", column {column!r}" if column is not None else ""
        if not self.text:
            return f"{self.path}, row {row + 1}{col}"
        return f"{self.path}, line {self.line(row)}{col}"

    def require(self, columns: list[Any]) -> None:
        """Raise unless every one of ``columns`` is present."""
        missing = [c for c in columns if c not in self.df.columns]
        if not missing:
            return
        found = [str(c) for c in self.df.columns]
        if len(found) == 1 and len(columns) > 1:
            seps = [describe_sep(s) for s in (",", "\t", ";", "|") if s in found[0]]
            looks = f" (the header looks {seps[0]}-separated)" if seps else ""
            raise DataError(
                f"{self.path}, line 1: expected {len(columns)} columns including {missing}, found 1 "
                f"({found[0]!r}){looks}; check the delimiter (`sep`)"
            )
        raise DataError(f"{self.path}: missing required column(s) {missing} (columns found: {found})")

    def nonempty(self, column: Any, what: str) -> pd.Series:
        """Column ``column`` with every value stripped; an empty value is an error naming its line."""
        raw = self.df[column]
        values = raw.astype(str).str.strip()
        bad = np.flatnonzero((raw.isna() | (values == "")).to_numpy())
        if len(bad):
            raise DataError(f"{self.where(int(bad[0]), str(column))}: empty {what}")
        return values

    def numbers(self, column: Any, what: str, fmt: str = "numeric", allow_missing: bool = False) -> pd.Series:
        """Column ``column`` as float64; see :func:`parse_times` for ``fmt``. Bad values name their line."""
        raw = self.df[column]
        values = parse_times(raw, fmt) if fmt != "numeric" else pd.to_numeric(raw.astype(str).str.strip(), errors="coerce")
        values = values.astype("float64")
        bad = ~np.isfinite(values.to_numpy())
        if allow_missing:
            bad &= (raw.astype(str).str.strip() != "").to_numpy()
        idx = np.flatnonzero(bad)
        if len(idx):
            r = int(idx[0])
            kind = "a number" if fmt in ("numeric", "ms") else f"a date/time ({fmt})"
            raise DataError(f"{self.where(r, str(column))}: {what} {raw.iloc[r]!r} is not {kind}")
        return values


def parse_times(values: pd.Series, fmt: str) -> pd.Series:
    """Parse timestamps to float seconds since the epoch; unparsable values become NaN.

    ``fmt``: ``numeric`` (numbers as they are), ``ms`` (numeric milliseconds), ``iso`` (ISO 8601
    dates or date-times, UTC unless they carry an offset) or a ``strptime`` pattern such as
    ``%d/%m/%Y``.
    """
    s = values.astype(str).str.strip()
    if fmt == "numeric":
        return pd.to_numeric(s, errors="coerce").astype("float64")
    if fmt == "ms":
        return pd.to_numeric(s, errors="coerce").astype("float64") / 1000.0
    pattern = "ISO8601" if fmt == "iso" else fmt
    dt = pd.to_datetime(s, format=pattern, utc=True, errors="coerce")
    return ((dt - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).astype("float64")


def parse_time_value(value: Any, where: str) -> float:
    """One timestamp from a config: a number (as is) or an ISO 8601 date string (UTC seconds)."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number or an ISO date, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if hasattr(value, "isoformat"):
        value = value.isoformat()
    if isinstance(value, str):
        got = parse_times(pd.Series([value]), "iso").iloc[0]
        if np.isfinite(got):
            return float(got)
    raise ConfigError(f"{where}: {value!r} is neither a number nor an ISO date (e.g. 1998-03-01)")


def read_delimited(
    path: str | os.PathLike,
    sep: str,
    *,
    header: bool,
    expected_columns: int | None = None,
    encoding: str = "utf-8",
    quoting: bool = True,
    text: str | None = None,
    sep_label: str | None = None,
) -> RawTable:
    """Read a delimited text file as strings (every column ``str``, missing values ``""``).

    ``expected_columns`` (header-less formats) makes a mismatch in the first line an error that
    suggests checking the delimiter. ``text`` may give already decoded (or rewritten) content, and
    ``sep_label`` the delimiter's name in messages when ``text`` was rewritten to another one.
    """
    path = Path(path)
    label = sep_label or describe_sep(sep)
    if text is None:
        text = read_text(path, encoding)
    elif not text.strip():
        raise DataError(f"{path}: the file is empty")
    lines = (ln for ln in text.splitlines() if ln.strip())
    first = next(lines)
    if header and next(lines, None) is None:
        raise DataError(f"{path}: no data rows (the file has only a header line)")
    n_first = len(first.split(sep))
    if expected_columns is not None and n_first != expected_columns:
        line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.strip())
        raise DataError(
            f"{path}, line {line}: expected {expected_columns} columns separated by {label}, "
            f"found {n_first}; check the delimiter"
        )
    try:
        df = pd.read_csv(
            io.StringIO(text),
            sep=sep,
            header=0 if header else None,
            dtype=str,
            na_filter=False,
            quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE,
            engine="c" if len(sep) == 1 else "python",
            skip_blank_lines=True,
        )
    except (pd.errors.ParserError, ValueError, csv.Error) as e:
        msg = str(e).replace("Error tokenizing data. C error: ", "").strip()
        m = re.search(r"line (\d+)", msg)
        where = f"{path}, line {m.group(1)}" if m else str(path)
        raise DataError(f"{where}: cannot parse ({msg}); check the delimiter ({label}) and quoting") from None
    if header:
        df.columns = [str(c).strip() for c in df.columns]
    return RawTable(path, df, text, 1 if header else 0)


def read_parquet(path: str | os.PathLike) -> pd.DataFrame:
    """Read a Parquet file; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises many unrelated types for a damaged file
        raise DataError(f"{path}: cannot read as Parquet ({type(e).__name__}: {e})") from None


def iter_json_lines(path: str | os.PathLike, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream ``(line number, record)`` from a JSON-lines file (optionally ``.gz``), line by line.

    Lines that are not strict JSON are tried as Python literals (older Amazon metadata dumps are
    written that way). Blank lines are skipped. An empty file is an error.
    """
    path = Path(path)
    raw, stream = _open_binary(path)
    no = 0
    any_record = False
    try:
        with raw, stream, _progress(path) as bar:
            for no, line in enumerate(stream, start=1):
                if no % 10000 == 0:
                    bar.update(raw.tell() - bar.n)
                if not line.strip():
                    continue
                try:
                    text = line.decode(encoding)
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}, line {no}: not valid {encoding} (byte {e.start} of the line)") from None
                yield no, _parse_record(path, no, text)
                any_record = True
    except _GZIP_ERRORS as e:
        raise DataError(f"{path}, after line {no}: truncated or corrupt gzip file ({e}); download it again") from None
    if not any_record:
        raise DataError(f"{path}: the file is empty")


def _parse_record(path: Path, no: int, text: str) -> dict[str, Any]:
    text = text.rstrip("\r\n")
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        try:
            rec = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise DataError(f"{path}, line {no}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(rec, dict):
        raise DataError(f"{path}, line {no}: expected a JSON object, got {type(rec).__name__}")
    return rec
