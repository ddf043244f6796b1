"""The ``mixture`` adapter type: serial, parallel and LoRA experts in one layer, mixed per token by a learned router.

The first version of the DARec paper (arXiv:2408.07427v1, then called MixRec) chose among adapter experts with a
dynamic mixture instead of a static per-layer choice. Here every expert is the built-in adapter of the same name,
spliced in at its usual place, and its output is multiplied by the token's gate for that expert:

- ``serial``: bottlenecks after the attention output and after the feed-forward output;
- ``parallel``: a bottleneck alongside the feed-forward block;
- ``lora``: low-rank updates of the family's attention projections.

The router is a linear map of the layer's input hidden state to one logit per expert, followed by a softmax
(dense routing: every expert runs, weighted by its gate). It reads the input of the family's first LoRA target
(the query projection, ``q_proj`` or GPT-2's ``c_attn``), which is the first module of the layer to run, and the
other experts reuse those gates for the same tokens. Every expert starts as a zero delta, so the layer starts as
the frozen layer.

A load-balancing term keeps one expert from taking every token (Switch Transformer style): with ``f_e`` the share
of tokens whose largest gate is expert ``e`` and ``P_e`` the mean gate of ``e``, ``balance = E * sum_e f_e * P_e``.
It is about 1 when the tokens spread evenly (a little less with soft gates) and ``E`` when one expert takes all.
:meth:`MixtureContainer.aux_loss` returns it for the last forward pass, and DARec adds ``losses.lambda_balance``
times the mean over layers to its loss. Padding tokens are counted like the others.

``size`` is the width of the serial and parallel bottlenecks (default 64); the LoRA rank is ``max(1, size // 8)``.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from darec.errors import ConfigError
from darec.modules.adapters import AdapterContainer, AdapterType, Bottleneck, LoraDelta, in_out_features, register_adapter
from darec.modules.families import FamilySpec
from darec.modules.wrapping import wrap_output

EXPERTS = ("serial", "parallel", "lora")
SERIAL, PARALLEL, LORA = range(len(EXPERTS))


def balance_loss(gates: torch.Tensor) -> torch.Tensor:
    """``E * sum_e f_e * P_e`` over every token of ``gates`` (``[..., E]``, rows summing to 1)."""
    flat = gates.reshape(-1, gates.shape[-1])
    num = flat.shape[-1]
    share = torch.bincount(flat.argmax(-1), minlength=num).to(flat.dtype) / max(flat.shape[0], 1)
    return num * (share.detach() * flat.mean(0)).sum()


class Router(nn.Module):
    """Per-token softmax gates over the experts, computed once per layer input and reused by every expert."""

    def __init__(self, hidden_size: int, num_experts: int = len(EXPERTS)) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, num_experts)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)
        self._source: weakref.ref[torch.Tensor] | None = None  # the input routed last, without keeping it alive
        self.gates: torch.Tensor | None = None
        self.balance: torch.Tensor | None = None

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """Gates for the tokens of ``x`` (the layer input); computed again only for a new input tensor."""
        if self._source is None or self._source() is not x:
            self.gates = torch.softmax(self.proj(x), dim=-1)
            self.balance = balance_loss(self.gates)
            self._source = weakref.ref(x)
        return self.gates

    def current(self, x: torch.Tensor) -> torch.Tensor:
        """The gates of the layer input routed last; ``x`` must hold the same tokens."""
        if self.gates is None or self.gates.shape[:-1] != x.shape[:-1]:
            raise RuntimeError("mixture adapter: an expert ran before the router saw this layer's input "
                               f"(gates {None if self.gates is None else tuple(self.gates.shape)}, input {tuple(x.shape)})")
        return self.gates


class GatedExpert(nn.Module):
    """An expert's delta multiplied by its gate. The router is held by reference (its container owns it)."""

    def __init__(self, expert: nn.Module, router: Router, index: int, routes: bool = False) -> None:
        super().__init__()
        self.expert = expert
        self.__dict__["router"] = router
        self.index = index
        self.routes = routes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.router.route(x) if self.routes else self.router.current(x)
        return self.expert(x) * gates[..., self.index : self.index + 1].to(x.dtype)

    def extra_repr(self) -> str:
        return f"expert={EXPERTS[self.index]!r}, routes={self.routes}"


class MixtureContainer(AdapterContainer):
    """The router and the three experts of one layer; ``aux_loss`` is the balance term of the last pass."""

    def aux_loss(self) -> torch.Tensor | None:
        return self.router.balance

    def gate_means(self) -> torch.Tensor | None:
        """Mean gate per expert over the tokens of the last pass (``EXPERTS`` order)."""
        gates = self.router.gates
        return None if gates is None else gates.detach().reshape(-1, gates.shape[-1]).mean(0)


@register_adapter("mixture")
class MixtureAdapter(AdapterType):
    """Serial, parallel and LoRA experts mixed per token by a learned router (see the module docstring)."""

    default_size = 64

    @classmethod
    def inject(cls, layer: nn.Module, spec: FamilySpec, hidden_size: int, size: int | None) -> AdapterContainer:
        if not spec.lora_targets:
            raise ConfigError("the mixture adapter routes on the input of the family's first LoRA target; "
                              "this family names no lora_targets")
        width = size or cls.default_size
        rank = max(1, width // 8)
        container = MixtureContainer()
        container.router = Router(hidden_size)
        container.lora = nn.ModuleDict()
        for i, path in enumerate(spec.lora_targets):  # the first target sees the layer input first: it routes
            in_f, out_f = in_out_features(layer.get_submodule(path), path)
            gated = GatedExpert(LoraDelta(in_f, out_f, rank, alpha=2.0 * rank), container.router, LORA, routes=i == 0)
            container.lora[path.replace(".", "__")] = gated
            wrap_output(layer, path, gated, mode="parallel", input_index=0)
        container.attn = GatedExpert(Bottleneck(hidden_size, width), container.router, SERIAL)
        container.ffn = GatedExpert(Bottleneck(hidden_size, width), container.router, SERIAL)
        container.parallel = GatedExpert(Bottleneck(hidden_size, width), container.router, PARALLEL)
        wrap_output(layer, spec.attn_out, container.attn, mode="residual")
        wrap_output(layer, spec.ffn_block, container.parallel, mode="parallel", input_index=spec.ffn_block_input)
        wrap_output(layer, spec.ffn_out, container.ffn, mode="residual")
        return container
