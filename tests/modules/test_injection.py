"""Collaborative injection in DARec: input and attention (per-layer prefix) modes, causality, prefix masks."""

from __future__ import annotations

import pytest
import torch

from darec.data.dataset import PreparedData
from darec.data.datamodules.interaction import normalized_adjacency
from darec.data.datamodules.sequence import SequenceDataModule
from darec.errors import ConfigError
from darec.modules.backbone import BackboneConfig
from darec.modules.cf import export_module
from darec.modules.darec import DARec
from darec.modules.lightgcn import LightGCN
from darec.modules.prefix import PrefixLayer, prefix_causal_mask
from darec.modules.sasrec import SASRec, SasrecUserEncoder

FROZEN = ("backbone.model.", "backbone.layers.")


@pytest.fixture(scope="module")
def cf_exports(small_synth_dir, tmp_path_factory) -> dict[str, str]:
    data = PreparedData(small_synth_dir)
    out = tmp_path_factory.mktemp("cf")
    torch.manual_seed(0)
    sasrec = SASRec(data.num_items, data.num_users, data.fingerprint, hidden_size=16, inner_size=32, max_len=12).eval()
    lgcn = LightGCN(data.num_items, data.num_users, data.fingerprint, embedding_size=8)
    lgcn.set_graph(normalized_adjacency(data.train, data.num_users, data.num_items))
    return {"sasrec": str(export_module(sasrec, data, out / "sasrec.safetensors")),
            "lightgcn": str(export_module(lgcn, data, out / "lgcn.safetensors"))}


def _model(data_dir, cf, tmp_path, name="tiny-bert", mode="attention", **kw) -> DARec:
    d = PreparedData(data_dir)
    m = DARec(num_items=d.num_items, num_users=d.num_users, data_fingerprint=d.fingerprint,
              backbone=BackboneConfig(name=name), max_len=12, cache_dir=str(tmp_path),
              injection={"mode": "input", "residual": True, "residual_weight": "learned", **cf} if mode == "residual"
              else {"mode": mode, **cf}, **kw)
    m.attach_data(d.sentences, d.text_hash, d.fingerprint, d.train_sequences())
    m.eval()
    m.refresh_cache()
    return m


def test_prefix_mask_is_causal_over_slots_and_never_empty():
    slot_valid = torch.tensor([[False, True, True]])
    query_valid = torch.tensor([[False, True, True, True]])  # 3 items then [SEQ]
    allowed = prefix_causal_mask(slot_valid, query_valid, torch.float32)[0, 0] == 0
    assert allowed.any(-1).all()
    for s in range(4):
        for t in range(3):
            assert bool(allowed[3 + s, t]) == (bool(query_valid[0, s]) and bool(slot_valid[0, t]) and t <= s)
    assert torch.equal(allowed[:3], torch.eye(7, dtype=torch.bool)[:3])  # slots attend only themselves
    assert allowed[6, 3:].tolist() == [False, True, True, True]  # [SEQ] sees the valid items


@pytest.mark.parametrize("mode", ["input", "attention", "residual"])
@pytest.mark.parametrize("name,predict_from", [("tiny-bert", "last_item"), ("tiny-llama", "seq"), ("tiny-gpt2", "last_item")])
def test_position_t_does_not_see_later_items_with_injection(small_synth_dir, cf_exports, tmp_path, mode, name, predict_from):
    m = _model(small_synth_dir, cf_exports, tmp_path, name=name, mode=mode, predict_from=predict_from)
    seq = torch.tensor([[0, 0, 3, 7, 9, 11, 2, 5]])
    changed = seq.clone()
    changed[0, 6:] = torch.tensor([13, 17])
    with torch.no_grad():
        a, b = m.sequence_states(seq, m.sem_cache), m.sequence_states(changed, m.sem_cache)
        if mode == "residual":  # the scoring states, residual included
            a, b = m.scoring_states(seq, m.sem_cache), m.scoring_states(changed, m.sem_cache)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a[0, 2:6], b[0, 2:6], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[0, 6:], b[0, 6:], atol=1e-5)


