"""DARec losses against direct references."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from darec.modules.losses import alignment_loss, hard_negative_loss, next_item_loss


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


def test_alignment_loss_reference():
    g = torch.Generator().manual_seed(3)
    s, ids = torch.randn(4, 5, generator=g), torch.randn(7, 5, generator=g)
    items = torch.tensor([1, 3, 6, 2])
    assert torch.allclose(alignment_loss(s, ids, items), F.cross_entropy(s @ ids[1:].T, items - 1))
