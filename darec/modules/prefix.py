"""Attention-level injection: per-layer key/value prefixes from the causal user vector.

The sequence pass gets one *prefix slot* per history position, placed before the items. At the input of
every backbone layer ``l`` the hidden state of slot ``t`` is replaced by ``P_l u_t`` (``u_t`` = the causal
user vector at ``t``), so the frozen attention of layer ``l`` turns it into that layer's key and value
for slot ``t``. Item position ``s`` (and ``[SEQ]``) may attend slot ``t`` only when ``t <= s``: the
prefixes seen at ``s`` use items up to ``s`` alone, exactly like the input-level user vector.

Layers are wrapped (``setattr`` on the layer list), not hooked. A wrapper passes its input through
untouched unless :func:`layer_prefixes` is active, so the item-level encoding never sees a prefix.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from darec.modules.wrapping import ModuleWrapper
from darec.modules.masking import bool_to_additive


class PrefixLayer(ModuleWrapper):
    """Wraps one transformer layer; overwrites the first ``P`` hidden states with this layer's prefix."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.__dict__["prefix"] = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        prefix = self.__dict__["prefix"]
        if prefix is not None:
            if "hidden_states" in kwargs:
                kwargs["hidden_states"] = _overwrite(kwargs["hidden_states"], prefix)
            else:
                args = (_overwrite(args[0], prefix), *args[1:])
        return self.base_layer(*args, **kwargs)


def _overwrite(hidden: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    return torch.cat([prefix.to(hidden.dtype), hidden[:, prefix.shape[1] :]], 1)


def wrap_layers(layers: nn.ModuleList) -> list[PrefixLayer]:
    """Wrap every layer of ``layers`` in place (after adapters are applied); returns the wrappers."""
    wrappers = []
    for i, layer in enumerate(layers):
        wrapper = layer if isinstance(layer, PrefixLayer) else PrefixLayer(layer)
        layers[i] = wrapper
        wrappers.append(wrapper)
    return wrappers


@contextmanager
def layer_prefixes(wrappers: list[PrefixLayer], prefixes: list[torch.Tensor]) -> Iterator[None]:
    """Make ``wrappers[l]`` use ``prefixes[l]`` [B, P, H] for the duration of one forward pass."""
    if len(wrappers) != len(prefixes):
        raise ValueError(f"{len(prefixes)} prefixes for {len(wrappers)} layers")
    try:
        for w, p in zip(wrappers, prefixes):
            w.__dict__["prefix"] = p
        yield
    finally:
        for w in wrappers:
            w.__dict__["prefix"] = None


def prefix_causal_mask(slot_valid: torch.Tensor, query_valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive ``(B, 1, P+Q, P+Q)`` mask for ``P`` prefix slots followed by ``Q`` item-causal positions.

    Position ``s`` attends positions ``j <= s`` that are valid, and prefix slots ``t <= s`` whose
    ``slot_valid`` is True (position ``s >= P`` of a ``[SEQ]`` token sees every valid slot). Slots and
    padding attend only themselves, so no softmax row is empty.
    """
    b, p = slot_valid.shape
    q = query_valid.shape[1]
    n = p + q
    device = slot_valid.device
    allowed = torch.zeros(b, n, n, dtype=torch.bool, device=device)
    idx_q = torch.arange(q, device=device)
    idx_p = torch.arange(p, device=device)
    causal = idx_q[None, :] <= idx_q[:, None]
    qv = query_valid.bool()
    allowed[:, p:, p:] = causal[None] & qv[:, None, :] & qv[:, :, None]
    allowed[:, p:, :p] = (idx_p[None, :] <= idx_q[:, None])[None] & slot_valid.bool()[:, None, :] & qv[:, :, None]
    allowed |= torch.eye(n, dtype=torch.bool, device=device)[None] & ~allowed.any(-1, keepdim=True)
    return bool_to_additive(allowed, dtype)
