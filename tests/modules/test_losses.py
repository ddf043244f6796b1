"""DARec losses against direct references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from darec.errors import ConfigError
from darec.modules.losses import alignment_loss, full_scores, hard_negative_loss, next_item_loss, seen_items


def test_next_item_full_softmax_ignores_padding_row():
    g = torch.Generator().manual_seed(0)
    h, table = torch.randn(6, 4, generator=g), torch.randn(11, 4, generator=g)
    t = torch.tensor([1, 2, 3, 10, 5, 7])
    ref = F.cross_entropy(h @ table[1:].T, t - 1)
    assert torch.allclose(next_item_loss(h, table, t), ref)
    table2 = table.clone()
    table2[0] = 100.0
    assert torch.allclose(next_item_loss(h, table2, t), ref)


def test_sampled_softmax_matches_a_hand_computed_reference():
    """The target against the batch's shared uniform negatives, an accidental hit on the target masked out."""
    g = torch.Generator().manual_seed(1)
    h, table = torch.randn(8, 4, generator=g), torch.randn(50, 4, generator=g)
    t = torch.randint(1, 50, (8,), generator=g)
    neg = torch.randint(1, 50, (10,), generator=torch.Generator().manual_seed(3))  # the same draw
    t[0] = int(neg[4])  # one accidental hit
    got = next_item_loss(h, table, t, num_sampled=10, generator=torch.Generator().manual_seed(3))
    losses = []
    for r in range(8):
        logits = [float(h[r] @ table[t[r]])] + [float(h[r] @ table[n]) for n in neg.tolist() if n != int(t[r])]
        losses.append(torch.logsumexp(torch.tensor(logits), 0) - logits[0])
    assert torch.allclose(got, torch.stack(losses).mean(), atol=1e-5)
    assert got <= next_item_loss(h, table, t) + 1e-6  # fewer competitors than the full softmax


def test_hard_negative_skips_rows_without_negatives():
    g = torch.Generator().manual_seed(2)
    h, table = torch.randn(3, 4, generator=g), torch.randn(9, 4, generator=g)
    t = torch.tensor([1, 2, 3])
    negs = torch.tensor([[4, 5], [0, 0], [6, 0]])
    got = hard_negative_loss(h, table, t, negs)
    r0 = F.cross_entropy(torch.stack([h[0] @ table[1], h[0] @ table[4], h[0] @ table[5]])[None], torch.tensor([0]))
    r2 = F.cross_entropy(torch.stack([h[2] @ table[3], h[2] @ table[6]])[None], torch.tensor([0]))
    assert torch.allclose(got, (r0 + r2) / 2)
    assert hard_negative_loss(h, table, t, torch.zeros(3, 2, dtype=torch.long)) == 0


def test_losses_read_from_precomputed_full_scores_equal_the_direct_ones_in_value_and_gradient():
    """Training computes the full scores once and hands them to both losses: the same values and gradients as each
    loss gathering its own table rows."""
    g = torch.Generator().manual_seed(4)
    h0, table0 = torch.randn(7, 5, generator=g), torch.randn(12, 5, generator=g)
    t = torch.tensor([1, 4, 11, 2, 7, 3, 9])
    negs = torch.tensor([[2, 3, 5], [0, 0, 0], [1, 0, 4], [11, 10, 9], [7, 0, 0], [0, 0, 0], [8, 6, 0]])
    negs[4, 0] = 6  # a negative in every column position, padding (0) in others
    runs = []
    for shared in (False, True):
        h, table = h0.clone().requires_grad_(), table0.clone().requires_grad_()
        scores = full_scores(h, table) if shared else None
        assert scores is None or scores.shape == (7, 11)
        loss = next_item_loss(h, table, t, scores=scores) + 0.3 * hard_negative_loss(h, table, t, negs, 0.5, scores=scores)
        loss.backward()
        runs.append((loss.detach(), h.grad, table.grad))
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert runs[0][2][0].abs().sum() == 0  # the padding row never gets a gradient


