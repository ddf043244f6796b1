"""Figures are written atomically: a failed save leaves the previous file and no temporary behind."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from darec.figures import save_png  # noqa: E402


def test_save_png_replaces_atomically(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = save_png(fig, tmp_path / "plots" / "a.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = out.read_bytes()

    class Broken:
        def savefig(self, *a, **k):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_png(Broken(), out)
    assert out.read_bytes() == before and sorted(p.name for p in out.parent.iterdir()) == ["a.png"]
    plt.close(fig)
