"""Frozen-prefix caching for the item level: layers below the first adapted layer are computed once.

At the item level, layers ``0..k-1`` (every layer before the first one with an adapter) see only frozen
weights and fixed tokens, so the hidden states entering layer ``k`` never change during training. They are
captured once per item and, from then on, an item pass starts at layer ``k``: the first ``k`` layers are
wrapped (``setattr`` on the layer list, no hooks) so that, while :meth:`FrozenPrefix.resume` is active,
layers ``0..k-2`` pass their input through and layer ``k-1`` returns the cached states.

This is exact only if nothing the item vector reads depends on a trainable input below layer ``k``: the
``[ALIGN]`` embedding trains, so caching requires an item vector that does not read ``[ALIGN]`` and a mask
in which no text token attends it (``item_vector: mean``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from darec.modules.adapters import is_frozen_type
from darec.modules.wrapping import ModuleWrapper


class _PrefixState:
    """What the wrapped layers do in the current pass: nothing special, capture, or resume from ``states``."""

    def __init__(self) -> None:
        self.mode: str | None = None
        self.states: torch.Tensor | None = None


class CutLayer(ModuleWrapper):
    """One wrapped layer below the cut. Plain pass-through of the wrapped layer unless a mode is active."""

    def __init__(self, base_layer: nn.Module, state: _PrefixState, last: bool) -> None:
        super().__init__(base_layer)
        self.__dict__["state"] = state
        self.last = last

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        state: _PrefixState = self.__dict__["state"]
        if state.mode == "resume":
            if self.last:
                return state.states
            return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        out = self.base_layer(*args, **kwargs)
        if state.mode == "capture" and self.last:
            state.states = out[0] if isinstance(out, tuple) else out
        return out


class FrozenPrefix:
    """Captures and replays the item-level hidden states entering layer ``cut`` of ``layers``.

    Args:
        layers: the backbone's layer list (adapters already applied); its first ``cut`` layers are wrapped.
        cut: index of the first adapted layer (``>= 1``).
    """

    def __init__(self, layers: nn.ModuleList, cut: int) -> None:
        if not 1 <= cut < len(layers):
            raise ValueError(f"cut must be in 1..{len(layers) - 1}, got {cut}")
        self.cut = cut
        self._state = _PrefixState()
        for i in range(cut):
            layers[i] = CutLayer(layers[i], self._state, last=i == cut - 1)

    def run_capturing(self, fn: Any) -> torch.Tensor:
        """Call ``fn()`` (one backbone pass) and return the states that entered layer ``cut``."""
        self._state.mode = "capture"
        try:
            fn()
            states = self._state.states
        finally:
            self._state.mode = None
            self._state.states = None
        if states is None:
            raise RuntimeError("the backbone pass did not reach the frozen-prefix cut")
        return states

    @contextmanager
    def resume(self, states: torch.Tensor) -> Iterator[None]:
        """Within the block, a backbone pass skips layers ``0..cut-1`` and starts layer ``cut`` from ``states``."""
        self._state.mode, self._state.states = "resume", states
        try:
            yield
        finally:
            self._state.mode = None
            self._state.states = None


def first_adapted_layer(assignment: list[Any]) -> int:
    """Index of the first layer whose adapter type trains (not ``none`` or ``skip``; the number of layers if none
    does)."""
    for i, choice in enumerate(assignment):
        if not is_frozen_type(str(getattr(choice, "type", choice))):
            return i
    return len(assignment)
