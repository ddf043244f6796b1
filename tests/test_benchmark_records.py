"""What a benchmark's JSON records about the code it ran: the commit, and which tracked files differed from it."""

from __future__ import annotations

import subprocess


def test_git_commit_names_changed_files_and_ignores_the_benchmarks_own_outputs(benchmark_script, tmp_path) -> None:
    git_commit = benchmark_script("common").git_commit
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    for name in ("code.py", "result.json"):
        (tmp_path / name).write_text("v1\n")
    subprocess.run([*git, "add", "."], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "one"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()

    clean = git_commit(root=tmp_path)
    assert clean == {"commit": head, "dirty": False, "dirty_files": []}
    (tmp_path / "result.json").write_text("an earlier run's output\n")
    (tmp_path / "untracked.txt").write_text("not part of the code\n")
    assert git_commit((tmp_path / "result.json",), root=tmp_path)["dirty"] is False
    assert git_commit(root=tmp_path)["dirty_files"] == ["result.json"]
    (tmp_path / "code.py").write_text("v2\n")
    record = git_commit((tmp_path / "result.json",), root=tmp_path)
    assert record["dirty"] is True and record["dirty_files"] == ["code.py"]
    assert git_commit(root=tmp_path / "not-a-repo")["dirty"] is None


def test_git_commit_outside_a_repository_records_the_commit_the_sender_names(benchmark_script, tmp_path, monkeypatch) -> None:
    git_commit = benchmark_script("common").git_commit
    copy = tmp_path / "tree-sent-to-another-machine"
    copy.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.delenv("DAREC_SOURCE_COMMIT", raising=False)
    assert git_commit(root=copy) == {"commit": None, "dirty": None, "dirty_files": None}
    monkeypatch.setenv("DAREC_SOURCE_COMMIT", "0123abc")
    record = git_commit(root=copy)
    assert record["commit"] == "0123abc" and record["dirty"] is None
    assert "DAREC_SOURCE_COMMIT" in record["source"]
