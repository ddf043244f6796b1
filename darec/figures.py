"""Writing matplotlib figures atomically (see :mod:`darec.atomic`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from darec.atomic import atomic_path


def save_png(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically: a crash leaves the old file or none, never a truncated one."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return Path(path)
