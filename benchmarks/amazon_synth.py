"""A seeded synthetic interaction log in the Amazon Reviews 2023 JSON-lines format (gzipped).

``write_amazon2023(dir, rows)`` writes ``reviews.jsonl.gz`` (``user_id``, ``parent_asin``, ``asin``,
``rating``, ``timestamp`` in ms, plus the text fields a real dump carries) and ``meta.jsonl.gz``
(``parent_asin``, ``title``, ``store``, ``categories``). Item popularity is Zipf-like, users have
geometric activity, some (user, item) pairs repeat, some timestamps tie within a user, some items
have no metadata and some metadata items have no review (cold items). Used by
``benchmarks/prepare_scale.py`` and by the streaming-reader test.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

BLOCK = 100_000


def _ids(prefix: str, codes: np.ndarray) -> list[str]:
    mixed = (codes.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(2**32)  # file order != sorted order
    return [f"{prefix}{m:08X}{c:07d}" for m, c in zip(mixed.tolist(), codes.tolist())]


def write_amazon2023(out_dir: str | Path, rows: int, seed: int = 0, users: int | None = None,
                     items: int | None = None, tie_share: float = 0.05) -> tuple[Path, Path]:
    """Write ``rows`` reviews and the item metadata under ``out_dir``; return (reviews, meta) paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_users = users or max(10, rows // 10)
    n_items = items or max(10, rows // 50)
    user_p = rng.geometric(0.3, n_users).astype(np.float64)
    user_p /= user_p.sum()
    item_p = 1.0 / np.arange(1, n_items + 1) ** 0.8
    item_p /= item_p.sum()
    t0, span = 1_420_070_400_000, 8 * 365 * 86_400_000  # 2015-01-01, in ms
    reviews = out / "reviews.jsonl.gz"
    with gzip.open(reviews, "wt", encoding="utf-8", compresslevel=1) as f:
        for start in range(0, rows, BLOCK):
            n = min(BLOCK, rows - start)
            u = rng.choice(n_users, n, p=user_p)
            it = rng.choice(n_items, n, p=item_p)
            ts = t0 + rng.integers(0, span, n)
            tie = rng.random(n) < tie_share
            ts[tie] = t0 + (u[tie] % 97) * 86_400_000  # same instant for several of a user's reviews
            rating = rng.integers(1, 6, n)
            f.writelines(
                f'{{"rating": {r}.0, "title": "Review {k}", "text": "Fine product, works as described.", "images": [], '
                f'"asin": "{i}V", "parent_asin": "{i}", "user_id": "{uu}", "timestamp": {t}, "helpful_vote": {k % 7}, '
                f'"verified_purchase": true}}\n'
                for k, (r, i, uu, t) in enumerate(zip(rating.tolist(), _ids("B", it), _ids("AG", u), ts.tolist()), start)
            )
    meta = out / "meta.jsonl.gz"
    cats = ["Beauty", "Skin Care", "Hair", "Tools", "Makeup", "Fragrance", "Nails", "Bath"]
    with gzip.open(meta, "wt", encoding="utf-8", compresslevel=1) as f:
        codes = np.arange(n_items + n_items // 20)  # the last 5%: cold items (no review)
        keep = (codes % 10 != 3) | (codes >= n_items)  # 10% of the warm items have no metadata
        for code, pid in zip(codes[keep].tolist(), _ids("B", codes[keep])):
            rec = {"parent_asin": pid, "title": f"Product {code} {cats[code % 8].lower()}",
                   "store": None if code % 5 == 0 else f"Store {code % 113}",
                   "categories": [cats[code % 8], cats[(code // 8) % 8]] if code % 4 else [],
                   "main_category": "All Beauty", "average_rating": 4.2, "rating_number": code % 50}
            f.write(json.dumps(rec) + "\n")
    return reviews, meta
