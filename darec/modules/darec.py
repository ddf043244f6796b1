"""DARec as a LightningModule: frozen LM with adapters, two-level forward, three adaption losses."""

from __future__ import annotations

import hashlib
import logging
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from darec.modules.text import tokenize_sentences
from darec.errors import ConfigError
from darec.evaluation.metrics import RankHistogram
from darec.evaluation.ranking import chunked_target_ranks
from darec.modules.adapters import apply_adapters, count_trainable, mark_only_adapters_trainable, parse_assignment
from darec.modules.backbone import BackboneConfig, load_backbone
from darec.modules.base import EvalBatch, EvalConfig, RecModule
from darec.modules.ema import WeightEma
from darec.modules.frozen_prefix import first_adapted_layer
from darec.modules.hard_negatives import cached_hard_negatives
from darec.modules.injection import CollaborativeInjection, InjectionConfig
from darec.modules.item_encoder import ItemEncoder
from darec.modules.losses import alignment_loss, full_scores, hard_negative_loss, next_item_loss, seen_items

log = logging.getLogger(__name__)

# SASRec-score weights tried after every validation pass with ``injection.residual_weight: validation``
RESIDUAL_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)


@dataclass
class LossConfig:
    """Weights and switches of the three adaption losses and of the adapters' auxiliary loss."""

    next_item: bool = True  # full-softmax next-item cross-entropy
    label_smoothing: float = 0.0  # share of next_item's target mass spread evenly over the items scored (0: none)
    sampled_softmax: int = 0  # > 0: sampled softmax with this many shared negatives instead
    mask_seen: bool = False  # leave the window's items up to each position out of next_item's softmax (full softmax)
    masked_context: bool = False  # alignment of fresh item vectors with the item-ID table (needs item-level adapters)
    lambda_mc: float = 0.1  # weight of masked_context
    hard_negative: bool = True  # InfoNCE against mined hard negatives
    lambda_hard: float = 0.1  # weight of hard_negative
    hard_k: int = 10  # hard negatives mined per item
    hard_source: str = "text"  # vectors to mine with: "text" (frozen mean-pooled backbone) or "cf"
    hard_window: int = 5  # never co-occur within ± this many positions in a training history
    temperature: float = 1.0  # InfoNCE temperature
    lambda_balance: float = 0.01  # weight of the adapters' auxiliary loss (the mixture adapter's load balance)


def _as(cls: type, value: Any) -> Any:
    """A config dataclass from itself or from a plain dict (checkpoints store plain dicts)."""
    return cls(**value) if isinstance(value, dict) else value


def setup_device(strategy: Any) -> torch.device | None:
    """The accelerator device DARec's ``setup`` moves the model to before its item-level work (the catalogue's first
    encode, the mean-pooled encode for hard-negative mining, the input calibration), or None to leave it in place.

    Lightning calls ``setup`` before its strategy moves the model, so without this that work runs on the host CPU
    (9-27 s per fit on an H200 host). Only strategies that put the whole model on one device anyway qualify (a single
    device, DDP); FSDP and DeepSpeed shard it, and moving it whole first could exhaust the device's memory."""
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy

    whole = isinstance(strategy, SingleDeviceStrategy) or (
        isinstance(strategy, DDPStrategy) and not isinstance(strategy, DeepSpeedStrategy))
    device = strategy.root_device if whole else None
    return device if device is not None and device.type != "cpu" else None


