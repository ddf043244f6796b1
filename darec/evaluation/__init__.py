"""Full-ranking evaluation for sequential recommendation: :mod:`.metrics` (rank histograms and the metrics from
them) and :mod:`.ranking` (chunked exact ranks and top-K over the whole catalogue).

Protocol (the one number everybody compares):

* Item ids are ``1..num_items``; id 0 is padding and is never ranked (score column 0 is ignored).
* Items in the user's history (ids before the target) are masked out of the ranking. The target
  itself is never masked, even when it also appears in the history (a repeat consumption still has
  to be ranked against the rest of the catalogue).
* Ties count against the target: ``rank = #(s > t) + #(s == t)`` over the unmasked items other
  than the target, so a constant scorer gets the worst possible rank.
* A non-finite score on an unmasked item (target included) raises :class:`EvaluationError`.
* Metrics are derived from an integer histogram of ranks ``0..19``: HR@{5,10,20}, NDCG@{5,10,20}
  (``1/log2(rank+2)``) and MRR@10 (``1/(rank+1)``), each zero when ``rank >= k``.

The sampled protocol (100 negatives) is available on request and its keys are always prefixed
``sampled_``.
"""
