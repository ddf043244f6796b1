"""Shared fixtures: small synthetic prepared datasets, written once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

# Tests use tiny models: one thread is as fast, and avoids oversubscribing shared CI cores.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """A synthetic prepared dataset (300 users, 120 items, 6 clusters, 5 cold items)."""
    from darec.data.synth import SynthConfig, write_synthetic

    out = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic(out, SynthConfig(num_cold=5))
    return out


@pytest.fixture(scope="session")
def small_synth_dir(tmp_path_factory):
    """A smaller synthetic dataset for model tests (120 users, 40 items, 4 clusters)."""
    from darec.data.synth import SynthConfig, write_synthetic

    out = tmp_path_factory.mktemp("synth_small") / "data"
    write_synthetic(out, SynthConfig(num_users=120, num_items=40, num_clusters=4, min_len=6, max_len=16, seed=1))
    return out