def test_attention_prefixes_change_the_sequence_pass_but_not_item_encoding(small_synth_dir, cf_exports, tmp_path):
    torch.manual_seed(1)
    inp = _model(small_synth_dir, cf_exports, tmp_path, mode="input")
    att = _model(small_synth_dir, cf_exports, tmp_path, mode="attention")
    shared = {k: v for k, v in inp.state_dict().items() if not k.startswith(FROZEN)}  # frozen: same weights
    missing, unexpected = att.load_state_dict(shared, strict=False)
    assert not unexpected and {k for k in missing if not k.startswith(FROZEN)} == {
        f"injection.w_prefix.{i}.{w}" for i in range(att.backbone.num_layers) for w in ("weight", "bias")}
    assert all(isinstance(layer, PrefixLayer) for layer in att.backbone.layers)
    ids = torch.arange(1, 8)
    with torch.no_grad():
        torch.testing.assert_close(att.encoder.encode(ids), inp.encoder.encode(ids), atol=1e-6, rtol=1e-6)
        seq = torch.tensor([[0, 3, 7, 9, 11]])
        a, b = att.sequence_states(seq, att.sem_cache), inp.sequence_states(seq, inp.sem_cache)
        assert not torch.allclose(a[0, 1:], b[0, 1:], atol=1e-4)


def test_attention_mode_trains_its_prefix_projections(small_synth_dir, cf_exports, tmp_path):
    m = _model(small_synth_dir, cf_exports, tmp_path, mode="attention")
    m.train()
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert {f"injection.w_prefix.{i}.weight" for i in range(m.backbone.num_layers)} <= trainable
    dm = SequenceDataModule(str(small_synth_dir), batch_size=8, max_len=12, num_negatives=0)
    m.log = lambda *a, **k: None
    loss = m.training_step(next(iter(dm.train_dataloader())), 0)
    loss.backward()
    grads = [lin.weight.grad for lin in m.injection.w_prefix]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert m.injection.cf_table.grad is None  # CF tables frozen by default


def test_attention_mode_needs_a_user_vector(small_synth_dir, cf_exports, tmp_path):
    with pytest.raises(ConfigError, match="user_vector"):
        DARec(num_items=PreparedData(small_synth_dir).num_items, backbone=BackboneConfig(name="tiny-bert"),
              injection={"mode": "attention", "user_vector": False, **cf_exports})
    with pytest.raises(ConfigError, match="needs CF exports"):
        DARec(num_items=5, backbone=BackboneConfig(name="tiny-bert"), injection={"mode": "attention"})


SEQ = torch.tensor([[0, 0, 3, 7, 9, 11], [4, 8, 15, 16, 23, 2]])


def _sasrec_scores(data_dir, export: str, seq: torch.Tensor) -> torch.Tensor:
    """SASRec's own scores ``<u_t, c_j>`` after each window of ``seq``, read from its export (padding row zeroed)."""
    from darec.modules.cf import load_cf_embeddings

    sas = load_cf_embeddings(export, PreparedData(data_dir).fingerprint)
    with torch.no_grad():
        scores = SasrecUserEncoder.from_cf(sas).causal_user_states(seq)[:, -1] @ sas.item_emb.T
    scores[:, 0] = 0
    return scores


def test_residual_adds_sasrecs_own_score(small_synth_dir, cf_exports, tmp_path):
    plain = _model(small_synth_dir, cf_exports, tmp_path, mode="input")
    m = _model(small_synth_dir, cf_exports, tmp_path, mode="residual")
    assert plain.injection.residual_scale is None and m.injection.residual_scale.requires_grad
    m.load_state_dict(plain.state_dict(), strict=False)
    m.injection.residual_scale.data.fill_(0.5)
    with torch.no_grad():
        scores = m.user_vectors(SEQ, m.sem_cache) @ m.item_table(m.sem_cache).T
        base = plain.user_vectors(SEQ, plain.sem_cache) @ plain.item_table(plain.sem_cache).T
    sasrec = _sasrec_scores(small_synth_dir, cf_exports["sasrec"], SEQ)
    torch.testing.assert_close(scores, base + 0.5 * sasrec, atol=1e-5, rtol=1e-4)
    assert not m.injection.cf_table.requires_grad, "SASRec's item vectors stay frozen"


