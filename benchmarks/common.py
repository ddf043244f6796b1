"""What every benchmark records beside its figures: the machine, the load, the commit; and the paired bootstrap."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_facts() -> dict[str, Any]:
    """CPU model name, the bf16-relevant flags from /proc/cpuinfo, and what PyTorch sees."""
    from darec.modules.backbone import cpu_has_fast_bfloat16

    name, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name is None:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model_name": name, "flags": {f: f in flags for f in CPU_FLAGS},
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_native_bfloat16": cpu_has_fast_bfloat16()}


def machine() -> dict[str, Any]:
    """Platform, cores, the CPU's model and bfloat16 support, torch threads and versions, and the load average when
    called."""
    import lightning as L

    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "cpu": cpu_facts(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "torch": torch.__version__, "lightning": L.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def git_commit(outputs: tuple[str | Path, ...] = (), root: Path = ROOT) -> dict[str, Any]:
    """HEAD, whether the working tree had uncommitted changes to tracked files, and which. ``outputs`` are the files
    the benchmark is about to write (its JSON, its plots): an earlier, uncommitted version of those does not make
    the run dirty."""

    def git(*a: str) -> str | None:
        try:
            return subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    names = git("diff", "--name-only", "HEAD")  # tracked files changed, staged or not
    if names is None:  # no git where it runs (a copy of the tree on another machine): the sender may name the commit
        sent = os.environ.get("DAREC_SOURCE_COMMIT")
        return {"commit": git("rev-parse", "HEAD") or sent, "dirty": None, "dirty_files": None,
                **({"source": "DAREC_SOURCE_COMMIT (no git repository where it ran)"} if sent else {})}
    own = {Path(o).resolve() for o in outputs}
    changed = [f for f in names.splitlines() if f and (root / f).resolve() not in own]
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(changed), "dirty_files": changed}


def command(script: str, argv: list[str] | None) -> str:
    """The command line that ran ``script`` (for the JSON)."""
    return " ".join(["python", script, *(argv if argv is not None else sys.argv[1:])])


def comma_list(text: str) -> list[str]:
    """An argparse type: ``a,b:16,c`` -> ``["a", "b:16", "c"]`` (per-layer adapters on the command line)."""
    return text.split(",")


def paired_bootstrap(diff: np.ndarray, n: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean of per-user differences with a bootstrap 95% CI over users (resampling users, ``n`` times)."""
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (n, len(diff)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(diff.mean()), "bootstrap_95ci": [float(lo), float(hi)], "users": int(len(diff))}


def seed_user_bootstrap(diff: np.ndarray, n: int = 2000, seed: int = 0) -> list[float]:
    """Bootstrap 95% CI of the mean of ``diff`` [seeds, users] (seed ``s`` of one model paired with seed ``s`` of the
    other), resampling the seeds and the users, ``n`` times."""
    rng = np.random.default_rng(seed)
    s, u = diff.shape
    means = [diff[rng.integers(0, s, s)][:, rng.integers(0, u, u)].mean() for _ in range(n)]
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [float(lo), float(hi)]


def paired_comparison(mine: np.ndarray, theirs: np.ndarray) -> dict[str, Any]:
    """Two models' per-user values compared: :func:`paired_bootstrap` over users of the difference of their means
    over seeds, with the ratio of the means. ``mine`` and ``theirs`` are [users], or [seeds, users] with seed ``s``
    of one paired with seed ``s`` of the other. With several seeds the result adds ``seed_user_95ci``
    (:func:`seed_user_bootstrap`), which also counts how much one training run varies, the epoch that validation
    selects included: resampling users alone leaves that out."""
    mine, theirs = np.atleast_2d(mine), np.atleast_2d(theirs)
    if mine.shape != theirs.shape:
        raise ValueError(f"paired values need equal shapes, got {mine.shape} and {theirs.shape}")
    out = paired_bootstrap(mine.mean(0) - theirs.mean(0))
    out["ratio"] = float(mine.mean() / theirs.mean())
    if mine.shape[0] > 1:
        out["seed_user_95ci"] = seed_user_bootstrap(mine - theirs)
        out["seeds"] = int(mine.shape[0])
    return out


def interval(ci: list[float]) -> str:
    """A 95% CI (``bootstrap_95ci`` or ``seed_user_95ci`` of :func:`paired_comparison`) as the tables print it."""
    return "[{:+.4f}, {:+.4f}]".format(*ci)


def print_targets(targets: dict[str, dict[str, Any]]) -> None:
    """One line per target: met or MISSED, and its figures."""
    for name, t in targets.items():
        print(f"{'met ' if t['met'] else 'MISSED'} {name}: " + ", ".join(f"{k} {v}" for k, v in t.items() if k != "met"))
