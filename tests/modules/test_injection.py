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


def test_residual_adds_sasrecs_own_score(small_synth_dir, cf_exports, tmp_path):
    from darec.modules.cf import load_cf_embeddings

    plain = _model(small_synth_dir, cf_exports, tmp_path, mode="input")
    m = _model(small_synth_dir, cf_exports, tmp_path, mode="residual")
    assert plain.injection.residual_scale is None and m.injection.residual_scale.requires_grad
    m.load_state_dict(plain.state_dict(), strict=False)
    m.injection.residual_scale.data.fill_(0.5)
    d = PreparedData(small_synth_dir)
    sas = load_cf_embeddings(cf_exports["sasrec"], d.fingerprint)
    seq = torch.tensor([[0, 0, 3, 7, 9, 11], [4, 8, 15, 16, 23, 2]])
    with torch.no_grad():
        scores = m.user_vectors(seq, m.sem_cache) @ m.item_table(m.sem_cache).T
        base = plain.user_vectors(seq, plain.sem_cache) @ plain.item_table(plain.sem_cache).T
        sasrec = SasrecUserEncoder.from_cf(sas).causal_user_states(seq)[:, -1] @ sas.item_emb.T
    sasrec[:, 0] = 0
    torch.testing.assert_close(scores, base + 0.5 * sasrec, atol=1e-5, rtol=1e-4)
    assert not m.injection.cf_table.requires_grad, "SASRec's item vectors stay frozen"


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
    windows = _recent_windows(d.train_sequences(), 12)
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