@pytest.mark.parametrize("history_mode", ["own", "window"])
def test_residual_reads_sasrecs_own_history_length(small_synth_dir, cf_exports, tmp_path, history_mode):
    """SASRec (12 items) residual of a DARec with a 4-item window: after a 10-item history, ``own`` scores with
    SASRec's state after all 10 items, as SASRec itself ranks; ``window`` with its state after the last 4. The
    language-model part reads the last 4 either way."""
    d = PreparedData(small_synth_dir)
    m = DARec(num_items=d.num_items, num_users=d.num_users, data_fingerprint=d.fingerprint,
              backbone=BackboneConfig(name="tiny-bert"), max_len=4, cache_dir=str(tmp_path),
              injection={"mode": "input", "residual": True, "residual_weight": "learned",
                         "residual_history": history_mode, **cf_exports})
    m.attach_data(d.sentences, d.text_hash, d.fingerprint, d.train_sequences())
    m.eval()
    m.refresh_cache()
    m.injection.residual_scale.data.fill_(0.5)
    history = torch.tensor([[0, 0, 3, 7, 9, 11, 2, 5, 8, 13, 4, 6]])
    with torch.no_grad():
        scores = m.user_vectors(history, m.sem_cache) @ m.item_table(m.sem_cache).T
        lm, _ = m._scoring_parts(history[:, -4:], m.sem_cache, last_only=True)
        lm_scores = lm[:, 0] @ m.item_table(m.sem_cache)[:, : lm.shape[-1]].T
    read = history if history_mode == "own" else history[:, -4:]
    sasrec = _sasrec_scores(small_synth_dir, cf_exports["sasrec"], read)
    torch.testing.assert_close(scores, lm_scores + 0.5 * sasrec, atol=1e-5, rtol=1e-4)
    other = _sasrec_scores(small_synth_dir, cf_exports["sasrec"], history[:, -4:] if history_mode == "own" else history)
    assert not torch.allclose(sasrec, other, atol=1e-3), "the two readings differ on this history"
    with pytest.raises(ConfigError, match="residual_history"):
        DARec(num_items=d.num_items, backbone=BackboneConfig(name="tiny-bert"),
              injection={"mode": "input", "residual": True, "residual_history": "all", **cf_exports})


def test_without_user_vector_the_residual_keeps_sasrecs_score_but_the_input_never_reads_its_state(
        small_synth_dir, cf_exports, tmp_path):
    m = _model(small_synth_dir, {**cf_exports, "user_vector": False}, tmp_path, mode="residual")
    assert m.injection.w_u is None, "no user-CF input term"
    m.injection.residual_scale.data.fill_(0.5)
    with torch.no_grad():
        scores = m.user_vectors(SEQ, m.sem_cache) @ m.item_table(m.sem_cache).T
        lm, _ = m._scoring_parts(SEQ, m.sem_cache, last_only=True)
        lm_scores = lm[:, 0] @ m.item_table(m.sem_cache)[:, : lm.shape[-1]].T
        sasrec = _sasrec_scores(small_synth_dir, cf_exports["sasrec"], SEQ)
        # the language model's input does not depend on SASRec's state: another SASRec encoder leaves it unchanged
        for p in m.injection.sasrec_encoder.parameters():
            p.add_(torch.randn_like(p))
        lm_other, _ = m._scoring_parts(SEQ, m.sem_cache, last_only=True)
    torch.testing.assert_close(scores, lm_scores + 0.5 * sasrec, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lm_other, lm)


def test_without_item_vectors_items_are_their_text_alone_while_the_user_state_and_residual_stay(
        small_synth_dir, cf_exports, tmp_path):
    m = _model(small_synth_dir, {**cf_exports, "item_vectors": False}, tmp_path, mode="residual")
    inj = m.injection
    assert inj.w_c is None and inj.w_u is not None and m.w_p.in_features == m.backbone.hidden_size
    m.injection.residual_scale.data.fill_(0.5)
    with torch.no_grad():
        table = m.item_table(m.sem_cache)
        d = m.w_o.out_features
        torch.testing.assert_close(table[1:, :d], m.w_p(m.standardise(m.sem_cache))[1:])
        user = inj.user_states(SEQ)
        term = inj.input_term(SEQ, user)
        torch.testing.assert_close(term, inj.w_u(user) * (SEQ > 0).unsqueeze(-1).float())
        scores = m.user_vectors(SEQ, m.sem_cache) @ table.T
        lm, _ = m._scoring_parts(SEQ, m.sem_cache, last_only=True)
        sasrec = _sasrec_scores(small_synth_dir, cf_exports["sasrec"], SEQ)
        # the CF item vectors reach neither e_j nor the input's item term: other vectors leave both as they were
        # (they still feed LightGCN's running-mean user vector and the residual's item side)
        kept = inj.cf_table.data.clone()
        inj.cf_table.data += torch.randn_like(kept)
        torch.testing.assert_close(m.item_table(m.sem_cache)[:, :d], table[:, :d])
        torch.testing.assert_close(inj.input_term(SEQ, user), term)
        assert not torch.allclose(inj.user_states(SEQ), user)
        inj.cf_table.data.copy_(kept)
    torch.testing.assert_close(scores, lm[:, 0] @ table[:, :d].T + 0.5 * sasrec, atol=1e-5, rtol=1e-4)
    shipped = _model(small_synth_dir, cf_exports, tmp_path, mode="residual")
    assert shipped.injection.w_c is not None and shipped.w_p.in_features == m.backbone.hidden_size + inj.item_dim


