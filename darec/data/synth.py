"""A deterministic synthetic dataset with planted sequential and textual structure.

Items belong to latent clusters. An item's text names its cluster's genre and carries words drawn
from a cluster vocabulary, so text identifies the cluster. Users walk between clusters by a
Markov chain (mostly stay, else move to the "next" cluster), choosing items inside a cluster by a
Zipf popularity. A sequential model can therefore predict the next cluster from the last item and
beat popularity, and a text-only model can tell clusters apart only through the text, so shuffling
texts across items hurts it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from darec.data.pipeline import PrepareOptions, build_tables
from darec.data.dataset import save_prepared

_GENRES = ["Comedy", "Horror", "Western", "Romance", "Sci-Fi", "Documentary", "Musical", "Thriller", "Animation", "War", "Crime", "Fantasy"]
_WORDS = [
    "laugh joke party wedding clown holiday",
    "ghost blood night curse grave scream",
    "cowboy desert sheriff horse saloon outlaw",
    "love kiss heart letter summer dance",
    "space robot planet alien future star",
    "nature ocean history truth river earth",
    "song stage melody band chorus piano",
    "spy chase secret danger agent escape",
    "dragon toy magic cartoon puppy dream",
    "soldier battle army tank general front",
    "heist gang detective murder money city",
    "wizard kingdom sword quest elf castle",
]


@dataclass
class SynthConfig:
    num_users: int = 300  # users in the log
    num_items: int = 120  # items with interactions (the catalogue)
    num_clusters: int = 6  # latent clusters (at most 12)
    min_len: int = 8  # shortest user sequence
    max_len: int = 30  # longest user sequence
    stay_prob: float = 0.6  # probability the next item is from the same cluster
    next_prob: float = 0.35  # probability it is from the following cluster (else uniform)
    num_cold: int = 0  # extra items with text but no interactions
    seed: int = 0  # seeds everything


def make_synthetic(cfg: SynthConfig = SynthConfig()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return canonical (interactions, items) tables."""
    if not 1 <= cfg.num_clusters <= len(_GENRES):
        raise ValueError(f"num_clusters must be in 1..{len(_GENRES)}")
    rng = np.random.default_rng(cfg.seed)
    n_all = cfg.num_items + cfg.num_cold
    cluster = np.arange(n_all) % cfg.num_clusters
    rng.shuffle(cluster)
    members = [np.nonzero(cluster[: cfg.num_items] == c)[0] for c in range(cfg.num_clusters)]
    weights = [1.0 / np.arange(1, len(m) + 1) ** 0.8 for m in members]
    weights = [w / w.sum() for w in weights]
    items_rows = []
    for i in range(n_all):
        c = cluster[i]
        words = _WORDS[c].split()
        title = " ".join(rng.choice(words, size=2, replace=False)).title() + f" {i + 1}"
        items_rows.append({"item": str(i + 1), "title": title, "year": int(1980 + rng.integers(0, 40)), "genres": [_GENRES[c]]})
    rows = []
    t0 = 1_000_000_000
    for u in range(cfg.num_users):
        length = int(rng.integers(cfg.min_len, cfg.max_len + 1))
        c = int(rng.integers(cfg.num_clusters))
        seen: set[int] = set()
        t = t0 + int(rng.integers(0, 10_000))
        for _ in range(length):
            r = rng.random()
            if r >= cfg.stay_prob:
                c = (c + 1) % cfg.num_clusters if r < cfg.stay_prob + cfg.next_prob else int(rng.integers(cfg.num_clusters))
            for _try in range(20):
                it = int(rng.choice(members[c], p=weights[c]))
                if it not in seen:
                    break
            if it in seen:
                continue
            seen.add(it)
            t += int(rng.integers(1, 1000))
            rows.append((str(u + 1), str(it + 1), t, float(rng.integers(1, 6))))
    inter = pd.DataFrame(rows, columns=["user", "item", "timestamp", "rating"])
    return inter, pd.DataFrame(items_rows)


def write_synthetic(out_dir: str | os.PathLike, cfg: SynthConfig = SynthConfig(), opts: PrepareOptions | None = None) -> dict:
    """Generate the synthetic dataset and write it as a prepared directory; returns the manifest."""
    from dataclasses import asdict

    inter, items = make_synthetic(cfg)
    tables = build_tables(inter, items, opts or PrepareOptions(), source="synthetic")
    return save_prepared(tables, out_dir, config={"synthetic": asdict(cfg)}, inputs={})
