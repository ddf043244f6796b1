"""Collaborative knowledge injection: CF vectors from any CF sources (SASRec, LightGCN, your own) enter the input.

The sources are exports of CF sources (:mod:`darec.modules.cf`). Item level: each history position carries its
item's CF vector ``c_i`` (every source's item vectors, concatenated; zero with ``has_cf = False`` for items without
training interactions), projected by ``W_c`` and added to ``W_s s_i``.

User level (causal): at position ``t`` the user vector uses only items up to ``t``: the running mean of the item
vectors of items ``<= t`` for sources without their own user states (LightGCN, ...), and the hidden state at ``t``
of the one source that has a causal user encoder (SASRec).

Attention level (mode ``attention``): on top of the input terms, the same causal user vector gives
per-layer key/value prefixes (:mod:`darec.modules.prefix`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from darec.errors import ConfigError
from darec.modules.cf import load_cf_embeddings, require_exports
from darec.modules.masking import item_causal_mask
from darec.modules.prefix import layer_prefixes, prefix_causal_mask, wrap_layers
from darec.modules.sasrec import USER_STATES, SasrecUserEncoder


RESIDUAL_WEIGHTS = ("learned", "validation", "stacked")
FOLDS_FOR = ("input", "residual")
RESIDUAL_HISTORIES = ("own", "window")


@dataclass
class InjectionConfig:
    """Which collaborative knowledge enters DARec, and how.

    ``residual`` adds SASRec's own score ``alpha <u_t, c_j>`` to DARec's. With ``residual_weight: learned``
    ``alpha`` trains with everything else, so the language model learns a correction to SASRec; but SASRec's
    scores on its own training data are more confident than on unseen targets, so the correction learnt there is
    too timid. With ``residual_weight: validation`` the language model trains alone (``alpha = 0``) and after
    every validation pass ``alpha`` is set to the value of a fixed grid that gives the best validation NDCG@10 (a
    late fusion of two models whose weight is chosen on validation only); it is saved with the model. With
    ``residual_weight: stacked`` the language model trains on top of SASRec's score at weight 1 (a boosting stage:
    it learns what that score misses), and ``alpha`` is then chosen on validation as with ``validation``; with
    ``sasrec_folds`` and ``sasrec_folds_for: residual`` the score it trains on top of is each user's out-of-fold
    SASRec score, as sharp on training targets as SASRec's is on held-out ones.

    ``sasrec_folds`` cross-fits SASRec's user states (``benchmarks/cross_fit.py`` trains them): ``K`` exports, the
    one of fold ``k`` trained without the users whose id is ``k`` modulo ``K``, its item table frozen at
    ``sasrec``'s. A user's causal SASRec state ``u_t`` in the language model's input then comes from the encoder that
    never saw that user, in training as in evaluation, so the language model does not learn to trust states that are
    sharper on its training targets than on held-out ones (SASRec ranks a training target at about 1.6x the NDCG@10
    of a held-out one, ``benchmarks/sasrec_fit_gap.json``). On ml-100k with 2 folds it does not pay: the out-of-fold
    states are weaker and the language-model path loses more than it gains (``benchmarks/cross_fit.json``), so it
    is off by default. The residual score stays ``sasrec``'s own. Histories
    without a user id (``darec recommend``) take the mean of the fold encoders' states. With
    ``sasrec_folds_eval: full`` only training reads the fold encoders, and evaluation the full SASRec's states (the
    usual stacking recipe: the second stage learns from out-of-fold outputs and predicts from the model fitted on all
    the data).

    ``residual_history`` sets what SASRec's residual state reads when a whole history is scored (evaluation,
    ``darec recommend``): ``own`` its own last ``max_len`` items (that of the export), so the residual is exactly the
    score SASRec ranks with, also when SASRec was trained on longer histories than DARec's window; ``window`` the
    language model's window of ``max_len`` items (the old behaviour). Training windows are scored at every position
    and always read the window. On ml-100k with a SASRec of 100 items and DARec's window of 50, ``own`` gives a
    higher validation NDCG@10 (``benchmarks/darec_ml100k_window.json``).
    """

    mode: Literal["none", "input", "attention"] = "none"  # none | input | attention (input + per-layer prefixes)
    sources: list[str] = field(default_factory=list)  # CF exports (`darec export-embeddings` of any CF source)
    sasrec: str | None = None  # shorthand: a SASRec export, added to sources
    lightgcn: str | None = None  # shorthand: a LightGCN export, added to sources
    user_vector: bool = True  # add the causal user vector at each position (the residual reads SASRec's state either way)
    item_vectors: bool = True  # c_j in the item table e_j and c_i in the input; false: there items are their text alone
    finetune: bool = False  # train the CF tables jointly (frozen by default)
    residual: bool = False  # add SASRec's own score alpha <u_t, c_j> (frozen) to DARec's
    residual_weight: str = "validation"  # learned: alpha trains with the LM, which learns a correction | validation: see below
    sasrec_folds: list[str] = field(default_factory=list)  # cross-fitted SASRec exports: see below
    sasrec_folds_eval: str = "folds"  # folds: evaluation reads the out-of-fold states too | full: the full SASRec's
    sasrec_folds_for: str = "input"  # input: the fold states are the LM's input states | residual: only training's residual reads them
    residual_history: str = "own"  # own: the residual's state after a whole history reads SASRec's own last max_len items | window: DARec's window


class CollaborativeInjection(nn.Module):
    """Holds the CF tables and projects them into the backbone's hidden space."""

    def __init__(
        self,
        cfg: InjectionConfig,
        num_items: int,
        hidden: int,
        fingerprint: str = "",
        layers: nn.ModuleList | None = None,
    ):
        """``layers``: the backbone's layer list (adapters already applied), wrapped in place for mode ``attention``."""
        super().__init__()
        self.cfg = cfg
        if cfg.mode not in ("none", "input", "attention"):
            raise ConfigError(f"injection.mode must be none | input | attention, got {cfg.mode!r}")
        paths = [p for p in (cfg.lightgcn, *cfg.sources, cfg.sasrec) if p]
        if cfg.mode != "none" and not paths:
            raise ConfigError(f"injection.mode {cfg.mode!r} needs CF exports: injection.sources (or the shorthands "
                              "injection.sasrec / injection.lightgcn)")
        if cfg.mode == "attention" and not cfg.user_vector:
            raise ConfigError("injection.mode 'attention' builds its prefixes from the causal user vector; set injection.user_vector: true")
        if cfg.mode == "attention" and layers is None:
            raise ConfigError("injection.mode 'attention' needs the backbone's layers to wrap")
        tables, flags = [], []
        self.sasrec_encoder = None
        self.mean_dim = 0  # columns of the running-mean sources (they lead the CF table)
        if cfg.mode != "none":
            require_exports(paths)
            sources = [(path, load_cf_embeddings(path, fingerprint or None)) for path in paths]
            for path, emb in sources:
                if emb.item_emb.shape[0] != num_items + 1:
                    raise ConfigError(f"{path}: item table has {emb.item_emb.shape[0] - 1} items, the data has {num_items}")
                if emb.causal_user_states not in (None, USER_STATES):
                    raise ConfigError(f"{path}: unknown causal user states {emb.causal_user_states!r}")
            with_encoder = [path for path, emb in sources if emb.causal_user_states is not None]
            if len(with_encoder) > 1:
                raise ConfigError(f"at most one injected export may bring causal user states; got {with_encoder}")
            # running-mean sources first (in order), the source with its own user encoder last (its part of c_j and u_t
            # comes last); the sort is stable
            for _, emb in sorted(sources, key=lambda source: source[1].causal_user_states is not None):
                tables.append(emb.item_emb.float())
                flags.append(emb.has_cf)
                if emb.causal_user_states is None:
                    self.mean_dim += emb.item_emb.shape[1]
                elif cfg.user_vector or cfg.residual:
                    self.sasrec_encoder = SasrecUserEncoder.from_cf(emb)
                    if cfg.finetune:
                        self.sasrec_encoder.unfreeze()
        self.fold_encoders = self._load_folds(cfg, fingerprint, tables[-1] if self.sasrec_encoder is not None else None)
        cf = torch.cat(tables, 1) if tables else torch.zeros(num_items + 1, 0)
        has = torch.stack(flags, 0).all(0) if flags else torch.zeros(num_items + 1, dtype=torch.bool)
        self.item_dim = cf.shape[1]
        self.item_feature_dim = self.item_dim if cfg.item_vectors else 0  # c_j's width in e_j and in the input
        self.cf_table = nn.Parameter(cf, requires_grad=cfg.finetune)
        self.register_buffer("has_cf", has)
        self.w_c = nn.Linear(self.item_dim, hidden) if self.item_feature_dim else None
        # without user_vector the SASRec encoder is loaded for the residual score only, never as an input
        user_dim = (self.mean_dim + (self._sasrec_dim() if self.sasrec_encoder is not None else 0)) if cfg.user_vector else 0
        self.w_u = nn.Linear(user_dim, hidden) if user_dim else None
        self.w_prefix: nn.ModuleList | None = None
        self.__dict__["_prefix_layers"] = []
        if cfg.mode == "attention":
            self.w_prefix = nn.ModuleList(nn.Linear(user_dim, hidden) for _ in layers)
            for lin in self.w_prefix:  # small prefixes: the frozen attention starts close to its own behaviour
                nn.init.normal_(lin.weight, std=0.1 / user_dim**0.5)
                nn.init.zeros_(lin.bias)
            self.__dict__["_prefix_layers"] = wrap_layers(layers)
        if cfg.residual_history not in RESIDUAL_HISTORIES:
            raise ConfigError(f"injection.residual_history must be one of {RESIDUAL_HISTORIES}, got {cfg.residual_history!r}")
        if cfg.residual_weight not in RESIDUAL_WEIGHTS:
            raise ConfigError(f"injection.residual_weight must be one of {RESIDUAL_WEIGHTS}, got {cfg.residual_weight!r}")
        if cfg.sasrec_folds_for not in FOLDS_FOR:
            raise ConfigError(f"injection.sasrec_folds_for must be one of {FOLDS_FOR}, got {cfg.sasrec_folds_for!r}")
        if cfg.sasrec_folds and cfg.sasrec_folds_for == "residual" and not (cfg.residual and cfg.residual_weight != "validation"):
            raise ConfigError("injection.sasrec_folds_for: residual feeds the fold states to the residual in training; it "
                              "needs injection.residual: true with residual_weight stacked or learned (with validation the "
                              "language model trains without the residual)")
        if cfg.residual:
            if cfg.mode == "none" or self.sasrec_encoder is None:
                raise ConfigError("injection.residual needs a SASRec export (injection.sasrec or in injection.sources) and "
                                  "injection.mode input or attention")
            if cfg.residual_weight == "learned":
                self.residual_scale = nn.Parameter(torch.ones(()))
            else:
                self.register_buffer("residual_scale", torch.zeros(()))
        else:
            self.residual_scale = None

    def _load_folds(self, cfg: InjectionConfig, fingerprint: str, items: torch.Tensor | None) -> nn.ModuleList | None:
        """The cross-fitted encoders of ``cfg.sasrec_folds``, in fold order, checked against SASRec's item table."""
        if not cfg.sasrec_folds:
            return None
        if items is None or cfg.mode == "none":
            raise ConfigError("injection.sasrec_folds cross-fits SASRec's user states: it needs injection.sasrec (the "
                              "full SASRec export) and injection.user_vector: true")
        if cfg.finetune:
            raise ConfigError("injection.sasrec_folds keeps SASRec frozen; set injection.finetune: false")
        if cfg.sasrec_folds_eval not in ("folds", "full"):
            raise ConfigError(f"injection.sasrec_folds_eval must be folds | full, got {cfg.sasrec_folds_eval!r}")
        k = len(cfg.sasrec_folds)
        by_fold: dict[int, SasrecUserEncoder] = {}
        for path in cfg.sasrec_folds:
            emb = load_cf_embeddings(path, fingerprint or None)
            fold = emb.meta.get("cross_fit") or {}
            if fold.get("folds") != k or fold.get("fold") not in range(k) or fold["fold"] in by_fold:
                raise ConfigError(f"{path}: not fold 0..{k - 1} of a {k}-fold cross-fit (its sidecar says "
                                  f"{emb.meta.get('cross_fit')!r}); injection.sasrec_folds needs one export per fold")
            if not torch.equal(emb.item_emb.float(), items):
                raise ConfigError(f"{path}: its item table is not injection.sasrec's; a fold encoder must be trained with "
                                  "the item table frozen at the full SASRec's (benchmarks/cross_fit.py)")
            by_fold[fold["fold"]] = SasrecUserEncoder.from_cf(emb)
        return nn.ModuleList(by_fold[i] for i in range(k))

    @property
    def _reads_folds(self) -> bool:
        """Whether SASRec's input states come from the fold encoders now (else from the full encoder)."""
        return (self.fold_encoders is not None and self.cfg.sasrec_folds_for == "input"
                and (self.training or self.cfg.sasrec_folds_eval == "folds"))

    def _known(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq`` with the ids beyond the CF table (items SASRec never saw) set to padding."""
        return seq.masked_fill(seq >= self.cf_table.shape[0], 0)

    def _sasrec_states(self, seq: torch.Tensor, users: torch.Tensor | None) -> torch.Tensor:
        """SASRec's causal states for ``seq`` (ids beyond its table zeroed): the full encoder's, or with
        ``sasrec_folds`` each user's out-of-fold encoder's (the mean of all of them for ``users=None``)."""
        known = self._known(seq)
        if not self._reads_folds:
            return self.sasrec_encoder.causal_user_states(known)
        return self._fold_states(known, users)

    def _fold_states(self, known: torch.Tensor, users: torch.Tensor | None) -> torch.Tensor:
        """Each user's out-of-fold SASRec states for ``known`` (see :meth:`_sasrec_states`)."""
        if users is None:
            return torch.stack([enc.causal_user_states(known) for enc in self.fold_encoders]).mean(0)
        fold = users.to(known.device) % len(self.fold_encoders)
        out = None
        for k, enc in enumerate(self.fold_encoders):
            rows = (fold == k).nonzero().squeeze(1)
            if len(rows):
                part = enc.causal_user_states(known[rows])
                out = part.new_zeros(known.shape + part.shape[-1:]) if out is None else out
                out[rows] = part
        return out

    def _sasrec_dim(self) -> int:
        return int(self.sasrec_encoder.cfg.hidden_size)

    @property
    def item_vectors(self) -> torch.Tensor:
        """``c_j`` for every item id, zero rows where ``has_cf`` is False."""
        return self.cf_table * self.has_cf.unsqueeze(1).to(self.cf_table.dtype)

    def vectors_for(self, seq: torch.Tensor) -> torch.Tensor:
        """``c`` at every position of ``seq``; ids beyond the CF table (items added later) get zeros."""
        table = self.item_vectors
        extra = int(seq.max()) + 1 - table.shape[0] if seq.numel() else 0
        if extra > 0:
            table = torch.cat([table, table.new_zeros(extra, table.shape[1])], 0)
        return table[seq]

    def init_id_table(self, num_items: int, dim: int) -> torch.Tensor:
        """Initial ``E_id``: the item's CF vector where it has one (resized to ``dim``), else small noise."""
        table = torch.randn(num_items + 1, dim) * 0.02
        if self.item_dim:
            cf = self.item_vectors.detach()[:, :dim]
            has = self.has_cf.clone()
            table[has, : cf.shape[1]] = cf[has]
        table[0] = 0
        return table

    def user_states(self, seq: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor | None:
        """Causal user vectors [B, L, d_u] for windows ``seq`` [B, L] (left-padded) of ``users`` [B] (their ids;
        only cross-fitted SASRec states read them); None if disabled. Without ``user_vector`` they are SASRec's states
        alone, kept for the residual score and never fed to the input."""
        parts = []
        if self.cfg.user_vector and self.mean_dim:
            lg = self.vectors_for(seq)[..., : self.mean_dim]
            valid = (seq > 0).unsqueeze(-1).to(lg.dtype)
            parts.append(lg.cumsum(1) / valid.cumsum(1).clamp(min=1))
        if self.sasrec_encoder is not None:
            parts.append(self._sasrec_states(seq, users).to(self.cf_table.dtype))
        return torch.cat(parts, -1) if parts else None

    def residual_items(self, rows: int) -> torch.Tensor:
        """SASRec's item vectors for ``rows`` item ids (zero beyond the CF table), appended to ``e_j`` when ``residual``."""
        sas = self.item_vectors[:, self.mean_dim :]
        if rows > sas.shape[0]:
            sas = torch.cat([sas, sas.new_zeros(rows - sas.shape[0], sas.shape[1])], 0)
        return sas[:rows]

    def sasrec_part(self, user: torch.Tensor) -> torch.Tensor:
        """SASRec's state ``u_t`` [B, L, d_sas] from :meth:`user_states` ``user`` (its SASRec part comes last)."""
        return user[..., -self._sasrec_dim() :]

    def residual_states(self, seq: torch.Tensor, user: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """SASRec's own ``u_t`` [B, L, d_sas] for its residual score: the SASRec part of :meth:`user_states` ``user``,
        or with ``sasrec_folds`` the full encoder's states (the residual is SASRec's score, not a cross-fitted one),
        except in training with ``sasrec_folds_for: residual``: then the out-of-fold states of ``users`` [B]."""
        if self.fold_encoders is not None and self.cfg.sasrec_folds_for == "residual" and self.training:
            return self._fold_states(self._known(seq), users).to(user.dtype)
        if not self._reads_folds:  # the input states are already the full encoder's
            return self.sasrec_part(user)
        return self.sasrec_encoder.causal_user_states(self._known(seq)).to(user.dtype)

    def residual_last_states(self, history: torch.Tensor, window: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        """SASRec's state [B, 1, d_sas] for the residual score after each whole ``history`` [B, L'] (left-padded):
        with ``residual_history: own`` the full encoder's after its own last ``max_len`` items, as SASRec ranks;
        else the last of :meth:`residual_states` over DARec's ``window`` (the history's last items) and its ``user``
        states from :meth:`user_states`. Only the state that is read is computed."""
        if self.cfg.residual_history == "window":
            return self.residual_states(window, user)[:, -1:]
        return self.sasrec_encoder.last_state(self._known(history))[:, None].to(user.dtype)

    def residual_users(self, sas: torch.Tensor) -> torch.Tensor:
        """``alpha * u_t`` [B, L, d_sas] from :meth:`residual_states` ``sas``, appended to the scoring state when
        ``residual``.

        With the item side :meth:`residual_items`, the score becomes ``<W_o h, e_j> + alpha <u_t, c_j>``:
        the language model learns a correction on top of SASRec's own score, which stays frozen.
        """
        if self.training and self.trained_weight == 0.0:
            return torch.zeros_like(sas)  # the language model trains alone
        if self.training and self.trained_weight is not None:
            return self.trained_weight * sas
        return self.residual_scale * sas

    @property
    def trained_weight(self) -> float | None:
        """The fixed weight of SASRec's score while the language model trains, whose ``alpha`` is then chosen on
        validation: 0 with ``residual_weight: validation`` (it trains alone), 1 with ``stacked``; None with ``learned``
        (``alpha`` trains too)."""
        return {"validation": 0.0, "stacked": 1.0}.get(self.cfg.residual_weight)

    def run_with_prefixes(
        self,
        backbone: nn.Module,
        seq: torch.Tensor,
        x: torch.Tensor,
        valid: torch.Tensor,
        pos: torch.Tensor,
        user: torch.Tensor | None,
    ) -> torch.Tensor:
        """The sequence pass of ``backbone`` on ``x`` [B, Q, H] (items of ``seq`` [B, L], then maybe ``[SEQ]``).

        Mode ``attention``: ``L`` prefix slots go first, carrying each layer's ``P_l u_t`` (``user`` from
        :meth:`user_states`); returns the states of the ``Q`` real positions. Other modes: the plain item-causal pass.
        """
        if self.w_prefix is None:
            return backbone(x, item_causal_mask(valid, dtype=backbone.dtype), pos)
        length = seq.shape[1]
        prefixes = [lin(user) for lin in self.w_prefix]
        mask = prefix_causal_mask(seq > 0, valid, backbone.dtype)
        x = torch.cat([x.new_zeros(x.shape[0], length, x.shape[2]), x], 1)
        pos = torch.cat([pos[:, :length], pos], 1)
        with layer_prefixes(self._prefix_layers, prefixes):
            return backbone(x, mask, pos)[:, length:]

    def input_term(self, seq: torch.Tensor, user: torch.Tensor | None) -> torch.Tensor | float:
        """``W_c c_{i_t} + W_u u_t`` at each position (0 when injection is off; without ``W_c c_{i_t}`` when
        ``item_vectors`` is off); ``user`` from :meth:`user_states`."""
        if self.cfg.mode == "none":
            return 0.0
        parts = [self.w_c(self.vectors_for(seq))] if self.w_c is not None else []
        if self.w_u is not None and user is not None:
            parts.append(self.w_u(user))
        if not parts:
            return 0.0
        term = sum(parts[1:], parts[0])
        return term * (seq > 0).unsqueeze(-1).to(term.dtype)