@pytest.mark.parametrize("passthrough", [True, False])
def test_the_item_table_starts_as_the_cf_vectors_only_with_cf_passthrough(small_synth_dir, cf_exports, tmp_path, passthrough):
    torch.manual_seed(0)
    m = _model(small_synth_dir, cf_exports, tmp_path, mode="input", cf_passthrough=passthrough)
    h, c = m.backbone.hidden_size, m.injection.item_dim
    cf_block, text_block = m.w_p.weight[:, h:], m.w_p.weight[:, :h]
    with torch.no_grad():
        table = m.item_table(m.sem_cache)
        text_only = m.w_p(torch.cat([m.standardise(m.sem_cache), torch.zeros(len(m.sem_cache), c)], 1))
    cf = m.injection.item_vectors
    if passthrough:
        assert torch.equal(cf_block[:c], torch.eye(c)) and not cf_block[c:].any()
        torch.testing.assert_close(table[1:, :c] - text_only[1:, :c], cf[1:])  # e_j = c_j + the small text term
    else:
        # the CF block is drawn like the text block: no identity, the same small scale
        assert not torch.allclose(cf_block[:c], torch.eye(c), atol=0.1)
        assert cf_block.std().item() == pytest.approx(text_block.std().item(), rel=0.1)
        assert (table[1:, :c] - text_only[1:, :c]).norm() < 0.5 * cf[1:].norm()


def test_residual_needs_a_sasrec_user_encoder(small_synth_dir, cf_exports):
    with pytest.raises(ConfigError, match="residual"):
        DARec(num_items=PreparedData(small_synth_dir).num_items, backbone=BackboneConfig(name="tiny-bert"),
              injection={"mode": "input", "residual": True, "lightgcn": cf_exports["lightgcn"]})


@pytest.mark.parametrize("name", ["tiny-bert", "minilm"])
def test_input_terms_start_at_the_word_embedding_scale(small_synth_dir, cf_exports, tmp_path, name):
    """Without calibration the user-CF term dwarfs the text term; after it, text, item CF and user CF each start
    at the RMS of the backbone's word embeddings."""
    from darec.modules.darec import _recent_windows

    d = PreparedData(small_synth_dir)
    m = _model(small_synth_dir, cf_exports, tmp_path, name=name, mode="input")
    windows, _ = _recent_windows(d.train_sequences(), 12)
    before = m.input_scales(windows)
    after = m.calibrate_input_scales(windows)
    target = after["word_embeddings"]
    for term in ("text", "item_cf", "user_cf"):
        assert after[term] == pytest.approx(target, rel=1e-4), (term, after)
    assert max(before[t] for t in ("text", "item_cf", "user_cf")) / min(before[t] for t in ("text", "item_cf", "user_cf")) > 1.5
    assert bool(m.inputs_calibrated)
    if name == "minilm":
        assert 0.25 < after["positions"] / target < 1.0  # the backbone's own position embeddings, for reference


