"""Per-layer adapters for the frozen backbone: a registry of types, injection by module replacement, state dicts.

Built-in types: ``none``, ``serial`` (bottleneck after the attention and after the feed-forward sub-block),
``parallel`` (bottleneck alongside the feed-forward block), ``lora`` (low-rank update of the attention
projections), ``mixture`` (the three as experts mixed per token by a learned router; ``darec.modules.mixture``)
and ``skip`` (the layer is left out of the forward pass, at the item and the sequence level: a cost choice for
the search, since a skipped layer costs nothing to train or serve).
Every type starts as the identity: the last projection of each adapter is zero-initialised. A container may
return an auxiliary loss of its last forward pass from ``aux_loss()`` (the mixture's load-balancing term); DARec
adds it to its training loss.

Protocol of an adapter type (no need to edit this package; see ``tests/modules/custom_adapter_example.py``)::

    @register_adapter("scale")                # or name it by class path "pkg.module.ClassName" in an assignment
    class ScaleAdapter(AdapterType):
        default_size = None                   # used when an assignment entry gives no size
        @classmethod
        def inject(cls, layer, spec, hidden_size, size) -> AdapterContainer:
            container = AdapterContainer()    # owns every new module/parameter
            container.scale = ChannelScale(hidden_size)
            wrap_output(layer, spec.ffn_out, container.scale, mode="replace")
            return container

A type may also define ``replace_layer(layer)``, returning the module that takes the layer's place in the
backbone's layer list (``skip`` returns a pass-through), and set ``frozen = True`` when it adds nothing that
trains, so that frozen-prefix caching may start above it.

``inject`` receives one transformer layer, the family's :class:`~darec.modules.families.FamilySpec` (paths of the
attention/feed-forward modules inside the layer), the hidden size and the requested size (or ``None``). It must
put every new module in the returned :class:`AdapterContainer` and splice them into the layer with
:func:`wrap_output` (or its own ``setattr``-based replacement); forward hooks are never used. The container's
``adapter_params()`` lists the parameters that train.

Wrappers hold their adapter by plain reference; the container (registered at ``backbone.adapters[i]``) owns it, so
each adapter parameter appears once in ``parameters()`` and ``state_dict()``.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from darec.errors import ConfigError
from darec.modules.families import FamilySpec
from darec.modules.wrapping import AdapterWrapper, ModuleWrapper, wrap_output

__all__ = [
    "AdapterChoice",
    "AdapterContainer",
    "AdapterType",
    "AdapterWrapper",
    "Bottleneck",
    "LoraDelta",
    "SkippedLayer",
    "is_frozen_type",
    "in_out_features",
    "register_adapter",
    "registered_adapters",
    "resolve_adapter",
    "parse_assignment",
    "wrap_output",
    "apply_adapters",
    "mark_only_adapters_trainable",
    "adapter_params",
    "count_trainable",
    "adapter_state_dict",
    "load_adapter_state_dict",
]

_REGISTRY: dict[str, type] = {}
# built-in types that live in their own module, imported (and so registered) when first named or listed
_BUILTIN_MODULES = {"mixture": "darec.modules.mixture"}
_TYPE_KEY = "__type__"


@dataclass(frozen=True)
class AdapterChoice:
    """The adapter type of one layer and its optional size (bottleneck width or LoRA rank)."""

    type: str
    size: int | None = None

    def __str__(self) -> str:
        return self.type if self.size is None else f"{self.type}:{self.size}"


class AdapterContainer(nn.Module):
    """Owns the modules one adapter type added to one layer; ``adapter_type`` and ``size`` are set on injection."""

    def __init__(self) -> None:
        super().__init__()
        self.adapter_type = ""
        self.size: int | None = None

    def adapter_params(self) -> dict[str, nn.Parameter]:
        """The trainable parameters of this adapter, by name relative to the container."""
        return dict(self.named_parameters())

    def aux_loss(self) -> torch.Tensor | None:
        """An auxiliary training loss of the last forward pass (the mixture's load balance), or None."""
        return None

    def extra_repr(self) -> str:
        return f"type={self.adapter_type!r}, size={self.size}"


class AdapterType:
    """Base class of adapter types; subclasses implement :meth:`inject` (duck typing also works)."""

    adapter_name: ClassVar[str] = ""
    default_size: ClassVar[int | None] = None
    frozen: ClassVar[bool] = False  # True: adds nothing that trains, so the layer computes a fixed function

    @classmethod
    def inject(cls, layer: nn.Module, spec: FamilySpec, hidden_size: int, size: int | None) -> AdapterContainer:
        """Add this adapter to ``layer``; return the container holding the new modules."""
        raise NotImplementedError

    @classmethod
    def replace_layer(cls, layer: nn.Module) -> nn.Module:
        """The module that stands in the backbone's layer list for ``layer`` (after :meth:`inject`)."""
        return layer


def register_adapter(name: str) -> Callable[[type], type]:
    """Class decorator registering an adapter type under ``name``."""

    def deco(cls: type) -> type:
        if not callable(getattr(cls, "inject", None)):
            raise ConfigError(f"adapter type {cls!r} must define a classmethod inject(layer, spec, hidden_size, size)")
        if not getattr(cls, "adapter_name", ""):
            cls.adapter_name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def registered_adapters() -> list[str]:
    """Names of the registered adapter types (class paths used so far included)."""
    for module_name in _BUILTIN_MODULES.values():
        importlib.import_module(module_name)
    return sorted(_REGISTRY)


def resolve_adapter(name: str) -> type:
    """The adapter type called ``name``: a registered name, or a class path ``pkg.module.ClassName``
    (also ``pkg.module:ClassName``) that is imported and registered under that path."""
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
    else:
        module_name, _, attr = name.rpartition(".")
    if module_name and attr:
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"cannot import adapter type {name!r}: {err}") from err
        return register_adapter(name)(cls)
    raise ConfigError(
        f"unknown adapter type {name!r}; registered: {registered_adapters()} "
        "(or give a class path 'pkg.module.ClassName')"
    )