class DARec(RecModule):
    """DARec (arXiv:2408.07427) for full-ranking next-item recommendation.

    The defaults are the configuration benchmarked on ml-100k on a CPU (``benchmarks/darec_ml100k.json``,
    ``benchmarks/ablation.json``): item sentences are encoded once by the frozen backbone (context masking, mean of
    the token states) and the adapters adapt the sequence level. The paper's item-level adaptation, where the
    adapters also act on item text and the masked-context loss aligns item vectors with item IDs, is
    ``item_adapter_layers: null, max_fresh_items: 64, losses: {masked_context: true}``; it costs an item-level pass
    with gradient every step and cache refreshes (``benchmarks/darec_epoch.py --skip before after`` measures it).

    Args:
        backbone: which language model (frozen) and how to load it.
        adapters: one adapter type for all layers ("serial", "lora:8", a class path), or one entry per layer.
        max_len: history items the sequence level sees.
        pack_len: tokens per packed item row.
        max_item_tokens: tokens kept per item sentence.
        context_masking: block-diagonal item masks (the method). False is the ablation: at the sequence
            level each window's item texts are encoded together, every item's tokens also attending to the
            tokens of earlier items in the window (concatenated-history LLM recommendation). Costlier, and
            the sequence inputs cannot come from the item cache.
        history_tokens: with ``context_masking: false``, the most tokens one window's concatenated text
            may hold; older items that do not fit are encoded alone.
        injection: collaborative knowledge injection (none / input / attention).
        losses: loss weights and switches.
        proj_dim: width of the scoring space (``W_o h`` and ``e_j``); 0 uses the hidden size.
        predict_from: "last_item" (default: the last item's position scores the next item; every training
            target trains the state that scores) or "seq" (the ``[SEQ]`` token after the window scores it,
            and item positions predict the items inside the window). With "seq" the ``[SEQ]`` state is trained
            only by windows that another training item follows, so it learns slowly: after one epoch on
            ml-100k (MiniLM, SASRec + LightGCN injection) validation NDCG@10 was 0.078 with "last_item" and
            0.040 with "seq" at 3x the learning rate.
        item_vector: the semantic vector ``s_i``: ``"mean"`` (mean of the item's token states; the text tokens
            never attend ``[ALIGN]``), ``"align"`` (the ``[ALIGN]`` state), ``"align_mean"`` (their sum) or
            ``"auto"`` (``mean`` for encoder backbones, ``align`` for decoders; see :class:`ItemEncoder`). On
            ml-100k with MiniLM the 10 nearest neighbours of an item share its year 0.16 of the time with the frozen
            ``[ALIGN]`` state and 0.50 with the mean (random: 0.11); ``benchmarks/darec_epoch.py`` reports this.
        item_framing: tokenise item sentences with the backbone's own framing tokens (``[CLS] … [SEP]``, BOS).
        item_adapter_layers: how many of the top layers' adapters also act at the item level. ``null``: all of them
            (the method). ``0``: item sentences are encoded by the frozen backbone, the adapters shape the sequence
            level only, and with ``max_fresh_items: 0`` the item vectors are computed once and never go stale.
            ``k``: the top ``k`` layers' adapters act at both levels; below them the item level is frozen (and
            computed once with ``frozen_prefix``).
        frozen_prefix: compute the item-level states below the first adapted layer once (exact; only with the
            ``mean`` item vector, and a no-op when layer 0 has an adapter).
        max_fresh_items: in-batch items encoded with gradient per step; the others take no adapter gradient.
        fresh_gradient: how fresh encodings enter the item table. ``"straight_through"``: every row's value comes
            from the cache and fresh items pass their gradient straight through to the adapters, so fresh and
            cached rows never differ (fresh rows are mostly the batch's targets, and any difference would be a
            training-only cue to the label). ``"replace"``: fresh values replace cached ones (the old behaviour).
        refresh_every: rebuild the item cache every N training steps (0: only at the start of an epoch when stale).
            Evaluation always rebuilds it first.
        calibrate_inputs: at the start of fitting, rescale ``W_s``, ``W_c`` and ``W_u`` so that the text,
            item-CF and user-CF input terms each start at the RMS of the backbone's word embeddings (measured on
            the catalogue and on training windows); without it the user-CF term starts about 9x larger than the
            text term.
        dropout: dropout on the sequence-level input (the sum of its terms) and on the states before ``W_o``; the
            frozen backbone itself never drops anything.
        text_path: > 0 adds a direct text path to the scoring state: ``W_t`` applied to the mean of the last
            ``text_path`` items' standardised semantic vectors (items up to the scoring position only), beside
            ``W_o h``. 0 turns it off.
        scoring: how the language model's state meets an item's row. ``"dot"``: ``<W_o h, e_j>``. ``"cosine"``:
            both are scaled to unit length and their cosine is multiplied by a learned scale ``exp(tau)`` (starting
            at 10, at most 100), so no item wins by the length of its row alone. SASRec's residual score, when on,
            is added as before.
        item_embeddings: add a learned vector ``v_j`` per item, zero at the start, to its row ``e_j`` of the scoring
            table: capacity of its own for each item beside the linear map of its text and CF features (no weight
            decay, like every table). False: ``e_j`` is the feature map alone.
        cf_passthrough: ``W_p`` starts by passing the CF item vector through (``e_j = c_j`` plus a small text term),
            so CF knowledge is usable at once. False: its CF block starts as small as its text block, and neither
            feature starts ahead.
        lr, weight_decay: AdamW settings for the trainable parameters. Weight decay applies to weight matrices
            only: never to biases, scales, the special tokens, the item-ID table or ``item_embeddings``.
        lr_adapters: learning rate of the adapters and special tokens (None: ``lr``); the projections and tables
            train at ``lr``.
        warmup_steps: linear learning-rate warm-up over this many optimizer steps (0: none).
        ema: > 0 keeps an exponential moving average of the trainable weights with this decay per optimizer step
            (:class:`darec.modules.ema.WeightEma`); the model is evaluated, selected, tested and recommends with
            the averaged weights (in eval mode) and trains its own (in train mode); 0: off.
        ema_warmup: the average's warm-up, ``decay = min(ema, (1 + n) / (ema_warmup + n))`` after ``n`` steps; it
            binds below ``ema`` for the first ``(ema * ema_warmup - 1) / (1 - ema)`` steps (891 at 0.99 and 10).
        cache_dir: where tokenisations and hard negatives are cached (outside the prepared data).
    """

    def __init__(
        self,
        num_items: int = 0,
        num_users: int = 0,
        data_fingerprint: str = "",
        evaluation: EvalConfig | None = None,
        backbone: BackboneConfig = BackboneConfig(),
        adapters: str | list[Any] = "serial",
        max_len: int = 50,
        pack_len: int = 128,
        max_item_tokens: int = 48,
        context_masking: bool = True,
        history_tokens: int = 1024,
        injection: InjectionConfig = InjectionConfig(),
        losses: LossConfig = LossConfig(),
        proj_dim: int = 0,
        predict_from: str = "last_item",
        item_vector: str = "auto",
        item_framing: bool = True,
        item_adapter_layers: int | None = 0,
        frozen_prefix: bool = True,
        max_fresh_items: int = 0,
        fresh_gradient: str = "straight_through",
        refresh_every: int = 10,
        calibrate_inputs: bool = True,
        dropout: float = 0.1,
        text_path: int = 0,
        scoring: str = "dot",
        item_embeddings: bool = False,
        cf_passthrough: bool = True,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        lr_adapters: float | None = None,
        warmup_steps: int = 0,
        ema: float = 0.0,
        ema_warmup: float = 10.0,
        cache_dir: str = ".darec_cache",
    ):
        super().__init__(num_items, num_users, data_fingerprint, evaluation)
        backbone, injection, losses = _as(BackboneConfig, backbone), _as(InjectionConfig, injection), _as(LossConfig, losses)
        self.save_hyperparameters()
        for key, value in (("backbone", backbone), ("injection", injection), ("losses", losses)):
            self.hparams[key] = asdict(value)
        self.context_masking = context_masking
        self.history_tokens = history_tokens
        self.backbone_cfg = backbone
        self.max_len = max_len
        if predict_from not in ("seq", "last_item"):
            raise ConfigError(f"predict_from must be 'seq' or 'last_item', got {predict_from!r}")
        self.predict_from = predict_from
        if fresh_gradient not in ("straight_through", "replace"):
            raise ConfigError(f"fresh_gradient must be 'straight_through' or 'replace', got {fresh_gradient!r}")
        self.losses = losses
        self.max_fresh_items = max_fresh_items
        self.fresh_gradient = fresh_gradient
        self.refresh_every = refresh_every
        self.item_framing = item_framing
        self.calibrate_inputs = calibrate_inputs
        self.lr, self.weight_decay = lr, weight_decay
        self.lr_adapters = lr if lr_adapters is None else lr_adapters
        self.warmup_steps = warmup_steps
        self.text_path = text_path
        if scoring not in ("dot", "cosine"):
            raise ConfigError(f"scoring must be 'dot' or 'cosine', got {scoring!r}")
        self.score_log_scale = nn.Parameter(torch.tensor(math.log(10.0))) if scoring == "cosine" else None
        if not 0.0 <= losses.label_smoothing < 1.0:
            raise ConfigError(f"losses.label_smoothing must be in [0, 1), got {losses.label_smoothing!r}")
        if losses.mask_seen and losses.sampled_softmax > 0:
            raise ConfigError("losses.mask_seen works on the full softmax; set losses.sampled_softmax: 0")
        self.drop = nn.Dropout(dropout)
        self.cache_dir = cache_dir
        self.backbone = load_backbone(backbone)
        self.assignment = parse_assignment(adapters, self.backbone.num_layers)
        apply_adapters(self.backbone, self.assignment)
        mark_only_adapters_trainable(self.backbone)
        h = self.backbone.hidden_size
        d = proj_dim or h
        self.injection = CollaborativeInjection(injection, num_items, h, data_fingerprint, self.backbone.layers)
        self.encoder = ItemEncoder(
            self.backbone, [[]], pack_len, item_vector=item_vector, adapter_layers=item_adapter_layers
        )
        cut = max(first_adapted_layer(self.assignment), self.encoder.bypass_below)
        if frozen_prefix and 0 < cut < self.backbone.num_layers and context_masking and self.encoder.hide_align:
            self.encoder.enable_frozen_prefix(cut)
        self.max_item_tokens = max_item_tokens
        self.w_s = nn.Linear(h, h)
        self.w_o = nn.Linear(h, d)
        self.w_p = nn.Linear(h + self.injection.item_feature_dim, d)
        self.w_t = nn.Linear(h, d) if text_path > 0 else None
        # zero at the start: e_j begins as the feature map alone, and the loss decides how far each item departs from it
        self.item_embeddings = nn.Parameter(torch.zeros(num_items + 1, d)) if item_embeddings else None
        self._init_projections()
        cf_dim = self.injection.item_feature_dim
        if cf_passthrough and cf_dim and d >= cf_dim:
            with torch.no_grad():  # e_j starts out carrying c_j itself, so CF knowledge is usable at once
                self.w_p.weight[:, h:].zero_()
                self.w_p.weight[:cf_dim, h:].copy_(torch.eye(cf_dim))
        self.id_dim = self.injection.item_dim or 64
        self.w_a = nn.Linear(h, self.id_dim, bias=False)
        self.id_table = nn.Parameter(self.injection.init_id_table(num_items, self.id_dim))
        self.register_buffer("sem_cache", torch.zeros(num_items + 1, h), persistent=False)
        self.register_buffer("sem_mean", torch.zeros(h), persistent=False)
        self.register_buffer("sem_std", torch.ones(h), persistent=False)
        self.register_buffer("hard_negs", torch.zeros(num_items + 1, max(losses.hard_k, 1), dtype=torch.long), persistent=False)
        self.register_buffer("dup_text", torch.zeros(num_items + 1, dtype=torch.bool), persistent=False)
        self.register_buffer("inputs_calibrated", torch.zeros((), dtype=torch.bool))
        self.val_by_weight = nn.ModuleList(RankHistogram() for _ in RESIDUAL_GRID) if self._weight_on_validation else None
        self._eval_table: torch.Tensor | None = None
        self._ready = False
        self._mined = False
        self._cache_built = False
        self.steps_since_refresh = 0
        self.never_trained = self._freeze_what_never_trains()
        self.ema = WeightEma(self, ema, ema_warmup) if ema > 0 else None

    @torch.no_grad()
    def _init_projections(self) -> None:
        """Start near the backbone's own scales: ``W_s`` outputs match its token-embedding RMS, and
        scores ``<W_o h, e_j>`` start close to zero (a near-uniform softmax, as SASRec's small init gives)."""
        h = self.backbone.hidden_size
        emb_rms = float(self.backbone.word_embeddings.weight.float().pow(2).mean().sqrt())
        nn.init.normal_(self.w_s.weight, std=emb_rms / h**0.5)
        heads = [lin for lin in (self.w_o, self.w_p, self.w_t) if lin is not None]
        for lin in heads:
            nn.init.normal_(lin.weight, std=1.0 / h)
        for lin in (self.w_s, *heads):
            nn.init.zeros_(lin.bias)

    def _freeze_what_never_trains(self) -> list[str]:
        """Freeze the parameters this configuration never reads with gradient, and return their names.

        Every parameter left trainable then gets a gradient at every step, which DDP requires, and the optimiser, the
        weight averages and the checkpoints hold only what trains. The alignment head ``w_a`` and the item-ID table
        train only through the masked-context loss, which reads items encoded fresh (``max_fresh_items > 0``). The
        special-token rows train only where ``[SEQ]`` is read (``predict_from: seq``) or where ``[ALIGN]`` shapes an
        item vector computed with gradient (``item_vector`` other than ``mean``, with fresh items or with context
        masking off): with ``mean`` no text token attends ``[ALIGN]`` and the mean leaves it out. Frozen special rows
        keep their seeded initial values, which a model rebuilt from its configuration has too.
        """
        lo = self.losses
        alignment = lo.masked_context and lo.lambda_mc > 0 and self.max_fresh_items > 0
        item_grad = self.max_fresh_items > 0 or not self.context_masking
        special = self.predict_from == "seq" or (item_grad and not self.encoder.hide_align)
        unused = [] if alignment else ["w_a.weight", "id_table"]
        if not special:
            unused.append("backbone.special_embeddings")
        for name in unused:
            self.get_parameter(name).requires_grad_(False)
        return unused

    def train(self, mode: bool = True) -> "DARec":
        """Train or eval mode; with ``ema`` eval mode also puts the averaged weights in place, and train mode the
        trained ones."""
        super().train(mode)
        ema = getattr(self, "ema", None)  # None while __init__ runs
        if ema is not None:
            ema.restore() if mode else ema.use()
        return self

    # ----------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        dm = self.attached_datamodule()
        if dm is None:
            return
        device = setup_device(self.trainer.strategy)
        if device is not None and device != self.sem_cache.device:
            self.to(device)  # the catalogue's first encode and the mining encode run on the accelerator, not the host
        self.check_window_length(self.max_len)
        data = dm.data
        if self.data_fingerprint:
            data.check_fingerprint(self.data_fingerprint, "this DARec model")
        train = data.train_sequences()
        if not (self._ready and (self._mined or stage != "fit")):
            self.attach_data(data.sentences, data.text_hash, data.fingerprint, train, data.item_raw_ids)
        if stage == "fit" and self.calibrate_inputs and not bool(self.inputs_calibrated):
            self.refresh_cache()
            self.calibrate_input_scales(*_recent_windows(train, self.max_len))

    def attach_data(self, sentences: list[str], text_hash: str, fingerprint: str, train_seqs: list, item_raw_ids: list[str] | None = None) -> None:
        """Tokenise item sentences (cached) and mine hard negatives from training sequences.

        ``sentences`` covers every item id (warm catalogue, then cold items). With no training
        sequences (inference), mining is skipped.
        """
        self.item_sentences = list(sentences)
        self.item_raw_ids = list(item_raw_ids) if item_raw_ids is not None else [str(i) for i in range(len(sentences))]
        self.text_hash = text_hash
        tok = self.backbone.tokenizer
        tokens = tokenize_sentences(
            sentences, tok, self.max_item_tokens, str(Path(self.cache_dir) / "tokens"), text_hash, self.item_framing
        )
        self.encoder.set_tokens(tokens)
        self._cache_built = False
        seen: dict[str, int] = {}
        for i in range(1, self.num_items + 1):
            seen[sentences[i]] = seen.get(sentences[i], 0) + 1
        dup = torch.tensor([False] + [seen[sentences[i]] > 1 for i in range(1, self.num_items + 1)])
        self.dup_text.copy_(dup.to(self.dup_text.device))
        if dup.any() and self.losses.masked_context:
            log.info("%d items share their sentence with another item; excluded from the alignment loss", int(dup.sum()))
        if self.losses.hard_negative and self.losses.lambda_hard > 0 and train_seqs:
            if self.losses.hard_source == "cf" and self.injection.item_dim:
                vecs: Any = self.injection.item_vectors.detach().cpu()
                source = None
            else:
                vecs = lambda: self.encoder.encode_all(self.num_items, mean_pool=True).cpu()  # noqa: E731
                source = self._text_source_key()
            hn = cached_hard_negatives(
                Path(self.cache_dir) / "hard_negatives", fingerprint, vecs, train_seqs, sentences,
                self.num_items, self.losses.hard_k, self.losses.hard_window, source_key=source,
            )
            self.hard_negs.copy_(hn.negatives.to(self.hard_negs.device))
            self.hard_negative_share_without = hn.share_targets_without
            self._mined = True
        self._ready = True
        log.info("DARec: %s trainable parameters%s", f"{count_trainable(self):,}",
                 f" (frozen, never trained by this configuration: {', '.join(self.never_trained)})" if self.never_trained else "")

    def _text_source_key(self) -> str:
        """What the frozen mean-pooled text vectors are computed from: backbone weights and skipped layers, texts and
        tokenisation."""
        ident = self.backbone.identity()["weights_sha256"]
        text = f"{ident}|{self.text_hash}|{self.max_item_tokens}|{self.item_framing}|{self.encoder.pack_len}|mean"
        if self.backbone.replaced_layers:  # a skipped layer changes the frozen vectors (keys without one are as before)
            text += "|replaced:" + ",".join(self.backbone.replaced_layers)
        return hashlib.sha256(text.encode()).hexdigest()

    # ----------------------------------------------------------------- item tables
    @torch.no_grad()
    def refresh_cache(self) -> None:
        """Re-encode every catalogue item with the current adapters (no gradient, trainable parts in eval mode).

        A no-op once built when nothing at the item level trains (``item_adapter_layers: 0``, no fresh items)."""
        if self._cache_built and self.item_level_frozen:
            self.steps_since_refresh = 0
            return
        with _eval_mode(self):
            self.sem_cache.copy_(self.encoder.encode_all(self.num_items).to(self.sem_cache.dtype))
        rows = self.sem_cache[1:].float()
        self.sem_mean.copy_(rows.mean(0))
        centred = rows - rows.mean(0)
        scale = centred.pow(2).sum(1).mean().sqrt() / max(1, rows.shape[1]) ** 0.5 if len(rows) > 1 else rows.new_ones(())
        self.sem_std.fill_(float(scale.clamp(min=1e-6)))
        self._cache_built = True
        self.steps_since_refresh = 0

    @property
    def item_level_frozen(self) -> bool:
        """Nothing that item vectors depend on trains: the cache, once built, never goes stale."""
        return self.encoder.frozen and self.max_fresh_items == 0

    def _input_terms(self, windows: torch.Tensor, users: torch.Tensor | None = None) -> dict[str, tuple[nn.Linear, torch.Tensor]]:
        """Each sequence-level input term as (its projection, its inputs): the text term ``W_s s_i`` and the
        item-CF term ``W_c c_i`` over the catalogue, the user-CF term ``W_u u_t`` over the valid positions of
        ``windows`` [B, L] of ``users`` [B]."""
        inj = self.injection
        items = torch.arange(1, self.num_items + 1, device=self.sem_cache.device)
        terms = {"text": (self.w_s, self.standardise(self.sem_cache[items].float()))}
        if inj.w_c is not None:
            has = inj.has_cf.clone()
            has[0] = False
            terms["item_cf"] = (inj.w_c, inj.item_vectors[has].float())
        windows = windows.to(self.sem_cache.device)
        user = inj.user_states(windows, users) if inj.w_u is not None and inj.cfg.mode != "none" else None
        if user is not None:
            terms["user_cf"] = (inj.w_u, user[windows > 0].float())
        return terms

    @torch.no_grad()
    def input_scales(self, windows: torch.Tensor, users: torch.Tensor | None = None) -> dict[str, float]:
        """RMS of each sequence-level input term (see :meth:`_input_terms`) at the current weights, beside the
        RMS of the backbone's word embeddings and, when it has them, of its first ``max_len`` position embeddings."""
        out = {"word_embeddings": float(self.backbone.word_embeddings.weight.float().pow(2).mean().sqrt())}
        for name, (lin, x) in self._input_terms(windows, users).items():
            out[name] = float(lin(x).pow(2).mean().sqrt()) if len(x) else 0.0
        pos = getattr(getattr(self.backbone.model, "embeddings", None), "position_embeddings", None)
        if isinstance(pos, nn.Embedding):
            out["positions"] = float(pos.weight[: self.max_len].float().pow(2).mean().sqrt())
        return out

    @torch.no_grad()
    def calibrate_input_scales(self, windows: torch.Tensor, users: torch.Tensor | None = None) -> dict[str, float]:
        """Rescale ``W_s``, ``W_c`` and ``W_u`` so that each input term starts at the RMS of the backbone's word
        embeddings, the scale its own inputs had in pretraining; returns :meth:`input_scales` afterwards."""
        target = float(self.backbone.word_embeddings.weight.float().pow(2).mean().sqrt())
        for lin, x in self._input_terms(windows, users).values():
            rms = float(lin(x).pow(2).mean().sqrt()) if len(x) else 0.0
            if rms > 0:
                lin.weight.mul_(target / rms)
                lin.bias.mul_(target / rms)
        self.inputs_calibrated.fill_(True)
        return self.input_scales(windows, users)

    def standardise(self, sem: torch.Tensor) -> torch.Tensor:
        """Centre semantic vectors on the catalogue mean and scale them to unit RMS per dimension.

        Frozen LM states are anisotropic (items share a large common direction); removing it makes
        the item differences the projections see comparable in scale to the vectors themselves. The
        statistics come from the last cache refresh; one scalar scale keeps relative dimensions intact.
        """
        return (sem - self.sem_mean) / self.sem_std

    def item_table(self, sem: torch.Tensor) -> torch.Tensor:
        """``e_j = W_p [s_j ; c_j]`` (``+ v_j`` with ``item_embeddings``; ``W_p s_j`` with ``injection.item_vectors:
        false``) for rows of ``sem`` [N+1, H]; row 0 is zeroed.

        Rows beyond the catalogue (cold items, items added later) get ``c_j = 0`` and ``v_j = 0``. With ``injection.residual``
        each row also carries SASRec's item vector, which meets ``alpha u_t`` in the scoring state.
        """
        sem = self.standardise(sem)
        feats = sem
        if self.injection.item_feature_dim:
            cf = self.injection.item_vectors.to(sem.dtype)
            if sem.shape[0] > cf.shape[0]:
                cf = torch.cat([cf, cf.new_zeros(sem.shape[0] - cf.shape[0], cf.shape[1])], 0)
            feats = torch.cat([sem, cf], -1)
        table = self.w_p(feats)
        if self.item_embeddings is not None:
            free = self.item_embeddings[: table.shape[0]].to(table.dtype)
            table = table + torch.cat([free, free.new_zeros(table.shape[0] - free.shape[0], free.shape[1])], 0)
        table = self._unit(table)
        if self.injection.residual_scale is not None:
            table = torch.cat([table, self.injection.residual_items(table.shape[0]).to(table.dtype)], -1)
        return table * (torch.arange(table.shape[0], device=table.device) > 0).unsqueeze(1).to(table.dtype)

    def fresh_semantics(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Semantic table with the batch's items (up to ``max_fresh_items``) encoded with gradient."""
        uniq = torch.unique(ids[ids > 0])
        if len(uniq) > self.max_fresh_items:
            uniq = uniq[torch.randperm(len(uniq), device=uniq.device)[: self.max_fresh_items]]
        fresh = self.encoder.encode(uniq.cpu()).float()
        table = self.sem_cache.detach().clone().float()
        if self.fresh_gradient == "straight_through":
            fresh = table[uniq] + (fresh - fresh.detach())
        table[uniq] = fresh
        return table, uniq, fresh

    # ----------------------------------------------------------------- sequence level
    def sequence_states(self, seq: torch.Tensor, sem: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [B, L+1, H] for item windows ``seq`` [B, L] (left-padded) followed by ``[SEQ]``
        ([B, L, H] without ``[SEQ]`` when ``predict_from="last_item"``); the last row scores the next item.

        ``user``: the causal user vectors of ``seq`` when the caller already has them (else computed here).
        """
        b = seq.shape[0]
        if user is None:
            user = self.injection.user_states(seq)
        item_sem = sem[seq] if self.context_masking else self.history_semantics(seq, sem)
        x = self.drop(self.w_s(self.standardise(item_sem)) + self.injection.input_term(seq, user))
        if self.predict_from == "last_item":
            valid = seq > 0
        else:
            valid = torch.cat([seq > 0, torch.ones(b, 1, dtype=torch.bool, device=seq.device)], 1)
            seq_tok = torch.full((b, 1), self.backbone.seq_id, device=seq.device)
            x = torch.cat([x, self.backbone.embed(seq_tok).to(x.dtype)], 1)
        x = x * valid.unsqueeze(-1).to(x.dtype)
        pos = (valid.long().cumsum(1) - 1).clamp(min=0)
        return self.injection.run_with_prefixes(self.backbone, seq, x, valid, pos, user).float()

    def history_semantics(self, seq: torch.Tensor, sem: torch.Tensor) -> torch.Tensor:
        """``s_i`` [B, L, H] with context masking off (see :meth:`ItemEncoder.encode_histories`)."""
        return self.encoder.encode_histories(seq, sem, self.history_tokens)

    def scoring_states(self, seq: torch.Tensor, sem: torch.Tensor, last_only: bool = False,
                       users: torch.Tensor | None = None) -> torch.Tensor:
        """The scoring states of windows ``seq`` [B, L], aligned with their targets: ``[B, L, d']`` (item
        positions 0..L-1; with ``predict_from="seq"`` positions 0..L-2 and then the ``[SEQ]`` token), or only
        the last one ``[B, 1, d']`` with ``last_only``.

        A state is ``W_o h`` (+ ``W_t`` of the recent text with ``text_path``), then ``alpha u_t`` appended with
        ``injection.residual``; its dot product with a row of :meth:`item_table` is the score.
        """
        base, sas = self._scoring_parts(seq, sem, last_only, users)
        return self._with_residual(base, sas)

    def _scoring_parts(self, seq: torch.Tensor, sem: torch.Tensor, last_only: bool, users: torch.Tensor | None = None,
                       history: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``W_o h`` (+ text path) and, with ``injection.residual``, SASRec's own states for its score (aligned the
        same way) of :meth:`scoring_states`; ``users`` [B]: the windows' user ids (see ``injection.sasrec_folds``);
        ``history`` [B, L']: the whole histories that the windows ``seq`` end, whose residual state
        ``injection.residual_history`` sets (with ``last_only``)."""
        user = self.injection.user_states(seq, users)
        states = self.sequence_states(seq, sem, user)
        if last_only:
            states = states[:, -1:]
        elif self.predict_from == "seq":
            length = states.shape[1] - 1
            states = torch.cat([states[:, : length - 1], states[:, length:]], 1)
        out = self.w_o(self.drop(states))
        if self.w_t is not None:
            recent = self._recent_text(seq, sem)
            out = out + self.w_t(recent[:, -1:] if last_only else recent)
        if self.score_log_scale is not None:
            out = self._unit(out) * self.score_log_scale.clamp(max=math.log(100.0)).exp()
        if self.injection.residual_scale is None or user is None:
            return out, None
        if history is not None:
            return out, self.injection.residual_last_states(history, seq, user)
        sas = self.injection.residual_states(seq, user, users)
        return out, sas[:, -1:] if last_only else sas

    def _unit(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` scaled to unit length along its last dimension with ``scoring: cosine``, else ``x``."""
        return nn.functional.normalize(x, dim=-1) if self.score_log_scale is not None else x

    def _recent_text(self, seq: torch.Tensor, sem: torch.Tensor) -> torch.Tensor:
        """[B, L, H]: at position t, the mean standardised ``s_i`` of the last ``text_path`` items up to t."""
        valid = (seq > 0).unsqueeze(-1).to(torch.float32)
        x = self.standardise(sem[seq].float()) * valid
        k = self.text_path
        csum, ccount = x.cumsum(1), valid.cumsum(1)
        if seq.shape[1] > k:
            csum = torch.cat([csum[:, :k], csum[:, k:] - csum[:, :-k]], 1)
            ccount = torch.cat([ccount[:, :k], ccount[:, k:] - ccount[:, :-k]], 1)
        return csum / ccount.clamp(min=1)

    # ----------------------------------------------------------------- training
    def on_train_start(self) -> None:
        if self.ema is not None and int(self.ema.updates) == 0:
            self.ema.reset()  # a fresh fit averages from the weights it starts with (after input calibration)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        if self.ema is not None:
            self.ema.restore()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update()

    def on_train_epoch_start(self) -> None:
        resumed_mid_epoch = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed > 0
        if not self._cache_built or (self.steps_since_refresh > 0 and not resumed_mid_epoch):
            self.refresh_cache()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.refresh_every > 0 and self.steps_since_refresh >= self.refresh_every:
            self.refresh_cache()
        self.steps_since_refresh += 1
        seq, tgt = batch["input"], batch["target"]
        sem, fresh_ids, fresh = self.fresh_semantics(torch.cat([seq, tgt], 1))
        table = self.item_table(sem)
        out = self.scoring_states(seq, sem, users=batch.get("user"))
        keep = tgt > 0
        h, t = out[keep], tgt[keep]
        lo = self.losses
        terms: dict[str, torch.Tensor] = {}
        hard = lo.hard_negative and lo.lambda_hard > 0
        scores = full_scores(h, table) if lo.sampled_softmax <= 0 and (lo.next_item or hard) else None
        if lo.next_item:
            seen = seen_items(seq, tgt, keep, table.shape[0] - 1) if lo.mask_seen else None
            terms["next_item"] = next_item_loss(h, table, t, lo.sampled_softmax, scores=scores,
                                                label_smoothing=lo.label_smoothing, exclude=seen)
        if lo.masked_context and lo.lambda_mc > 0:
            ok = ~self.dup_text[fresh_ids]
            sem_ok = self.standardise(fresh[ok])
            terms["masked_context"] = lo.lambda_mc * alignment_loss(self.w_a(sem_ok), self.id_table, fresh_ids[ok])
        if hard:
            terms["hard_negative"] = lo.lambda_hard * hard_negative_loss(h, table, t, self.hard_negs[t], lo.temperature,
                                                                    scores=scores)
        aux = [a for c in self.backbone.adapters if (a := c.aux_loss()) is not None]
        if aux and lo.lambda_balance > 0:  # of the last backbone pass: the sequence level
            terms["balance"] = lo.lambda_balance * torch.stack(aux).mean()
        loss = sum(terms.values())
        for k, v in terms.items():
            self.log(f"train/{k}", v.detach(), batch_size=seq.shape[0])
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=seq.shape[0])
        return loss

    def configure_optimizers(self) -> Any:
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if p.requires_grad:
                plain = p.dim() < 2 or name.endswith(("special_embeddings", "id_table", "item_embeddings"))
                adapter = name.startswith(("backbone.adapters.", "backbone.special_embeddings"))
                groups.setdefault((plain, adapter), []).append(p)
        opt = torch.optim.AdamW(
            [{"params": ps, "weight_decay": 0.0 if plain else self.weight_decay,
              "lr": self.lr_adapters if adapter else self.lr} for (plain, adapter), ps in groups.items()],
            lr=self.lr,
        )
        if self.warmup_steps <= 0:
            return opt
        warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / self.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": warm, "interval": "step"}}

    # ----------------------------------------------------------------- evaluation
    def on_eval_start(self) -> None:
        """Rebuild the item cache and the scoring table ``[e_j (; c_j)]`` once per evaluation pass."""
        self.refresh_cache()
        with torch.no_grad():
            self._eval_table = self.item_table(self.sem_cache.float())

    def prepare_eval_batch(self, batch: EvalBatch) -> EvalBatch:
        base, sas = self._history_parts(batch["history"], self.sem_cache.float(), batch.get("user"))
        out = {**batch, "user_vec": self._with_residual(base, sas)[:, 0]}
        if sas is not None:
            out["user_base"], out["user_sasrec"] = base[:, 0], sas[:, 0]
        return out

    @property
    def _weight_on_validation(self) -> bool:
        return self.injection.residual_scale is not None and self.injection.trained_weight is not None

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        if not self._weight_on_validation:
            return super().validation_step(batch, batch_idx)
        b = self.prepare_eval_batch(batch)
        table = self._eval_table
        assert table is not None
        d = b["user_base"].shape[1]
        for metric, alpha in zip(self.val_by_weight, RESIDUAL_GRID):
            def chunk(lo: int, hi: int, alpha: float = alpha) -> torch.Tensor:
                return b["user_base"] @ table[lo:hi, :d].T + alpha * (b["user_sasrec"] @ table[lo:hi, d:].T)

            metric.update(chunked_target_ranks(chunk, self.num_items, b["target"], b["history"], chunk_size=self.evaluation.chunk_size))

    def on_validation_epoch_end(self) -> None:
        """Logs ``val/*`` of the model and ``val/lm_ndcg@10``: the language-model path's own NDCG@10 (without SASRec's
        score) when the residual weight is chosen on validation, else the model's. The language model trains alone
        in that mode, so early stopping watches ``val/lm_ndcg@10`` (the fused score is flat while SASRec dominates
        it) and model selection watches ``val/ndcg@10``. With ``residual_weight: stacked`` the language model trains on
        top of SASRec's score at weight 1, so ``val/lm_ndcg@10`` is that score's NDCG@10 (weight 1)."""
        if not self._weight_on_validation:
            values = self._log_metric(self.val_metric, "val")
            self.log_reduced("val/lm_ndcg@10", values["val/ndcg@10"])
            return
        ndcg = [float(m.compute()["ndcg@10"]) for m in self.val_by_weight]
        self.log_reduced("val/lm_ndcg@10", ndcg[RESIDUAL_GRID.index(self.injection.trained_weight)])
        best = max(range(len(ndcg)), key=lambda i: (ndcg[i], -i))
        self.injection.residual_scale.fill_(RESIDUAL_GRID[best])
        for i, m in enumerate(self.val_by_weight):
            if i != best:
                m.reset()
        self._log_metric(self.val_by_weight[best], "val")
        self.log_reduced("val/residual_weight", RESIDUAL_GRID[best])

    def on_validation_end(self) -> None:
        """Back to the trained weights once the checkpoint callbacks (which run first) have saved; Lightning then
        restores the modules' training flags directly, without :meth:`train`."""
        if self.ema is not None:
            self.ema.restore()

    def user_vectors(self, history: torch.Tensor, sem: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """The scoring state [B, d'] after each whole ``history`` [B, L'] (left-padded) of ``users`` [B] (ids, optional)."""
        return self._with_residual(*self._history_parts(history, sem, users))[:, 0]

    def _history_parts(self, history: torch.Tensor, sem: torch.Tensor,
                       users: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`_scoring_parts` of the last position after each whole ``history`` [B, L']: the language model reads
        its last ``max_len`` items, SASRec's residual state what ``injection.residual_history`` says."""
        return self._scoring_parts(history[:, -self.max_len :], sem, last_only=True, users=users, history=history)

    def _with_residual(self, states: torch.Tensor, sas: torch.Tensor | None) -> torch.Tensor:
        """``[W_o h ; alpha u_t]`` with ``injection.residual`` (matching ``[e_j ; c_j]``), else ``W_o h``;
        ``sas``: SASRec's states from ``injection.residual_states``."""
        if sas is None:
            return states
        return torch.cat([states, self.injection.residual_users(sas).to(states.dtype)], -1)

    def score_chunk(self, batch: EvalBatch, lo: int, hi: int) -> torch.Tensor:
        assert self._eval_table is not None
        return batch["user_vec"] @ self._eval_table[lo:hi].T

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["darec_backbone"] = self.backbone.identity()
        if self._cache_built and not self.item_level_frozen:  # a frozen item level recomputes the same cache
            checkpoint["darec_item_cache"] = {"sem_cache": self.sem_cache.cpu(), "sem_mean": self.sem_mean.cpu(),
                                              "sem_std": self.sem_std.cpu(), "steps_since_refresh": self.steps_since_refresh}
        if self._ready:
            checkpoint["darec_items"] = {"raw_ids": self.item_raw_ids, "sentences": self.item_sentences, "text_hash": self.text_hash}
        checkpoint["darec_assignment"] = [asdict(a) if hasattr(a, "__dataclass_fields__") else a for a in self.assignment]
        trainable = {p.data_ptr() for p in self.parameters() if p.requires_grad}
        checkpoint["state_dict"] = {
            k: v
            for k, v in checkpoint["state_dict"].items()
            if not k.startswith("backbone.") or v.data_ptr() in trainable
        }
        if self.ema is not None:  # saved in eval mode (after validation): keep the trained values, not their average
            checkpoint["state_dict"].update(self.ema.trained_state())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.ema is not None:
            self.ema.discard()  # the checkpoint's trained values and averages replace what the parameters hold
            kept = {f"ema.{self.ema.key(name)}" for name in self.ema.names}
            for key in [k for k in checkpoint["state_dict"] if k.startswith("ema.shadow__") and k not in kept]:
                del checkpoint["state_dict"][key]  # averages of parameters frozen since as never trained (constant)
        cache = checkpoint.get("darec_item_cache")
        if cache is not None:  # resume with the item rows training saw, refreshed on the same schedule
            for name in ("sem_cache", "sem_mean", "sem_std"):
                getattr(self, name).copy_(cache[name])
            self.steps_since_refresh, self._cache_built = int(cache["steps_since_refresh"]), True
        ident = checkpoint.get("darec_backbone")
        if ident and ident.get("weights_sha256") != self.backbone.identity()["weights_sha256"]:
            raise ConfigError(
                f"checkpoint was trained on backbone {ident.get('name')!r} with different weights "
                f"(sha256 {ident.get('weights_sha256', '')[:12]}…); load the same backbone"
            )
        items = checkpoint.get("darec_items")
        if items and not self._ready:
            self.attach_data(items["sentences"], items["text_hash"], self.data_fingerprint, [], items["raw_ids"])
        own = self.state_dict()
        for k, v in own.items():
            checkpoint["state_dict"].setdefault(k, v)


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode for the block; each one's own mode is restored afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    for m, _ in modes:  # the flags only: DARec.train(False) would also swap in averaged weights
        m.training = False
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _recent_windows(train_seqs: list, max_len: int, users: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``max_len`` training items of up to ``users`` users (spread over the user ids), left-padded, and
    those users' ids (``train_seqs[i]`` is user ``i + 1``'s)."""
    ids = [u for u, s in enumerate(train_seqs, start=1) if len(s)]
    step = max(1, len(ids) // users)
    chosen = ids[::step][:users]
    out = torch.zeros(len(chosen), max_len, dtype=torch.long)
    for row, u in enumerate(chosen):
        tail = torch.tensor(list(train_seqs[u - 1][-max_len:]), dtype=torch.long)
        out[row, max_len - len(tail) :] = tail
    return out, torch.tensor(chosen, dtype=torch.long)