def test_residual_weight_chosen_on_validation(small_synth_dir, cf_exports, tmp_path):
    """With residual_weight "validation" the LM trains alone; each validation pass tries every SASRec-score weight
    of the grid, keeps the best and reports its NDCG@10, and evaluation after it uses that weight."""
    import lightning as L

    from darec.modules.darec import RESIDUAL_GRID
    from darec.modules.injection import InjectionConfig

    dm = SequenceDataModule(str(small_synth_dir), batch_size=16, eval_batch_size=64, max_len=12, num_negatives=0)
    m = DARec(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint,
              backbone=BackboneConfig(name="tiny-bert"), max_len=12, cache_dir=str(tmp_path),
              injection=InjectionConfig(mode="input", residual=True, residual_weight="validation", **cf_exports))
    assert not m.injection.residual_scale.requires_grad and float(m.injection.residual_scale) == 0.0
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(m, datamodule=dm)
    chosen = float(m.injection.residual_scale)
    assert chosen in RESIDUAL_GRID and float(trainer.callback_metrics["val/residual_weight"]) == chosen
    reported = float(trainer.callback_metrics["val/ndcg@10"])
    per_weight = []
    for w in RESIDUAL_GRID:  # recompute each weight through the ordinary evaluation path
        m.injection.residual_scale.fill_(w)
        m.injection.cfg.residual_weight = "learned"  # plain validation with this fixed weight
        per_weight.append(L.Trainer(logger=False, enable_progress_bar=False).validate(m, datamodule=dm, verbose=False)[0]["val/ndcg@10"])
        m.injection.cfg.residual_weight = "validation"
    assert reported == pytest.approx(max(per_weight), abs=1e-6)
    assert per_weight[RESIDUAL_GRID.index(chosen)] == pytest.approx(max(per_weight), abs=1e-6)
    assert max(per_weight) > min(per_weight)  # the weight matters
    m.injection.residual_scale.fill_(2.0)
    m.train()
    seq = torch.tensor([[0, 3, 7, 9]])
    d_sas = m.injection.sasrec_part(m.injection.user_states(seq)).shape[-1]
    assert torch.equal(m.scoring_states(seq, m.sem_cache)[..., -d_sas:], torch.zeros(1, 4, d_sas))  # trains alone
    m.eval()
    assert m.scoring_states(seq, m.sem_cache)[..., -d_sas:].abs().sum() > 0


def test_a_list_of_sources_is_the_same_model_as_the_shorthands(small_synth_dir, cf_exports, tmp_path):
    # SASRec listed first: the source with its own user encoder still goes last, so the parameters line up
    torch.manual_seed(3)
    short = _model(small_synth_dir, cf_exports, tmp_path, mode="input")
    torch.manual_seed(3)
    listed = _model(small_synth_dir, {"sources": [cf_exports["sasrec"], cf_exports["lightgcn"]]}, tmp_path, mode="input")
    a, b = short.state_dict(), listed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    seq = torch.tensor([[0, 0, 3, 7, 9, 11], [4, 8, 15, 16, 23, 2]])
    with torch.no_grad():
        torch.testing.assert_close(listed.user_vectors(seq, listed.sem_cache), short.user_vectors(seq, short.sem_cache))
    both = {"sources": [cf_exports["sasrec"]], "sasrec": cf_exports["sasrec"]}
    with pytest.raises(ConfigError, match="at most one injected export may bring causal user states"):
        _model(small_synth_dir, both, tmp_path, mode="input")


def test_a_model_that_is_not_a_cf_source_is_refused(small_synth_dir, tmp_path):
    from darec.modules.popularity import Popularity

    d = PreparedData(small_synth_dir)
    with pytest.raises(ConfigError, match="Popularity is not a CF source"):
        export_module(Popularity(d.num_items, d.num_users, d.fingerprint), d, tmp_path / "pop.safetensors")
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def fold_exports(small_synth_dir, tmp_path_factory) -> dict[str, object]:
    """A full SASRec export, two cross-fitted fold encoders that share its item table, and bad fold exports."""
    data = PreparedData(small_synth_dir)
    out = tmp_path_factory.mktemp("folds")
    kw = dict(hidden_size=16, inner_size=32, max_len=12)

    def sasrec(seed: int, items: torch.Tensor | None = None) -> SASRec:
        torch.manual_seed(seed)
        m = SASRec(data.num_items, data.num_users, data.fingerprint, **kw).eval()
        if items is not None:
            m.encoder.item_embedding.weight.data.copy_(items)
        return m

    full = sasrec(1)
    items = full.encoder.item_embedding.weight.data
    folds = [str(export_module(sasrec(10 + k, items), data, out / f"fold{k}.safetensors",
                               meta={"cross_fit": {"folds": 2, "fold": k}})) for k in range(2)]
    return {"full": str(export_module(full, data, out / "full.safetensors")), "folds": folds,
            "own_items": str(export_module(sasrec(20), data, out / "own.safetensors", meta={"cross_fit": {"folds": 2, "fold": 1}})),
            "no_fold": str(export_module(sasrec(21, items), data, out / "plain.safetensors"))}


