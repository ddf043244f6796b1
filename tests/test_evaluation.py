"""Tests of darec.evaluation against a brute-force NumPy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from darec.errors import EvaluationError
from darec.evaluation.metrics import (
    format_metrics_table,
    GroupedRankHistogram,
    history_length_buckets,
    METRIC_KEYS,
    popularity_buckets,
    popularity_edges,
    RankHistogram,
    sample_negatives,
    sampled_target_ranks,
    target_ranks,
)
from darec.evaluation.ranking import chunked_target_ranks, chunked_topk, dot_product_ranks


def ref_rank(scores: np.ndarray, target: int, history: np.ndarray) -> int:
    masked = {int(h) for h in history if h != 0} - {target}
    t = scores[target]
    rank = 0
    for item in range(1, len(scores)):
        if item == target or item in masked:
            continue
        if scores[item] >= t:
            rank += 1
    return rank


def ref_metrics(ranks: list[int]) -> dict[str, float]:
    n = len(ranks)
    out = {}
    for k in (5, 10, 20):
        out[f"hr@{k}"] = sum(1.0 for r in ranks if r < k) / n
        out[f"ndcg@{k}"] = sum(1.0 / math.log2(r + 2) for r in ranks if r < k) / n
    out["mrr@10"] = sum(1.0 / (r + 1) for r in ranks if r < 10) / n
    return out


def random_case(batch: int, num_items: int, hist_len: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    scores = torch.round(torch.rand(batch, num_items + 1, generator=g) * 10) / 10
    targets = torch.randint(1, num_items + 1, (batch,), generator=g)
    history = torch.randint(1, num_items + 1, (batch, hist_len), generator=g)
    lengths = torch.randint(0, hist_len + 1, (batch,), generator=g)
    pad = torch.arange(hist_len)[None, :] >= lengths[:, None]
    history[pad] = 0
    history[1::2] = history[1::2].flip(1)
    return scores, targets, history


@pytest.mark.parametrize("batch,num_items,hist_len", [(16, 7, 3), (32, 15, 6), (24, 60, 10), (40, 300, 40)])
def test_ranks_and_metrics_match_reference(batch: int, num_items: int, hist_len: int) -> None:
    scores, targets, history = random_case(batch, num_items, hist_len, seed=num_items)
    before = scores.clone()
    ranks = target_ranks(scores, targets, history)
    assert torch.equal(scores, before)
    assert ranks.dtype == torch.long
    expected = [ref_rank(scores[i].numpy(), int(targets[i]), history[i].numpy()) for i in range(batch)]
    assert ranks.tolist() == expected
    metric = RankHistogram()
    metric.update(ranks)
    got = metric.compute()
    assert list(got) == list(METRIC_KEYS)
    for key, value in ref_metrics(expected).items():
        assert got[key].item() == pytest.approx(value, abs=1e-6)


def test_no_history() -> None:
    scores, targets, _ = random_case(10, 30, 1, seed=3)
    ranks = target_ranks(scores, targets, None)
    empty = np.zeros(0, dtype=np.int64)
    assert ranks.tolist() == [ref_rank(scores[i].numpy(), int(targets[i]), empty) for i in range(10)]


def test_constant_scorer_gets_zero() -> None:
    num_items, batch = 50, 8
    scores = torch.ones(batch, num_items + 1)
    targets = torch.arange(1, batch + 1)
    history = torch.tensor([[0, 0, 9], [10, 11, 12]] * 4)
    ranks = target_ranks(scores, targets, history)
    assert ranks.tolist() == [num_items - 1 - 1, num_items - 1 - 3] * 4
    metric = RankHistogram()
    metric.update(ranks)
    assert all(v.item() == 0.0 for v in metric.compute().values())


def test_target_in_history_is_not_masked() -> None:
    scores = torch.tensor([[0.0, 0.9, 0.5, 0.1, 0.7]])
    targets = torch.tensor([2])
    assert target_ranks(scores, targets, torch.tensor([[2, 1]])).tolist() == [1]
    assert target_ranks(scores, targets, torch.tensor([[2, 2, 0]])).tolist() == [2]
    assert target_ranks(torch.tensor([[0.0, 0.5, 0.5, 0.5]]), torch.tensor([2]), torch.tensor([[2]])).tolist() == [2]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_unmasked_raises(bad: float) -> None:
    scores, targets, history = random_case(6, 20, 4, seed=1)
    free = next(i for i in range(1, 21) if i not in history[3].tolist() and i != int(targets[3]))
    s = scores.clone()
    s[3, free] = bad
    with pytest.raises(EvaluationError, match="1 of 6 rows.*row 3"):
        target_ranks(s, targets, history)
    s = scores.clone()
    s[torch.arange(6), targets] = bad
    with pytest.raises(EvaluationError, match="6 of 6 rows"):
        target_ranks(s, targets, history)
    with pytest.raises(EvaluationError):
        chunked_target_ranks(lambda lo, hi: s[:, lo:hi], 20, targets, history, chunk_size=3)


def test_nan_on_masked_items_is_ignored() -> None:
    scores, targets, history = random_case(6, 20, 4, seed=2)
    history[:, 0] = torch.where(targets == 5, 6, 5)
    s = scores.clone()
    s[:, 0] = float("nan")
    s[torch.arange(6), history[:, 0]] = float("nan")
    expected = target_ranks(scores, targets, history)
    assert torch.equal(target_ranks(s, targets, history), expected)
    assert torch.equal(chunked_target_ranks(lambda lo, hi: s[:, lo:hi], 20, targets, history, chunk_size=4), expected)


@pytest.mark.parametrize("num_items", [13, 57])
@pytest.mark.parametrize("chunk_size", [1, 7, None, 1000])
@pytest.mark.parametrize("give_target_scores", [False, True])
def test_chunked_equals_unchunked(num_items: int, chunk_size: int | None, give_target_scores: bool) -> None:
    scores, targets, history = random_case(12, num_items, 5, seed=num_items + 1)
    expected = target_ranks(scores, targets, history)
    calls: list[tuple[int, int]] = []

    def score_chunk(lo: int, hi: int) -> torch.Tensor:
        calls.append((lo, hi))
        return scores[:, lo:hi]

    size = chunk_size or num_items
    ts = scores[torch.arange(12), targets] if give_target_scores else None
    got = chunked_target_ranks(score_chunk, num_items, targets, history, target_scores=ts, chunk_size=size)
    assert torch.equal(got, expected)
    assert all(1 <= lo < hi <= num_items + 1 and hi - lo <= size for lo, hi in calls)
    if size >= num_items:
        assert len(calls) == 1


def test_dot_product_ranks() -> None:
    g = torch.Generator().manual_seed(5)
    users = torch.randint(-2, 3, (9, 4), generator=g).double()
    items = torch.randint(-2, 3, (41, 4), generator=g).double()
    bias = torch.randint(-1, 2, (41,), generator=g).double()
    targets = torch.randint(1, 41, (9,), generator=g)
    history = torch.randint(0, 41, (9, 6), generator=g)
    full = users @ items.T + bias
    expected = target_ranks(full, targets, history)
    for cs in (1, 6, 40, 100):
        assert torch.equal(dot_product_ranks(users, items, targets, history, chunk_size=cs, item_bias=bias), expected)
    assert torch.equal(dot_product_ranks(users, items, targets, history), target_ranks(users @ items.T, targets, history))


def test_huge_finite_scores_whose_sum_overflows_do_not_raise() -> None:
    scores, targets, history = random_case(8, 30, 4, seed=9)
    big = scores * 3e38  # every score finite, but a chunk's sum overflows to inf
    expected = [ref_rank(big[i].numpy(), int(targets[i]), history[i].numpy()) for i in range(8)]
    for cs in (4, 30):
        assert chunked_target_ranks(lambda lo, hi: big[:, lo:hi], 30, targets, history, chunk_size=cs).tolist() == expected


def test_dot_product_ranks_float32_matches_reference() -> None:
    g = torch.Generator().manual_seed(11)
    users, items = torch.randn(50, 8, generator=g), torch.randn(201, 8, generator=g)
    targets = torch.randint(1, 201, (50,), generator=g)
    history = torch.randint(0, 201, (50, 12), generator=g)
    full = users @ items.T
    for cs in (7, 64, 500):
        ranks = dot_product_ranks(users, items, targets, history, chunk_size=cs)
        assert ranks.tolist() == [ref_rank(full[i].numpy(), int(targets[i]), history[i].numpy()) for i in range(50)]


def ref_topk(scores: np.ndarray, history: np.ndarray, k: int) -> list[int]:
    masked = {int(h) for h in history if h != 0}
    eligible = sorted((i for i in range(1, len(scores)) if i not in masked), key=lambda i: (-scores[i], i))
    top = eligible[: min(k, len(scores) - 1)]
    return top + [0] * (min(k, len(scores) - 1) - len(top))


@pytest.mark.parametrize("num_items,hist_len", [(9, 3), (40, 6), (300, 30)])
@pytest.mark.parametrize("k", [1, 5, 12])
@pytest.mark.parametrize("chunk_size", [1, 4, 16, 128, 1000])
def test_chunked_topk_matches_reference(num_items: int, hist_len: int, k: int, chunk_size: int) -> None:
    scores, _, history = random_case(20, num_items, hist_len, seed=num_items + k)  # scores in 0.1 steps: many ties
    history[0, :] = torch.arange(1, hist_len + 1)  # row 0: the best-scored low ids may be masked
    got = chunked_topk(lambda lo, hi: scores[:, lo:hi], num_items, history, k, chunk_size)
    assert got.shape == (20, min(k, num_items))
    assert got.tolist() == [ref_topk(scores[i].numpy(), history[i].numpy(), k) for i in range(20)]


def test_chunked_topk_ascending_scores_and_short_rows() -> None:
    scores = torch.arange(31, dtype=torch.float32).repeat(3, 1)  # every chunk beats the last: many candidates
    history = torch.tensor([[30, 29, 0], [0, 0, 0], list(range(1, 28))[:3]])
    got = chunked_topk(lambda lo, hi: scores[:, lo:hi], 30, history, 4, chunk_size=8)
    assert got.tolist() == [[28, 27, 26, 25], [30, 29, 28, 27], [30, 29, 28, 27]]
    full = torch.arange(1, 7).repeat(2, 1)  # row 0: all 6 items masked but one; row 1: none masked
    short = chunked_topk(lambda lo, hi: scores[:2, lo:hi], 6, torch.stack([full[0].clone().index_fill_(0, torch.tensor([2]), 0), torch.zeros(6, dtype=torch.long)]), 3, 2)
    assert short.tolist() == [[3, 0, 0], [6, 5, 4]]


def test_chunked_topk_masked_nan_ignored_unmasked_raises() -> None:
    scores, _, history = random_case(6, 20, 4, seed=4)
    history[:, 0] = 5
    s = scores.clone()
    s[:, 5] = float("nan")
    s[:, 0] = float("nan")  # padding column, never read
    expected = chunked_topk(lambda lo, hi: scores[:, lo:hi], 20, history, 5, 3)
    assert torch.equal(chunked_topk(lambda lo, hi: s[:, lo:hi], 20, history, 5, 3), expected)
    free = next(i for i in range(1, 21) if i not in history[2].tolist())
    for bad in (float("nan"), float("inf")):
        for width in (3, 64):  # direct compare; block maxima
            s = torch.cat([scores, torch.rand(6, 100)], 1)
            s[2, free] = bad
            with pytest.raises(EvaluationError, match="1 of 6 rows.*row 2"):
                chunked_topk(lambda lo, hi: s[:, lo:hi], 120, history, 5, width)
    s = scores.clone()
    s[2, free] = float("-inf")  # allowed: the item comes after every finite one
    got = chunked_topk(lambda lo, hi: s[:, lo:hi], 20, history, 20, 3)
    assert got[2].tolist() == ref_topk(s[2].numpy(), history[2].numpy(), 20)
    assert got[2].tolist().index(free) == 20 - len(set(history[2].tolist()) - {0}) - 1


def test_histogram_merge_equals_whole() -> None:
    ranks = torch.randint(0, 40, (200,), generator=torch.Generator().manual_seed(0))
    whole, a, b = RankHistogram(), RankHistogram(), RankHistogram()
    whole.update(ranks)
    a.update(ranks[:77])
    b.update(ranks[77:])
    assert torch.equal(a.hist + b.hist, whole.hist)
    a.merge_state(b)
    assert torch.equal(a.hist, whole.hist) and int(a.count) == 200
    assert a.hist.dtype == torch.long and a.count.dtype == torch.long
    for key, value in whole.compute().items():
        assert torch.equal(a.compute()[key], value)
    empty = RankHistogram(prefix="sampled_")
    empty.update(torch.zeros(0, dtype=torch.long))
    assert empty.compute() == {"sampled_" + k: torch.tensor(0.0) for k in METRIC_KEYS}


def test_grouped_histogram_matches_subsets() -> None:
    g = torch.Generator().manual_seed(1)
    ranks = torch.randint(0, 30, (300,), generator=g)
    lengths = torch.randint(0, 150, (300,), generator=g)
    groups, labels = history_length_buckets(lengths)
    assert labels == ["len<5", "len5-9", "len10-19", "len20-49", "len50-99", "len>=100"]
    metric = GroupedRankHistogram(labels)
    metric.update(ranks[:100], groups[:100])
    metric.update(ranks[100:], groups[100:])
    assert int(metric.counts.sum()) == 300
    out = metric.compute()
    assert list(out) == labels
    for i, label in enumerate(labels):
        single = RankHistogram()
        single.update(ranks[groups == i])
        assert int(metric.counts[i]) == int((groups == i).sum())
        for key, value in single.compute().items():
            assert torch.equal(out[label][key], value)


def test_buckets_and_edges() -> None:
    groups, labels = history_length_buckets(torch.tensor([0, 4, 5, 9, 10, 99, 100, 500]))
    assert groups.tolist() == [0, 0, 1, 1, 2, 4, 5, 5]
    groups, labels = popularity_buckets(torch.tensor([0, 2, 3, 7]), (3, 4))
    assert (groups.tolist(), labels) == ([0, 0, 1, 2], ["pop<3", "pop3", "pop>=4"])
    counts = torch.tensor([999] + list(range(1, 101)))
    edges = popularity_edges(counts, n_buckets=4)
    assert edges == (26, 51, 76)
    groups, _ = popularity_buckets(counts[1:], edges)
    assert torch.bincount(groups).tolist() == [25, 25, 25, 25]
    assert popularity_edges(torch.tensor([0, 0, 0, 0, 5]), n_buckets=5) == (3,)
    assert popularity_edges(torch.tensor([9, 0, 0, 0, 0]), n_buckets=5) == ()
    with pytest.raises(EvaluationError):
        history_length_buckets(torch.tensor([1]), edges=(5, 5))


def test_sample_negatives_excludes_history_and_target() -> None:
    g = torch.Generator().manual_seed(3)
    num_items, batch = 130, 64
    targets = torch.randint(1, num_items + 1, (batch,), generator=g)
    history = torch.randint(0, num_items + 1, (batch, 25), generator=g)
    history[0, :] = torch.arange(1, 26)
    targets[0] = 26
    negs = sample_negatives(targets, history, num_items, n=100, generator=g)
    assert negs.shape == (batch, 100) and negs.dtype == torch.long
    assert int(negs.min()) >= 1 and int(negs.max()) <= num_items
    for i in range(batch):
        row = negs[i].tolist()
        assert len(set(row)) == 100
        assert not set(row) & (set(history[i].tolist()) | {int(targets[i])})
    assert set(negs[0].tolist()) <= set(range(27, 131))
    tight = sample_negatives(torch.tensor([3]), torch.arange(1, 11)[None], 110, n=100, generator=g)
    assert sorted(tight[0].tolist()) == list(range(11, 111))
    with pytest.raises(EvaluationError):
        sample_negatives(targets[:1], history[:1], 120, n=100)


def test_sampled_ranks_tie_rule() -> None:
    t = torch.tensor([0.5, 0.5, 0.5])
    negs = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.1, 0.9], [0.5, 0.5, 0.5]])
    assert sampled_target_ranks(t, negs).tolist() == [0, 2, 3]
    with pytest.raises(EvaluationError, match="row 1"):
        sampled_target_ranks(t, torch.tensor([[0.1, 0.2, 0.3], [0.1, float("nan"), 0.2], [0.0, 0.0, 0.0]]))


def test_format_metrics_table() -> None:
    metrics = {f"sampled_{k}": torch.tensor(0.125) for k in reversed(METRIC_KEYS)}
    table = format_metrics_table(metrics, title="test")
    lines = table.splitlines()
    assert lines[0] == "test"
    assert [ln.split()[0] for ln in lines[3:]] == [f"sampled_{k}" for k in METRIC_KEYS]
    assert all(ln.endswith("0.1250") for ln in lines[3:])
    assert len({ln.index("0.1250") for ln in lines[3:]}) == 1


def test_eval_scale_benchmark_smoke(tmp_path, benchmark_script) -> None:
    bench = benchmark_script("eval_scale")
    out = tmp_path / "eval_scale.json"
    result = bench.main(["--users", "300", "--items", "3000", "--user-batch", "128", "--chunk", "512", "--out", str(out)])
    assert set(result["seconds"]) == {"matmul", "ranks", "top-10"} and result["peak_rss_gb"]["end"] > 0
    assert out.exists() and 0 <= result["ndcg@10_random_vectors"] <= 1