def _parse_entry(entry: Any) -> AdapterChoice:
    if isinstance(entry, AdapterChoice):
        name, size = entry.type, entry.size
    elif isinstance(entry, dict):
        unknown = set(entry) - {"type", "size"}
        if "type" not in entry or unknown:
            raise ConfigError(f"adapter entry {entry!r} must be {{'type': name, 'size': n}}")
        name, size = entry["type"], entry.get("size")
    elif isinstance(entry, str):
        head, sep, tail = entry.strip().rpartition(":")
        if sep and tail.strip().isdigit():
            name, size = head.strip(), int(tail)
        elif sep and not (head and "." in head):
            raise ConfigError(f"adapter entry {entry!r}: size after ':' must be a positive integer")
        else:
            name, size = entry.strip(), None
    else:
        raise ConfigError(f"adapter entry must be a name, 'name:size' or a dict, got {entry!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ConfigError(f"adapter size must be a positive integer, got {size!r} in {entry!r}")
    cls = resolve_adapter(str(name))
    return AdapterChoice(getattr(cls, "adapter_name", "") or str(name), size)


def is_frozen_type(name: str) -> bool:
    """Whether the adapter type ``name`` leaves its layer without trainable parameters (``none``, ``skip``)."""
    return bool(getattr(resolve_adapter(name), "frozen", False))


def parse_assignment(spec: Any, num_layers: int) -> list[AdapterChoice]:
    """Per-layer adapter choices from one entry for all layers or a list of ``num_layers`` entries.

    An entry is ``"name"``, ``"name:size"``, ``{"type": name, "size": n}`` or an :class:`AdapterChoice`.
    """
    if isinstance(spec, (list, tuple)):
        if len(spec) != num_layers:
            raise ConfigError(
                f"adapter assignment has {len(spec)} entries but the backbone has {num_layers} layers; give one "
                f"entry per layer or one name for all (registered: {registered_adapters()})"
            )
        return [_parse_entry(e) for e in spec]
    return [_parse_entry(spec)] * num_layers


class Bottleneck(nn.Module):
    """``up(act(down(x)))`` with ``up`` zero-initialised, so the adapter starts as a zero delta."""

    def __init__(self, hidden_size: int, size: int, activation: str = "gelu") -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, size)
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.up = nn.Linear(size, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


class LoraDelta(nn.Module):
    """Low-rank update ``B(A(x)) * alpha / r`` with ``B`` zero-initialised."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.lora_A = nn.Linear(in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_B(self.lora_A(x)) * self.scaling


def in_out_features(module: nn.Module, path: str) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = getattr(module, "weight", None)
    if hasattr(module, "nf") and weight is not None and weight.dim() == 2:
        return int(weight.shape[0]), int(weight.shape[1])
    raise ConfigError(f"LoRA target {path!r} is a {type(module).__name__}, not a Linear or GPT-2 Conv1D")


@register_adapter("none")
class NoAdapter(AdapterType):
    """Leaves the layer untouched."""

    frozen = True

    @classmethod
    def inject(cls, layer: nn.Module, spec: FamilySpec, hidden_size: int, size: int | None) -> AdapterContainer:
        return AdapterContainer()


class SkippedLayer(ModuleWrapper):
    """Takes a skipped layer's place in the layer list: returns the hidden states it is given, unchanged.

    The frozen layer stays in ``base_layer`` (so its weights remain in the backbone's state and fingerprint) but
    never runs.
    """

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


@register_adapter("skip")
class SkipLayer(AdapterType):
    """Leaves the layer out of every forward pass (LayerDrop-style pruning chosen per layer, not sampled)."""

    frozen = True

    @classmethod
    def inject(cls, layer: nn.Module, spec: FamilySpec, hidden_size: int, size: int | None) -> AdapterContainer:
        if size is not None:
            raise ConfigError(f"adapter type 'skip' takes no size, got skip:{size}")
        return AdapterContainer()

    @classmethod
    def replace_layer(cls, layer: nn.Module) -> nn.Module:
        return SkippedLayer(layer)


@register_adapter("serial")
class SerialAdapter(AdapterType):
    """Houlsby-style bottleneck adapters after the attention output and after the feed-forward output."""

    default_size = 64

    @classmethod
    def inject(cls, layer: nn.Module, spec: FamilySpec, hidden_size: int, size: int | None) -> AdapterContainer:
        width = size or cls.default_size
        container = AdapterContainer()
        container.attn = Bottleneck(hidden_size, width)
        container.ffn = Bottleneck(hidden_size, width)
        wrap_output(layer, spec.attn_out, container.attn, mode="residual")
        wrap_output(layer, spec.ffn_out, container.ffn, mode="residual")
        return container


@register_adapter("parallel")
class ParallelAdapter(AdapterType):
    """A bottleneck adapter alongside the feed-forward block (He et al.): ``FFN(x) + up(act(down(x)))``."""

    default_size = 64

    @classmethod
    def inject(cls, layer: nn.Module, spec: FamilySpec, hidden_size: int, size: int | None) -> AdapterContainer:
        container = AdapterContainer()
        container.ffn = Bottleneck(hidden_size, size or cls.default_size)
        wrap_output(layer, spec.ffn_block, container.ffn, mode="parallel", input_index=spec.ffn_block_input)
        return container


@register_adapter("lora")
class LoraAdapter(AdapterType):
    """LoRA (rank ``size``, ``alpha = 2 * rank``) on the family's attention projections."""

    default_size = 8

    @classmethod
    def inject(cls, layer: nn.Module, spec: FamilySpec, hidden_size: int, size: int | None) -> AdapterContainer:
        rank = size or cls.default_size
        container = AdapterContainer()
        container.lora = nn.ModuleDict()
        for path in spec.lora_targets:
            in_f, out_f = in_out_features(layer.get_submodule(path), path)
            delta = LoraDelta(in_f, out_f, rank, alpha=2.0 * rank)
            container.lora[path.replace(".", "__")] = delta
            wrap_output(layer, path, delta, mode="parallel", input_index=0)
        return container


def apply_adapters(backbone: nn.Module, assignment: Any) -> nn.ModuleList:
    """Inject one adapter type per layer; returns (and registers as ``backbone.adapters``) the containers.

    Layers a type replaces (``skip``) are listed as ``"index:type"`` in ``backbone.replaced_layers``: the frozen
    computation differs from the loaded model's, so caches of frozen vectors must key on it.

    ``assignment`` is anything :func:`parse_assignment` accepts. New parameters are created in float32 on the
    backbone's device; they run in float32 and their output is cast back to the backbone's dtype.
    """
    if getattr(backbone, "adapters", None) is not None:
        raise ConfigError("adapters were already applied to this backbone; load a fresh backbone to change them")
    choices = parse_assignment(assignment, backbone.num_layers)
    containers, replaced = [], []
    for i, (layer, choice) in enumerate(zip(list(backbone.layers), choices)):
        kind = resolve_adapter(choice.type)
        container = kind.inject(layer, backbone.spec, backbone.hidden_size, choice.size)
        if not isinstance(container, AdapterContainer):
            raise ConfigError(f"adapter type {choice.type!r}: inject() must return an AdapterContainer")
        container.adapter_type = choice.type
        container.size = choice.size
        device = next(layer.parameters()).device
        containers.append(container.to(device=device))
        replace = getattr(kind, "replace_layer", None)
        if replace is not None:
            stand_in = replace(layer)
            if not isinstance(stand_in, nn.Module):
                raise ConfigError(f"adapter type {choice.type!r}: replace_layer() must return an nn.Module")
            if stand_in is not layer:
                backbone.layers[i] = stand_in
                replaced.append(f"{i}:{choice.type}")
    backbone.adapters = nn.ModuleList(containers)
    backbone.adapter_assignment = choices
    backbone.replaced_layers = replaced
    return backbone.adapters


def adapter_params(module: nn.Module) -> dict[str, nn.Parameter]:
    """Every adapter parameter under ``module``, by full dotted name."""
    out: dict[str, nn.Parameter] = {}
    for name, sub in module.named_modules():
        if isinstance(sub, AdapterContainer):
            for pname, p in sub.adapter_params().items():
                out[f"{name}.{pname}" if name else pname] = p
    return out


def mark_only_adapters_trainable(module: nn.Module, also: tuple[str, ...] = ("special_embeddings",)) -> int:
    """Freeze everything under ``module`` except adapter parameters and parameters whose name ends with one of
    ``also``; returns the number of trainable parameters."""
    for p in module.parameters():
        p.requires_grad_(False)
    for p in adapter_params(module).values():
        p.requires_grad_(True)
    for name, p in module.named_parameters():
        if name.endswith(also):
            p.requires_grad_(True)
    return count_trainable(module)


def count_trainable(module: nn.Module) -> int:
    """Number of trainable parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _type_tag(container: AdapterContainer) -> torch.Tensor:
    text = f"{container.adapter_type}:{container.size}"
    return torch.tensor(list(text.encode()), dtype=torch.uint8)


def adapter_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter-only weights (detached copies) plus a ``<container>.__type__`` tag per layer."""
    out: dict[str, torch.Tensor] = {}
    for name, sub in module.named_modules():
        if isinstance(sub, AdapterContainer):
            out[f"{name}.{_TYPE_KEY}"] = _type_tag(sub)
    for name, p in adapter_params(module).items():
        out[name] = p.detach().clone()
    return out


def _tag_text(t: torch.Tensor) -> str:
    return bytes(t.tolist()).decode(errors="replace")


def load_adapter_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load weights saved by :func:`adapter_state_dict`; a different assignment raises :class:`ConfigError`."""
    own = adapter_state_dict(module)
    problems = [f"missing {k}" for k in own.keys() - state.keys()]
    problems += [f"unexpected {k}" for k in state.keys() - own.keys()]
    for key in own.keys() & state.keys():
        if key.endswith(_TYPE_KEY):
            if _tag_text(own[key]) != _tag_text(state[key]):
                problems.append(f"{key}: saved {_tag_text(state[key])}, model has {_tag_text(own[key])}")
        elif own[key].shape != state[key].shape:
            problems.append(f"{key}: saved shape {tuple(state[key].shape)}, model has {tuple(own[key].shape)}")
    if problems:
        shown = "; ".join(sorted(problems)[:8])
        raise ConfigError(f"adapter weights do not match this adapter assignment ({len(problems)} problems): {shown}")
    params = adapter_params(module)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name].to(device=p.device, dtype=p.dtype))