def test_cross_fitted_user_states_come_from_the_encoder_that_did_not_see_the_user(small_synth_dir, fold_exports, tmp_path):
    """With injection.sasrec_folds, user u's SASRec input states come from fold (u % K)'s encoder, in training and in
    evaluation; SASRec's residual score keeps the full encoder's states; a history without a user id takes the mean."""
    m = _model(small_synth_dir, {"sasrec": fold_exports["full"], "sasrec_folds": fold_exports["folds"]}, tmp_path,
               mode="residual")
    fp = PreparedData(small_synth_dir).fingerprint
    full = SasrecUserEncoder.from_export(fold_exports["full"], fp)
    folds = [SasrecUserEncoder.from_export(p, fp) for p in fold_exports["folds"]]
    seq = torch.tensor([[0, 3, 7, 9], [2, 5, 8, 1], [0, 0, 4, 6], [3, 7, 9, 2]])
    users = torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        states = m.injection.user_states(seq, users)
        for row, u in enumerate(users.tolist()):
            torch.testing.assert_close(states[row], folds[u % 2].causal_user_states(seq[row : row + 1])[0])
        torch.testing.assert_close(m.injection.residual_states(seq, states), full.causal_user_states(seq))
        mean = (folds[0].causal_user_states(seq) + folds[1].causal_user_states(seq)) / 2
        torch.testing.assert_close(m.injection.user_states(seq), mean)
        m.on_eval_start()
        history = seq[[0, 0]]
        b = m.prepare_eval_batch({"history": history, "user": torch.tensor([1, 2]), "target": torch.tensor([5, 5])})
    torch.testing.assert_close(b["user_sasrec"], full.causal_user_states(history)[:, -1])
    assert not torch.allclose(b["user_base"][0], b["user_base"][1], atol=1e-4)  # same history, the other fold's encoder


@pytest.mark.parametrize("which,match", [
    ("own_items", "item table is not injection.sasrec's"),
    ("no_fold", "not fold 0..1 of a 2-fold cross-fit"),
    ("one_fold", "not fold 0..0 of a 1-fold cross-fit"),
    ("no_sasrec", "needs injection.sasrec"),
])
def test_bad_fold_exports_raise_a_clear_error(small_synth_dir, fold_exports, cf_exports, tmp_path, which, match):
    folds = fold_exports["folds"]
    inj = {"sasrec": fold_exports["full"], "sasrec_folds": {
        "own_items": [folds[0], fold_exports["own_items"]], "no_fold": [fold_exports["no_fold"], folds[1]],
        "one_fold": folds[:1], "no_sasrec": folds}[which]}
    if which == "no_sasrec":
        inj = {"lightgcn": cf_exports["lightgcn"], "sasrec_folds": folds}
    with pytest.raises(ConfigError, match=match):
        _model(small_synth_dir, inj, tmp_path, mode="input")


def test_cross_fitted_states_can_be_read_in_training_only(small_synth_dir, fold_exports, tmp_path):
    """sasrec_folds_eval: full: training reads the out-of-fold encoders, evaluation the full SASRec's states."""
    m = _model(small_synth_dir, {"sasrec": fold_exports["full"], "sasrec_folds": fold_exports["folds"],
                                 "sasrec_folds_eval": "full"}, tmp_path, mode="input")
    fp = PreparedData(small_synth_dir).fingerprint
    full = SasrecUserEncoder.from_export(fold_exports["full"], fp)
    fold1 = SasrecUserEncoder.from_export(fold_exports["folds"][1], fp)
    seq, users = torch.tensor([[0, 3, 7, 9]]), torch.tensor([5])
    with torch.no_grad():
        m.eval()
        torch.testing.assert_close(m.injection.user_states(seq, users)[..., -16:], full.causal_user_states(seq))
        m.train()
        torch.testing.assert_close(m.injection.user_states(seq, users)[..., -16:], fold1.causal_user_states(seq))
    with pytest.raises(ConfigError, match=r"sasrec_folds_eval must be folds \| full"):
        _model(small_synth_dir, {"sasrec": fold_exports["full"], "sasrec_folds": fold_exports["folds"],
                                 "sasrec_folds_eval": "both"}, tmp_path, mode="input")


