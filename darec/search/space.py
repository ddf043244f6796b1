"""The search space: one adapter-type choice per backbone layer, optional size levels and shared knobs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from darec.errors import ConfigError
from darec.modules.adapters import registered_adapters, resolve_adapter
from darec.search.config import SearchConfig

KNOB_PATHS = {"lr": ("model", "init_args", "lr"), "lambda_mc": ("model", "init_args", "losses", "lambda_mc")}


@dataclass(frozen=True)
class Candidate:
    """One point of the space: the per-layer assignment (``darec fit``'s ``adapters`` list) and knob values."""

    assignment: tuple[str, ...]
    knobs: tuple[tuple[str, float], ...] = ()

    @property
    def key(self) -> str:
        """A stable identity, used to match re-runs on resume."""
        return json.dumps({"adapters": list(self.assignment), "knobs": dict(self.knobs)}, sort_keys=True)

    def label(self) -> str:
        kinds = set(self.assignment)
        text = self.assignment[0] + " x all" if len(kinds) == 1 else ", ".join(self.assignment)
        return text + "".join(f"; {k}={v:.3g}" for k, v in self.knobs)

    def to_json(self) -> dict[str, Any]:
        return {"adapters": list(self.assignment), "knobs": dict(self.knobs)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Candidate":
        return cls(tuple(data["adapters"]), tuple(sorted(data.get("knobs", {}).items())))


@dataclass
class SearchSpace:
    """Adapter types and size levels per layer (the same for every layer), plus knob bounds."""

    num_layers: int
    types: list[str]
    sizes: dict[str, list[int]] = field(default_factory=dict)
    knobs: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: SearchConfig, num_layers: int) -> "SearchSpace":
        if num_layers < 1:
            raise ConfigError(f"the backbone has {num_layers} layers; nothing to search")
        types = list(cfg.space.types) if cfg.space.types is not None else registered_adapters()
        types += [t for t in cfg.space.extra_types if t not in types]
        for name in types:
            resolve_adapter(name)  # fails early, with the registered names, for an unknown or unimportable type
        if len(set(types)) < 2:
            raise ConfigError(f"space.types must offer at least two adapter types per layer, got {types}")
        unknown = sorted(set(cfg.space.sizes) - set(types))
        if unknown:
            raise ConfigError(f"space.sizes names types {unknown} that are not searched; searched: {types}")
        knobs = {k: list(getattr(cfg.space, k)) for k in KNOB_PATHS if getattr(cfg.space, k) is not None}
        return cls(num_layers, types, dict(cfg.space.sizes), knobs)

    @property
    def size_levels(self) -> int:
        return len(next(iter(self.sizes.values()))) if self.sizes else 0

    def ax_parameters(self) -> list[Any]:
        """Ax 1.x parameter configs: ``layer_i`` (type), ``size_i`` (ordered level) and the knobs."""
        from ax import ChoiceParameterConfig, RangeParameterConfig

        params: list[Any] = []
        for i in range(self.num_layers):
            params.append(ChoiceParameterConfig(name=f"layer_{i}", values=list(self.types), parameter_type="str",
                                                is_ordered=False))
            if self.size_levels > 1:
                params.append(ChoiceParameterConfig(name=f"size_{i}", values=list(range(self.size_levels)),
                                                    parameter_type="int", is_ordered=True))
        for name, (low, high) in self.knobs.items():
            params.append(RangeParameterConfig(name=name, bounds=(float(low), float(high)), parameter_type="float",
                                               scaling="log" if name == "lr" else "linear"))
        return params

    def candidate(self, params: dict[str, Any]) -> Candidate:
        """The assignment and knobs an Ax parameterization stands for."""
        out = []
        for i in range(self.num_layers):
            name = str(params[f"layer_{i}"])
            level = int(params.get(f"size_{i}", 0))
            out.append(f"{name}:{self.sizes[name][level]}" if name in self.sizes else name)
        knobs = tuple(sorted((k, float(params[k])) for k in self.knobs))
        return Candidate(tuple(out), knobs)

    def uniform(self, name: str) -> Candidate:
        """``name`` on every layer with its default size and the base config's knobs."""
        resolve_adapter(name)
        return Candidate(tuple([name] * self.num_layers))

    def describe(self) -> dict[str, Any]:
        return {"num_layers": self.num_layers, "types": self.types, "sizes": self.sizes, "knobs": self.knobs}
