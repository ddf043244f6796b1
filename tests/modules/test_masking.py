"""Masks for context masking and item-causal attention."""

import torch

from darec.modules.masking import item_causal_mask, position_ids_from_segments, segment_mask

SEG = torch.tensor([[0, 0, 1, 1, 1, 2, -1, -1]])


def _allowed(mask: torch.Tensor) -> torch.Tensor:
    return mask[:, 0] == 0


def test_segment_mask_block_diagonal_bidirectional():
    allowed = _allowed(segment_mask(SEG, causal=False))[0]
    seg = SEG[0]
    for i in range(8):
        for j in range(8):
            if seg[i] >= 0:
                assert allowed[i, j] == (seg[i] == seg[j]), (i, j)
            else:
                assert allowed[i, j] == (i == j), (i, j)


def test_segment_mask_causal_within_block():
    allowed = _allowed(segment_mask(SEG, causal=True))[0]
    assert allowed[3, 2] and not allowed[2, 3] and not allowed[3, 1]
    assert allowed[4].nonzero().flatten().tolist() == [2, 3, 4]


def test_mask_values_and_dtype():
    mask = segment_mask(SEG, causal=False, dtype=torch.bfloat16)
    assert mask.shape == (1, 1, 8, 8) and mask.dtype == torch.bfloat16
    assert set(mask.unique().tolist()) == {0.0, torch.finfo(torch.bfloat16).min}


def test_attend_earlier_sees_only_earlier_items():
    for causal in (False, True):
        allowed = _allowed(segment_mask(SEG, causal=causal, attend_earlier=True))[0]
        seg = SEG[0]
        for i in range(6):
            visible = {int(seg[j]) for j in allowed[i].nonzero().flatten()}
            assert visible == set(range(int(seg[i]) + 1)), (i, visible)
            later = [j for j in range(6) if seg[j] > seg[i]]
            assert not allowed[i, later].any()
        assert not allowed[:6, 6:].any()


def test_no_nan_with_padding_rows():
    seg = torch.tensor([[0, 0, -1, -1], [-1, -1, -1, -1]])
    for causal in (False, True):
        for earlier in (False, True):
            mask = segment_mask(seg, causal=causal, attend_earlier=earlier)
            probs = torch.softmax(torch.randn(2, 1, 4, 4) + mask, dim=-1)
            assert torch.isfinite(probs).all()


def test_item_causal_mask_left_padding():
    valid = torch.tensor([[False, False, True, True, True]])
    allowed = _allowed(item_causal_mask(valid))[0]
    assert allowed[0].nonzero().flatten().tolist() == [0]
    assert allowed[1].nonzero().flatten().tolist() == [1]
    assert allowed[2].nonzero().flatten().tolist() == [2]
    assert allowed[4].nonzero().flatten().tolist() == [2, 3, 4]
    probs = torch.softmax(torch.randn(1, 1, 5, 5) + item_causal_mask(valid), dim=-1)
    assert torch.isfinite(probs).all()


def test_position_ids_restart_per_segment():
    pos = position_ids_from_segments(SEG)
    assert pos.tolist() == [[0, 1, 0, 1, 2, 0, 0, 0]]
    two = torch.tensor([[0, 0, 0, 1, -1], [-1, 0, 1, 1, 2]])
    assert position_ids_from_segments(two).tolist() == [[0, 1, 2, 0, 0], [0, 0, 0, 1, 0]]
