"""Per-family layout table: where a transformer family keeps its layers, attention and feed-forward blocks.

Adding a family is one :func:`register_family` call (or one line in :data:`FAMILIES`); the key is the HF
``config.model_type``. :mod:`darec.modules.backbone` and :mod:`darec.modules.adapters` read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from darec.errors import ConfigError

__all__ = ["FamilySpec", "FAMILIES", "register_family", "family_spec"]


@dataclass(frozen=True)
class FamilySpec:
    """Where things live inside one transformer layer of a model family (paths relative to the layer).

    Attributes:
        layers: path of the ``nn.ModuleList`` of layers inside the bare model.
        attn_out: module whose output (first element if a tuple) is the attention sub-block's output before the
            residual connection; serial adapters go after it.
        ffn_out: module whose output is the feed-forward sub-block's output before the residual connection.
        ffn_block: module a parallel adapter runs alongside; its output gets the adapter's output added.
        ffn_block_input: positional index of the hidden-size input of ``ffn_block`` (the parallel adapter's input).
        lora_targets: linear (or GPT-2 ``Conv1D``) projections LoRA adapts.
        decoder: causal (decoder-only) family.
    """

    layers: str
    attn_out: str
    ffn_out: str
    ffn_block: str
    ffn_block_input: int = 0
    lora_targets: tuple[str, ...] = ()
    decoder: bool = True


_LLAMA_LIKE = FamilySpec(
    layers="layers",
    attn_out="self_attn",
    ffn_out="mlp",
    ffn_block="mlp",
    lora_targets=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
)

FAMILIES: dict[str, FamilySpec] = {
    "bert": FamilySpec(
        layers="encoder.layer",
        attn_out="attention.output.dense",
        ffn_out="output.dense",
        ffn_block="output",
        ffn_block_input=1,
        lora_targets=("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"),
        decoder=False,
    ),
    "gpt2": FamilySpec(
        layers="h", attn_out="attn", ffn_out="mlp", ffn_block="mlp", lora_targets=("attn.c_attn", "attn.c_proj")
    ),
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
}


def register_family(model_type: str, spec: FamilySpec) -> None:
    """Make a model family (keyed by HF ``config.model_type``) usable as a backbone."""
    FAMILIES[model_type] = spec


def family_spec(model_type: str) -> FamilySpec:
    """The :class:`FamilySpec` of ``model_type``; an unknown family raises :class:`ConfigError`."""
    if model_type not in FAMILIES:
        raise ConfigError(
            f"backbone family {model_type!r} is not supported yet (known: {sorted(FAMILIES)}); add it with "
            "darec.modules.families.register_family(model_type, FamilySpec(layers=..., attn_out=..., ffn_out=..., "
            "ffn_block=..., lora_targets=(...), decoder=...))"
        )
    return FAMILIES[model_type]