def test_stacked_trains_on_top_of_each_users_out_of_fold_sasrec_score_and_evaluates_with_the_full_one(
        small_synth_dir, fold_exports, tmp_path):
    """residual_weight: stacked with sasrec_folds_for: residual: in training the residual is SASRec's score at weight 1
    from the user's out-of-fold encoder, while the input states stay the full SASRec's; in evaluation the residual is
    the full SASRec's score at the weight chosen on validation."""
    m = _model(small_synth_dir, {"sasrec": fold_exports["full"], "sasrec_folds": fold_exports["folds"],
                                 "residual_weight": "stacked", "sasrec_folds_for": "residual"}, tmp_path, mode="residual")
    fp = PreparedData(small_synth_dir).fingerprint
    full = SasrecUserEncoder.from_export(fold_exports["full"], fp)
    folds = [SasrecUserEncoder.from_export(p, fp) for p in fold_exports["folds"]]
    seq, users = torch.tensor([[0, 3, 7, 9], [2, 5, 8, 1]]), torch.tensor([3, 4])
    d_sas = full.causal_user_states(seq).shape[-1]
    m.injection.residual_scale.fill_(0.5)
    with torch.no_grad():
        m.train()
        torch.testing.assert_close(m.injection.user_states(seq, users)[..., -d_sas:], full.causal_user_states(seq))
        residual = m.scoring_states(seq, m.sem_cache, users=users)[..., -d_sas:]
        for row, u in enumerate(users.tolist()):
            torch.testing.assert_close(residual[row], folds[u % 2].causal_user_states(seq[row : row + 1])[0])
        m.eval()
        torch.testing.assert_close(m.scoring_states(seq, m.sem_cache, users=users)[..., -d_sas:],
                                   0.5 * full.causal_user_states(seq))
    with pytest.raises(ConfigError, match="sasrec_folds_for: residual feeds the fold states to the residual in training"):
        _model(small_synth_dir, {"sasrec": fold_exports["full"], "sasrec_folds": fold_exports["folds"],
                                 "residual_weight": "validation", "sasrec_folds_for": "residual"}, tmp_path, mode="residual")
    with pytest.raises(ConfigError, match="sasrec_folds_for must be one of"):
        _model(small_synth_dir, {"sasrec": fold_exports["full"], "sasrec_folds": fold_exports["folds"],
                                 "sasrec_folds_for": "both"}, tmp_path, mode="input")


def test_stacked_chooses_the_weight_on_validation_and_stops_on_the_score_it_trains(small_synth_dir, cf_exports, tmp_path):
    import lightning as L

    from darec.modules.darec import RESIDUAL_GRID
    from darec.modules.injection import InjectionConfig

    dm = SequenceDataModule(str(small_synth_dir), batch_size=16, eval_batch_size=64, max_len=12, num_negatives=0)
    m = DARec(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint,
              backbone=BackboneConfig(name="tiny-bert"), max_len=12, cache_dir=str(tmp_path),
              injection=InjectionConfig(mode="input", residual=True, residual_weight="stacked", **cf_exports))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(m, datamodule=dm)
    chosen = float(m.injection.residual_scale)
    assert chosen in RESIDUAL_GRID and float(trainer.callback_metrics["val/residual_weight"]) == chosen
    m.injection.residual_scale.fill_(1.0)
    m.injection.cfg.residual_weight = "learned"  # plain validation at the weight the language model trained with
    at_one = L.Trainer(logger=False, enable_progress_bar=False).validate(m, datamodule=dm, verbose=False)[0]["val/ndcg@10"]
    assert float(trainer.callback_metrics["val/lm_ndcg@10"]) == pytest.approx(at_one, abs=1e-6)
    m.injection.cfg.residual_weight = "stacked"
    m.train()
    seq = torch.tensor([[0, 3, 7, 9]])
    d_sas = m.injection.sasrec_part(m.injection.user_states(seq)).shape[-1]
    torch.testing.assert_close(m.scoring_states(seq, m.sem_cache)[..., -d_sas:], m.injection.sasrec_part(m.injection.user_states(seq)))
