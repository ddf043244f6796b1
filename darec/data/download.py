"""Fetch MovieLens 100k: the GroupLens archive, else the copy inside the ``recbole`` wheel on PyPI.

Files land in ``DIR/ml-100k/`` with a ``source.json`` naming the source and the sha256 of every
file. A second call finds them verified and does nothing. Files are extracted into a temporary
directory beside the target and renamed into place, so an interrupted download leaves nothing
half-written.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from darec.atomic import atomic_write_text
from darec.data.dataset import sha256_file
from darec.errors import DataError

log = logging.getLogger(__name__)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
GROUPLENS_SHA256 = "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
"""sha256 of ml-100k.zip (4,924,029 bytes), as pinned by tensorflow_datasets' url_checksums."""
GROUPLENS_MD5 = "0e33842e24a9c977be4e0107933c0723"
"""md5 of ml-100k.zip, as published by GroupLens."""
GROUPLENS_MEMBERS = ("u.data", "u.item", "u.user", "README")
TIMEOUT_S = 5.0

RECBOLE_VERSION = "1.2.1"
RECBOLE_PREFIX = "recbole/dataset_example/ml-100k/"
RECBOLE_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
SOURCE_FILE = "source.json"
DATASET_DIR = "ml-100k"


def _verified(target: Path) -> str | None:
    """The source recorded in ``target/source.json`` if every file it lists is intact, else None."""
    meta = target / SOURCE_FILE
    if meta.is_file():
        try:
            info = json.loads(meta.read_text())
            files: dict[str, str] = info["files"]
            source = str(info["source"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if source == "recbole" and any(files.get(n) != h for n, h in RECBOLE_SHA256.items()):
            return None
        ok = files and all((target / n).is_file() and sha256_file(target / n) == h for n, h in files.items())
        return source if ok else None
    if all((target / n).is_file() and sha256_file(target / n) == h for n, h in RECBOLE_SHA256.items()):
        return "recbole"
    return None


def _fetch_grouplens(url: str = GROUPLENS_URL, timeout: float = TIMEOUT_S) -> bytes:
    """The ml-100k.zip archive; raises OSError (or urllib errors) when it cannot be fetched."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def _extract_grouplens(archive: bytes, tmp: Path) -> dict[str, str]:
    sha = hashlib.sha256(archive).hexdigest()
    if sha != GROUPLENS_SHA256:
        raise DataError(f"{GROUPLENS_URL}: sha256 {sha} does not match the pinned {GROUPLENS_SHA256}")
    files: dict[str, str] = {}
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        for name in GROUPLENS_MEMBERS:
            data = zf.read(f"{DATASET_DIR}/{name}")
            (tmp / name).write_bytes(data)
            files[name] = hashlib.sha256(data).hexdigest()
    return files


def _pip_download_wheel(dest: Path) -> Path:
    """Download the ``recbole`` wheel (no dependencies, no install) into ``dest``; return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", f"recbole=={RECBOLE_VERSION}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise OSError(f"pip download failed (exit {proc.returncode}): {' / '.join(tail)}")
    wheels = sorted(dest.glob(f"recbole-{RECBOLE_VERSION}-*.whl"))
    if not wheels:
        raise OSError(f"pip download produced no recbole {RECBOLE_VERSION} wheel in {dest}")
    return wheels[0]


def _extract_recbole(wheel: Path, tmp: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    try:
        with zipfile.ZipFile(wheel) as zf:
            for name, pinned in RECBOLE_SHA256.items():
                data = zf.read(RECBOLE_PREFIX + name)
                sha = hashlib.sha256(data).hexdigest()
                if sha != pinned:
                    raise DataError(f"{wheel}:{RECBOLE_PREFIX}{name}: sha256 {sha} does not match the pinned {pinned}")
                (tmp / name).write_bytes(data)
                files[name] = sha
    except (zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"{wheel}: not a usable recbole wheel ({e})") from None
    return files


def _install(tmp: Path, target: Path, source: str, origin: str, files: dict[str, str]) -> None:
    """Move the extracted files from ``tmp`` into ``target`` (whole directory when it is new)."""
    info = {"dataset": "ml-100k", "source": source, "origin": origin, "files": files}
    (tmp / SOURCE_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
    if not target.exists():
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        os.replace(tmp, target)
        return
    for name in files:
        os.replace(tmp / name, target / name)
    atomic_write_text(target / SOURCE_FILE, json.dumps(info, indent=2, sort_keys=True))


def _manual_help(target: Path) -> str:
    return (
        f"could not download ml-100k from GroupLens ({GROUPLENS_URL}) nor from the recbole=={RECBOLE_VERSION} "
        f"wheel on PyPI. Place the files by hand: either unzip ml-100k.zip from GroupLens so that "
        f"{target / 'u.data'} and {target / 'u.item'} exist, or copy ml-100k.inter and ml-100k.item from "
        f"{RECBOLE_PREFIX} inside the recbole-{RECBOLE_VERSION} wheel into {target}/; then point the config's "
        f"`options.path` at {target}"
    )


def download_ml100k(dest_dir: str | os.PathLike, force: bool = False) -> Path:
    """Make sure ``dest_dir/ml-100k`` holds verified ml-100k files; return that directory.

    Tries GroupLens (5 s timeout, pinned sha256), then the ``recbole`` wheel from PyPI (pinned sha256
    per file). Does nothing when the files are already there and verified (unless ``force``).
    """
    dest = Path(dest_dir)
    target = dest / DATASET_DIR
    if not force and target.is_dir():
        found = _verified(target)
        if found is not None:
            log.info("ml-100k already present and verified in %s (source: %s); nothing to do", target, found)
            if not (target / SOURCE_FILE).exists():
                files = {n: sha256_file(target / n) for n in RECBOLE_SHA256}
                info = {"dataset": "ml-100k", "source": found, "origin": "found in place", "files": files}
                atomic_write_text(target / SOURCE_FILE, json.dumps(info, indent=2, sort_keys=True))
            return target
    dest.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix=f".{DATASET_DIR}.", suffix=".tmp", dir=dest))
    try:
        log.info("ml-100k: trying GroupLens %s (timeout %.0f s)", GROUPLENS_URL, TIMEOUT_S)
        try:
            files = _extract_grouplens(_fetch_grouplens(), tmp)
            _install(tmp, target, "grouplens", GROUPLENS_URL, files)
            log.info("ml-100k: GroupLens archive verified and extracted into %s", target)
            return target
        except (OSError, urllib.error.URLError, zipfile.BadZipFile, KeyError, DataError) as e:
            errors.append(f"GroupLens: {e}")
            log.warning("ml-100k: GroupLens failed (%s); trying the recbole==%s wheel from PyPI", e, RECBOLE_VERSION)
        with tempfile.TemporaryDirectory(prefix="darec-recbole-") as wheel_dir:
            try:
                wheel = _pip_download_wheel(Path(wheel_dir))
                files = _extract_recbole(wheel, tmp)
                _install(tmp, target, "recbole", f"pypi:recbole=={RECBOLE_VERSION}", files)
                log.info("ml-100k: recbole wheel files verified and extracted into %s", target)
                return target
            except (OSError, subprocess.SubprocessError, DataError) as e:
                errors.append(f"PyPI recbole wheel: {e}")
                log.warning("ml-100k: recbole wheel failed (%s)", e)
        raise DataError(_manual_help(target) + " (" + "; ".join(errors) + ")")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
