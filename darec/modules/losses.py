"""The three DARec training losses: next item, masked-context alignment, hard negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from darec.errors import ConfigError


def full_scores(hidden: torch.Tensor, item_table: torch.Tensor) -> torch.Tensor:
    """Scores [N, C] of ``hidden`` [N, d] against every item of ``item_table`` [C+1, d] (row 0, padding, left out):
    column ``j - 1`` is item ``j``. Computed once per step, they serve both :func:`next_item_loss` and
    :func:`hard_negative_loss`."""
    return hidden @ item_table[1:].T


def seen_items(seq: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor, num_items: int) -> torch.Tensor:
    """[N, C] bool, one row per position of ``keep`` [B, L] (row-major, as ``x[keep]`` orders them): at position ``t``
    of the windows ``seq`` [B, L] (0 = padding), the items ``seq[:, :t + 1]`` (column ``j - 1`` is item ``j``), except
    that position's target ``targets[:, t]``. They are the items a user is known to have had when position ``t``
    predicts the next one; full-ranking evaluation masks a user's whole history in the same way."""
    length = seq.shape[1]
    upto = seq.unsqueeze(1).expand(-1, length, -1).tril()[keep]  # [N, L]: row (b, t) holds seq[b, :t + 1], then 0s
    seen = torch.zeros(upto.shape[0], num_items + 1, dtype=torch.bool, device=seq.device)
    seen.scatter_(1, upto, True)
    seen = seen[:, 1:]
    return seen.scatter_(1, (targets[keep] - 1).clamp(min=0).unsqueeze(1), False)


def _smoothed_cross_entropy(logits: torch.Tensor, label: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy of ``label`` [N] over ``logits`` [N, K]; a class at ``-inf`` is not scored, and the smoothing
    mass is spread over the finite classes only."""
    logp = logits.log_softmax(1)
    loss = -logp.gather(1, label.unsqueeze(1)).squeeze(1)
    if label_smoothing > 0:
        scored = torch.isfinite(logits)
        spread = -logp.masked_fill(~scored, 0.0).sum(1) / scored.sum(1)
        loss = (1 - label_smoothing) * loss + label_smoothing * spread
    return loss.mean()


def next_item_loss(
    hidden: torch.Tensor,
    item_table: torch.Tensor,
    targets: torch.Tensor,
    num_sampled: int = 0,
    generator: torch.Generator | None = None,
    scores: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``targets`` [N] given ``hidden`` [N, d] against ``item_table`` [C+1, d].

    Row 0 of the table (padding) is never a class. ``num_sampled > 0`` switches to a sampled
    softmax: the target against ``num_sampled`` uniform negatives shared by the batch, with
    accidental hits on the target removed. ``scores``: :func:`full_scores` of the same arguments, when the caller
    already has them (full softmax only). ``label_smoothing``: that share of each target's probability mass is
    spread evenly over the classes scored (every item, or the target and its sampled negatives). ``exclude`` [N, C]
    bool (full softmax only; :func:`seen_items`): items left out of each row's softmax, never its target.
    """
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0
    if num_sampled <= 0:
        logits = full_scores(hidden, item_table) if scores is None else scores
        if exclude is None:
            return F.cross_entropy(logits.float(), targets - 1, label_smoothing=label_smoothing)
        return _smoothed_cross_entropy(logits.float().masked_fill(exclude, float("-inf")), targets - 1,
                                       label_smoothing)
    if exclude is not None:
        raise ConfigError("excluding seen items needs the full softmax (num_sampled=0)")
    c = item_table.shape[0] - 1
    neg = torch.randint(1, c + 1, (num_sampled,), generator=generator, device=hidden.device)
    pos_logit = (hidden * item_table[targets]).sum(-1, keepdim=True)
    neg_logit = hidden @ item_table[neg].T
    neg_logit = neg_logit.masked_fill(neg.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos_logit, neg_logit], 1).float()  # an accidental hit (-inf) is not a class scored
    return _smoothed_cross_entropy(logits, torch.zeros_like(targets), label_smoothing)


def alignment_loss(semantic: torch.Tensor, id_table: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Masked-context alignment ``CE(W_a s_i · E_idᵀ, i)`` for projected semantic vectors [M, d]."""
    if semantic.shape[0] == 0:
        return semantic.sum() * 0.0
    logits = semantic @ id_table[1:].T
    return F.cross_entropy(logits.float(), items - 1)


def hard_negative_loss(
    hidden: torch.Tensor,
    item_table: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = 1.0,
    scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE of the target against its hard negatives ``negatives`` [N, k] (0 = none).

    Rows with no hard negative are skipped. ``scores``: :func:`full_scores` of ``hidden`` and ``item_table``, when
    the caller already has them; the logits are then read from them instead of gathering ``k + 1`` table rows per
    target (the same values, and a much cheaper backward on a CPU).
    """
    valid = negatives > 0
    keep = valid.any(1)
    if not bool(keep.any()):
        return hidden.sum() * 0.0
    t, n, v = targets[keep], negatives[keep], valid[keep]
    if scores is not None:
        s = scores[keep]
        pos = s.gather(1, (t - 1).unsqueeze(1))
        neg = s.gather(1, (n - 1).clamp(min=0)).masked_fill(~v, float("-inf"))
    else:
        h = hidden[keep]
        pos = (h * item_table[t]).sum(-1, keepdim=True)
        neg = torch.einsum("nd,nkd->nk", h, item_table[n]).masked_fill(~v, float("-inf"))
    logits = torch.cat([pos, neg], 1).float() / temperature
    return F.cross_entropy(logits, torch.zeros_like(t))
