"""Module replacement: a wrapper takes a module's place (``setattr`` on its parent) and adds to its output.

Injection never uses forward hooks, whose return conventions change between transformers versions.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from darec.errors import ConfigError

__all__ = ["ModuleWrapper", "AdapterWrapper", "adapters_bypassed", "wrap_output"]


def _run_adapter(adapter: nn.Module, x: torch.Tensor) -> torch.Tensor:
    param = next(adapter.parameters(), None)
    if param is None or param.dtype == x.dtype:
        return adapter(x)
    return adapter(x.to(param.dtype)).to(x.dtype)


class ModuleWrapper(nn.Module):
    """Holds a replaced module as ``base_layer`` and forwards unknown attribute reads to it."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__.get("_modules", {}).get("base_layer")
            if base is None:
                raise
            return getattr(base, name)


class AdapterWrapper(ModuleWrapper):
    """Replaces a module: calls it (``base_layer``) and combines its first output with the adapter.

    Modes: ``"residual"`` ``h + a(h)``; ``"parallel"`` ``h + a(args[input_index])``; ``"replace"`` ``a(h)``.
    Tuple outputs (attention modules) keep their other elements. The adapter is held by reference, not
    registered here; its :class:`AdapterContainer` owns it.
    """

    def __init__(self, base_layer: nn.Module, adapter: nn.Module, mode: str = "residual", input_index: int = 0):
        if mode not in ("residual", "parallel", "replace"):
            raise ConfigError(f"wrap mode must be 'residual', 'parallel' or 'replace', got {mode!r}")
        super().__init__(base_layer)
        self.__dict__["adapter"] = adapter
        self.mode = mode
        self.input_index = input_index

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.base_layer(*args, **kwargs)
        if self.__dict__.get("bypassed", False):
            return out
        first = out[0] if isinstance(out, tuple) else out
        if self.mode == "residual":
            new = first + _run_adapter(self.adapter, first)
        elif self.mode == "replace":
            new = _run_adapter(self.adapter, first)
        else:
            if len(args) <= self.input_index:
                raise RuntimeError(f"parallel adapter expects input #{self.input_index} as a positional argument")
            new = first + _run_adapter(self.adapter, args[self.input_index])
        return (new, *out[1:]) if isinstance(out, tuple) else new


@contextmanager
def adapters_bypassed(modules: list[nn.Module]) -> Iterator[None]:
    """Within the block, every :class:`AdapterWrapper` under ``modules`` returns its base module's output alone:
    the frozen computation, with the adapters in place but inactive."""
    wrappers = [m for module in modules for m in module.modules() if isinstance(m, AdapterWrapper)]
    for w in wrappers:
        w.__dict__["bypassed"] = True
    try:
        yield
    finally:
        for w in wrappers:
            w.__dict__["bypassed"] = False


def wrap_output(
    layer: nn.Module, path: str, adapter: nn.Module, mode: str = "residual", input_index: int = 0
) -> AdapterWrapper:
    """Replace the submodule ``path`` of ``layer`` by an :class:`AdapterWrapper` (``setattr`` on its parent)."""
    parent_path, _, child = path.rpartition(".")
    try:
        parent = layer.get_submodule(parent_path) if parent_path else layer
        while isinstance(parent, ModuleWrapper) and child not in parent._modules:
            parent = parent.base_layer  # the path runs through a module wrapped before: replace inside it
        base = getattr(parent, child)
    except AttributeError as err:
        raise ConfigError(f"layer {type(layer).__name__} has no submodule {path!r}; check its FamilySpec") from err
    if not isinstance(base, nn.Module):
        raise ConfigError(f"{path!r} in {type(layer).__name__} is not a module")
    wrapper = AdapterWrapper(base, adapter, mode, input_index)
    setattr(parent, child, wrapper)
    return wrapper
