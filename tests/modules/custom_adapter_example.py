"""A worked example of a user-defined adapter type, used by the tests through its class path.

``ChannelScaleAdapter`` multiplies the feed-forward output of a layer by a learned per-channel scale (initialised
to 1, so it starts as the identity). Use it in an assignment as ``"custom_adapter_example.ChannelScaleAdapter"``
(the module must be importable) or register it by name with ``@register_adapter("scale")``.
"""

import torch
from torch import nn

from darec.modules.adapters import AdapterContainer, AdapterType
from darec.modules.wrapping import wrap_output
from darec.modules.families import FamilySpec


class ChannelScale(nn.Module):
    """``x * scale`` with one learned scale per hidden channel."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class ChannelScaleAdapter(AdapterType):
    """Per-channel scaling of the feed-forward output; ``size`` is ignored."""

    @classmethod
    def inject(cls, layer: nn.Module, spec: FamilySpec, hidden_size: int, size: int | None) -> AdapterContainer:
        container = AdapterContainer()
        container.scale = ChannelScale(hidden_size)
        wrap_output(layer, spec.ffn_out, container.scale, mode="replace")
        return container
