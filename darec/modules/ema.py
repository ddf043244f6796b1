"""An exponential moving average of a module's trainable weights, evaluated in their place (``DARec(ema=...)``)."""

from __future__ import annotations

import torch
from torch import nn

from darec.errors import ConfigError


class WeightEma(nn.Module):
    """Averaged copies ("shadows") of a module's trainable parameters.

    After the ``n``-th optimizer step, :meth:`update` sets ``shadow = d * shadow + (1 - d) * param`` with
    ``d = min(decay, (1 + n) / (warmup + n))``: the warm-up keeps the shadows from remembering the initialisation.
    While it binds, step ``k``'s weights count in proportion to about ``(k + warmup) ** (warmup - 2)``: with the
    default ``warmup = 10`` mostly the latest tenth of the steps so far; with ``warmup = 2`` every step so far
    equally (the starting weights twice) until ``decay`` takes over.
    :meth:`use` puts the shadows into the parameters for evaluation and keeps the trained values aside;
    :meth:`restore` puts the trained values back. Both are idempotent. The shadows are persistent buffers, so a
    checkpoint carries the average of its own moment; :meth:`trained_state` gives the trained values to save while
    the shadows are in use.
    """

    def __init__(self, module: nn.Module, decay: float, warmup: float = 10.0):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"ema must lie strictly between 0 and 1 (0 turns it off), got {decay}")
        if not warmup > 1.0:
            raise ConfigError(f"ema_warmup must be above 1 (at 1 the average would never move), got {warmup}")
        self.decay = decay
        self.warmup = warmup
        self.__dict__["_owner"] = module  # not a submodule: its parameters stay the owner's
        self.names = [name for name, p in module.named_parameters() if p.requires_grad]
        for name in self.names:
            self.register_buffer(self.key(name), module.get_parameter(name).detach().clone())
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self._kept: list[torch.Tensor] | None = None

    @staticmethod
    def key(name: str) -> str:
        """The buffer name of the average of the parameter ``name``."""
        return "shadow__" + name.replace(".", "__")

    def shadow(self, name: str) -> torch.Tensor:
        """The average of the parameter ``name``."""
        return getattr(self, self.key(name))

    def _pairs(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        return [(self._owner.get_parameter(name), self.shadow(name)) for name in self.names]

    @property
    def in_use(self) -> bool:
        return self._kept is not None

    @torch.no_grad()
    def reset(self) -> None:
        """Shadows equal to the current trained values; no updates yet."""
        self.restore()
        for p, shadow in self._pairs():
            shadow.copy_(p.detach())
        self.updates.zero_()

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current trained values into the shadows (after an optimizer step, never while in use)."""
        if self.in_use:
            raise RuntimeError("WeightEma.update while the averaged weights are in use; restore() first")
        n = int(self.updates) + 1
        d = min(self.decay, (1.0 + n) / (self.warmup + n))
        for p, shadow in self._pairs():
            shadow.mul_(d).add_(p.detach().to(shadow.dtype), alpha=1.0 - d)
        self.updates.fill_(n)

    @torch.no_grad()
    def use(self) -> None:
        """The parameters hold the averaged values from now until :meth:`restore`."""
        if self.in_use:
            return
        pairs = self._pairs()
        self._kept = [p.detach().clone() for p, _ in pairs]
        for p, shadow in pairs:
            p.copy_(shadow)

    @torch.no_grad()
    def restore(self) -> None:
        """The parameters hold the trained values again."""
        if self._kept is None:
            return
        for (p, _), kept in zip(self._pairs(), self._kept):
            p.copy_(kept)
        self._kept = None

    def discard(self) -> None:
        """Forget the kept trained values without putting them back (the parameters are about to be loaded)."""
        self._kept = None

    def trained_state(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """``{prefix + name: trained value}`` while the shadows are in use (empty otherwise), for a checkpoint's state
        dict, so that resuming continues from the trained values and not from their average."""
        if self._kept is None:
            return {}
        return {prefix + name: kept for name, kept in zip(self.names, self._kept)}