def test_alignment_loss_reference():
    g = torch.Generator().manual_seed(3)
    s, ids = torch.randn(4, 5, generator=g), torch.randn(7, 5, generator=g)
    items = torch.tensor([1, 3, 6, 2])
    assert torch.allclose(alignment_loss(s, ids, items), F.cross_entropy(s @ ids[1:].T, items - 1))


def test_label_smoothing_spreads_the_targets_mass_over_the_items_scored():
    g = torch.Generator().manual_seed(4)
    h, table = torch.randn(5, 4, generator=g), torch.randn(9, 4, generator=g)
    t = torch.tensor([1, 8, 3, 3, 6])
    logp = (h @ table[1:].T).log_softmax(1)
    eps = 0.2
    ref = ((1 - eps) * -logp[torch.arange(5), t - 1] + eps * -logp.mean(1)).mean()
    torch.testing.assert_close(next_item_loss(h, table, t, label_smoothing=eps), ref)
    # sampled: over the target and its negatives, an accidental hit on the target not among them
    neg = torch.randint(1, 9, (6,), generator=torch.Generator().manual_seed(5))
    t = torch.tensor([int(neg[2]), 1, 2, 4, 5])
    got = next_item_loss(h, table, t, num_sampled=6, generator=torch.Generator().manual_seed(5), label_smoothing=eps)
    losses = []
    for r in range(5):
        logits = torch.tensor([float(h[r] @ table[t[r]])] + [float(h[r] @ table[n]) for n in neg.tolist() if n != int(t[r])])
        lp = logits.log_softmax(0)
        losses.append((1 - eps) * -lp[0] + eps * -lp.mean())
    torch.testing.assert_close(got, torch.stack(losses).mean(), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(got)


def test_seen_items_are_the_window_up_to_each_position_without_its_target():
    seq = torch.tensor([[0, 3, 1, 3, 2], [4, 2, 5, 1, 2]])
    tgt = torch.tensor([[3, 1, 3, 2, 5], [2, 5, 1, 2, 4]])
    keep = torch.ones_like(seq, dtype=torch.bool)
    keep[0, 2] = False
    got = seen_items(seq, tgt, keep, 5)
    assert got.shape == (9, 5)
    rows = [(b, t) for b in range(2) for t in range(5) if keep[b, t]]
    for r, (b, t) in enumerate(rows):
        want = {int(i) for i in seq[b, : t + 1] if i > 0} - {int(tgt[b, t])}
        assert {j + 1 for j in got[r].nonzero().flatten().tolist()} == want


def test_excluded_items_leave_the_softmax_and_the_smoothing():
    torch.manual_seed(2)
    h, table = torch.randn(4, 6), torch.randn(9, 6)
    t = torch.tensor([1, 4, 8, 2])
    exclude = torch.zeros(4, 8, dtype=torch.bool)
    exclude[0, [2, 5]] = True
    exclude[2, [0, 1, 3]] = True
    eps = 0.1
    got = next_item_loss(h, table, t, label_smoothing=eps, exclude=exclude)
    ref = []
    for i in range(4):  # the cross-entropy over the items kept, with their own smoothing
        kept = (~exclude[i]).nonzero().flatten()
        logits = (h[i] @ table[1:].T)[kept]
        label = int((kept == t[i] - 1).nonzero())
        ref.append(F.cross_entropy(logits[None], torch.tensor([label]), label_smoothing=eps))
    torch.testing.assert_close(got, torch.stack(ref).mean())
    torch.testing.assert_close(next_item_loss(h, table, t, exclude=torch.zeros(4, 8, dtype=torch.bool)),
                               next_item_loss(h, table, t))
    with pytest.raises(ConfigError, match="full softmax"):
        next_item_loss(h, table, t, num_sampled=3, exclude=exclude)
