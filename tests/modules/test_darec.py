"""DARec module: trainable set, causality, caches, checkpoints, injection inputs."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from darec.data.dataset import PreparedData
from darec.data.datamodules.sequence import SequenceDataModule
from darec.errors import ConfigError
from darec.modules.backbone import BackboneConfig
from darec.modules.darec import DARec


def _model(data_dir, name="tiny-bert", tmp_path=None, **kw) -> tuple[DARec, PreparedData]:
    d = PreparedData(data_dir)
    m = DARec(
        num_items=d.num_items,
        num_users=d.num_users,
        data_fingerprint=d.fingerprint,
        backbone=BackboneConfig(name=name),
        max_len=12,
        cache_dir=str(tmp_path or "/tmp/darec_test_cache"),
        **kw,
    )
    m.attach_data(d.sentences, d.text_hash, d.fingerprint, d.train_sequences())
    return m, d


def test_only_adapters_projections_special_tokens_and_id_table_train(small_synth_dir, tmp_path):
    m, _ = _model(small_synth_dir, tmp_path=tmp_path, item_adapter_layers=None, max_fresh_items=8, item_vector="align",
                  losses={"masked_context": True})
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable, "nothing trains"
    allowed = ("backbone.adapters.", "backbone.special_embeddings", "w_s.", "w_o.", "w_p.", "w_a.", "id_table")
    assert all(n.startswith(allowed) for n in trainable), sorted(n for n in trainable if not n.startswith(allowed))
    assert any(n.startswith("w_p.") for n in trainable) and "id_table" in trainable
    assert not any(p.requires_grad for p in m.backbone.model.parameters() if not any(p is q for q in m.backbone.adapters.parameters()))


@pytest.mark.parametrize("predict_from", ["last_item", "seq"])
@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama"])
def test_position_t_does_not_see_later_items(small_synth_dir, tmp_path, name, predict_from):
    m, d = _model(small_synth_dir, name=name, tmp_path=tmp_path, predict_from=predict_from)
    m.eval()
    m.refresh_cache()
    seq = torch.tensor([[0, 0, 3, 7, 9, 11, 2, 5]])
    changed = seq.clone()
    changed[0, 6:] = torch.tensor([13, 17])
    with torch.no_grad():
        a = m.sequence_states(seq, m.sem_cache)
        b = m.sequence_states(changed, m.sem_cache)
    assert torch.allclose(a[0, 2:6], b[0, 2:6], atol=1e-5)
    assert not torch.allclose(a[0, 6:], b[0, 6:], atol=1e-5)


def test_left_padding_does_not_change_outputs(small_synth_dir, tmp_path):
    m, _ = _model(small_synth_dir, name="tiny-llama", tmp_path=tmp_path)
    m.eval()
    m.refresh_cache()
    with torch.no_grad():
        a = m.sequence_states(torch.tensor([[3, 7, 9]]), m.sem_cache)
        b = m.sequence_states(torch.tensor([[0, 0, 3, 7, 9]]), m.sem_cache)
    assert torch.allclose(a[0], b[0, 2:], atol=1e-5)


@pytest.mark.parametrize("item_layers", [None, 0])
def test_evaluation_uses_current_adapters(small_synth_dir, tmp_path, item_layers):
    m, _ = _model(small_synth_dir, tmp_path=tmp_path, item_adapter_layers=item_layers)
    m.eval()
    m.on_eval_start()
    before = m._eval_table.clone()
    seq = torch.tensor([[0, 3, 7, 9]])
    with torch.no_grad():
        users = m.user_vectors(seq, m.sem_cache)
        gen = torch.Generator().manual_seed(0)
        for p in m.backbone.adapters.parameters():  # random: a constant shift would vanish in the LayerNorms
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        m.on_eval_start()
        assert not torch.allclose(users, m.user_vectors(seq, m.sem_cache))  # the sequence level always adapts
    # the item table follows the adapters when they act at the item level, and is frozen text otherwise
    assert torch.allclose(before, m._eval_table) == (item_layers == 0)


def test_duplicate_sentences_are_flagged(small_synth_dir, tmp_path):
    m, d = _model(small_synth_dir, tmp_path=tmp_path)
    sentences = list(d.sentences)
    sentences[2] = sentences[1]
    m.attach_data(sentences, "other-text-hash", d.fingerprint, [])
    assert m.dup_text[1] and m.dup_text[2] and not m.dup_text[3]


def test_training_step_losses_are_finite_and_step_changes_only_trainables(small_synth_dir, tmp_path):
    m, d = _model(small_synth_dir, tmp_path=tmp_path)
    dm = SequenceDataModule(str(small_synth_dir), batch_size=8, max_len=12, num_negatives=0)
    batch = next(iter(dm.train_dataloader()))
    m.refresh_cache()
    m.log = lambda *a, **k: None
    vocab = m.backbone.word_embeddings.weight.detach().clone()
    opt = m.configure_optimizers()
    loss = m.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert torch.equal(vocab, m.backbone.word_embeddings.weight)


def _trainable_without_gradient(m: DARec, batch: dict[str, torch.Tensor]) -> set[str]:
    m.zero_grad(set_to_none=True)
    m.training_step(batch, 0).backward()
    return {n for n, p in m.named_parameters() if p.requires_grad and p.grad is None}


@pytest.mark.parametrize("kw", [
    {},  # the class defaults: frozen item level, no masked-context loss
    {"predict_from": "seq"},
    {"item_embeddings": True, "losses": {"label_smoothing": 0.1}},
    {"losses": {"mask_seen": True, "label_smoothing": 0.1}},
    {"context_masking": False, "item_vector": "align"},
    {"item_adapter_layers": None, "max_fresh_items": 8, "losses": {"masked_context": True}},
    {"item_adapter_layers": None, "max_fresh_items": 8, "item_vector": "align", "losses": {"masked_context": True}},
    {"adapters": ["skip", "serial:8"], "item_adapter_layers": 1, "max_fresh_items": 8, "losses": {"masked_context": True}},
])
def test_every_trainable_parameter_gets_a_gradient_and_the_frozen_ones_would_get_none(small_synth_dir, tmp_path, kw):
    """DDP needs a gradient for every trainable parameter at every step. What DARec freezes as never trained would
    get no gradient, or an exactly zero one, if it were left trainable: freezing it changes no update."""
    m, _ = _model(small_synth_dir, tmp_path=tmp_path, **kw)
    batch = next(iter(SequenceDataModule(str(small_synth_dir), batch_size=8, max_len=12, num_negatives=0).train_dataloader()))
    m.refresh_cache()
    m.log = lambda *a, **k: None
    assert _trainable_without_gradient(m, batch) == set()
    for name in m.never_trained:
        m.get_parameter(name).requires_grad_(True)
    m.zero_grad(set_to_none=True)
    m.training_step(batch, 0).backward()
    for name in m.never_trained:
        grad = m.get_parameter(name).grad
        assert grad is None or not grad.any(), name
    if not kw:
        assert set(m.never_trained) == {"w_a.weight", "id_table", "backbone.special_embeddings"}


def test_checkpoint_keeps_only_trainable_backbone_state_and_checks_identity(small_synth_dir, tmp_path):
    dm = SequenceDataModule(str(small_synth_dir), batch_size=16, eval_batch_size=64, max_len=12, num_negatives=0)
    m = DARec(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint,
              backbone=BackboneConfig(name="tiny-bert"), max_len=12, cache_dir=str(tmp_path))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    trainer.fit(m, datamodule=dm)
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    blob = torch.load(ckpt, weights_only=False)
    assert "darec_backbone" in blob and blob["darec_backbone"]["weights_sha256"]
    trainable_backbone = {f"backbone.{n}" for n, p in m.backbone.named_parameters() if p.requires_grad}
    assert {k for k in blob["state_dict"] if k.startswith("backbone.")} == trainable_backbone  # no frozen weight
    assert trainable_backbone and all(".adapters." in k or k.endswith("special_embeddings") for k in trainable_backbone)
    before = trainer.validate(m, datamodule=dm, verbose=False)[0]
    loaded = DARec.load_from_checkpoint(ckpt)
    own, back = m.state_dict(), loaded.state_dict()
    for key, value in blob["state_dict"].items():  # every stored tensor comes back as trained
        assert torch.equal(back[key], own[key]), key
    for key in own.keys() & back.keys():  # and the frozen backbone is the same pretrained one
        if key.startswith("backbone.") and key not in blob["state_dict"]:
            assert torch.equal(back[key], own[key]), key
    after = L.Trainer(logger=False, enable_progress_bar=False).validate(loaded, datamodule=dm, verbose=False)[0]
    assert after["val/ndcg@10"] == pytest.approx(before["val/ndcg@10"], abs=1e-6)
    blob["darec_backbone"]["weights_sha256"] = "0" * 64
    torch.save(blob, ckpt)
    with pytest.raises(ConfigError, match="different weights"):
        DARec.load_from_checkpoint(ckpt)


def test_context_masking_off_lets_items_see_earlier_items(small_synth_dir, tmp_path):
    on, _ = _model(small_synth_dir, name="tiny-llama", tmp_path=tmp_path)
    off, _ = _model(small_synth_dir, name="tiny-llama", tmp_path=tmp_path, context_masking=False)
    off.load_state_dict(on.state_dict())
    for m in (on, off):
        m.eval()
        m.refresh_cache()
    seq = torch.tensor([[0, 3, 7, 9], [0, 0, 5, 9]])
    with torch.no_grad():
        alone = on.sem_cache[seq]
        together = off.history_semantics(seq, off.sem_cache)
    assert torch.allclose(together[:, :2], alone[:, :2], atol=1e-5)  # padding and first items: no earlier text
    assert torch.allclose(together[1, 2], alone[1, 2], atol=1e-5)
    assert not torch.allclose(together[0, 2], alone[0, 2], atol=1e-4)  # item 7 now sees item 3's tokens
    assert not torch.allclose(together[1, 3], alone[1, 3], atol=1e-4)  # item 9 after 5 differs from 9 after 3, 7
    assert not torch.allclose(together[0, 3], together[1, 3], atol=1e-4)
    changed = seq.clone()
    changed[0, 3] = 11
    with torch.no_grad():
        again = off.history_semantics(changed, off.sem_cache)
    assert torch.allclose(again[0, :3], together[0, :3], atol=1e-5)  # later items never leak backwards


def test_cache_is_built_once_per_epoch_start_and_validation(small_synth_dir, tmp_path, monkeypatch):
    """Validation rebuilds the cache; the next epoch start must not rebuild it again (no training step since)."""
    dm = SequenceDataModule(str(small_synth_dir), batch_size=16, eval_batch_size=64, max_len=12, num_negatives=0)
    m = DARec(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint,
              backbone=BackboneConfig(name="tiny-bert"), max_len=12, cache_dir=str(tmp_path), refresh_every=2)
    calls: list[int] = []
    original = m.refresh_cache
    monkeypatch.setattr(m, "refresh_cache", lambda: (calls.append(m.global_step), original())[1])
    trainer = L.Trainer(max_epochs=2, limit_train_batches=5, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(m, datamodule=dm)
    # setup (calibration) at step 0; every 2 steps within an epoch (before steps 2 and 4); validation after 5 and 10
    assert calls == [0, 2, 4, 5, 7, 9, 10], calls


def test_setup_moves_the_model_to_the_strategy_device_before_its_item_level_work(small_synth_dir, tmp_path, monkeypatch):
    """Lightning calls ``setup`` before its strategy moves the model, so DARec moves itself there first and the
    catalogue's first encode runs on the accelerator. One device or DDP qualifies; sharding strategies and the CPU not."""
    import darec.modules.darec as darec_module
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy

    cuda0, cuda1 = torch.device("cuda", 0), torch.device("cuda", 1)
    assert darec_module.setup_device(SingleDeviceStrategy(device=cuda1)) == cuda1
    assert darec_module.setup_device(DDPStrategy(parallel_devices=[cuda0, cuda1])) == cuda0  # rank 0's device
    assert darec_module.setup_device(FSDPStrategy(parallel_devices=[cuda0, cuda1])) is None
    assert darec_module.setup_device(SingleDeviceStrategy(device=torch.device("cpu"))) is None

    dm = SequenceDataModule(str(small_synth_dir), batch_size=16, eval_batch_size=64, max_len=12, num_negatives=0)
    m = DARec(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint,
              backbone=BackboneConfig(name="tiny-bert"), max_len=12, cache_dir=str(tmp_path))
    target = torch.device("cpu", 0)  # compares unequal to the model's "cpu", so setup must move it
    monkeypatch.setattr(darec_module, "setup_device", lambda strategy: target)
    events: list = []
    to, refresh = m.to, m.refresh_cache
    monkeypatch.setattr(m, "to", lambda *a, **kw: (events.append(("to", *a)), to(*a, **kw))[1])
    monkeypatch.setattr(m, "refresh_cache", lambda: (events.append("refresh"), refresh())[1])
    L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
              enable_checkpointing=False, enable_model_summary=False).fit(m, datamodule=dm)
    assert events[0] == ("to", target) and events.index("refresh") > 0, events


def test_weight_decay_only_on_weight_matrices(small_synth_dir, tmp_path):
    m, _ = _model(small_synth_dir, tmp_path=tmp_path, item_adapter_layers=None, max_fresh_items=8, item_vector="align",
                  losses={"masked_context": True})
    opt = m.configure_optimizers()
    names = {id(p): n for n, p in m.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {"backbone.special_embeddings", "id_table", "w_s.bias", "w_o.bias"} <= plain
    assert {"w_s.weight", "w_o.weight", "w_p.weight"} <= decayed
    assert not any(n.endswith("bias") for n in decayed)
    assert decayed | plain == {n for n, p in m.named_parameters() if p.requires_grad}


def test_hard_negatives_come_from_the_cache_without_encoding(small_synth_dir, tmp_path, monkeypatch):
    m, d = _model(small_synth_dir, tmp_path=tmp_path)
    first = m.hard_negs.clone()
    assert (first[1:] > 0).any()

    def refuse(*a, **k):
        raise AssertionError("the text vectors were encoded although the mined negatives are cached")

    again, _ = _model(small_synth_dir, tmp_path=tmp_path)  # same cache dir
    monkeypatch.setattr(again.encoder, "encode_all", refuse)
    again.attach_data(d.sentences, d.text_hash, d.fingerprint, d.train_sequences())
    assert torch.equal(again.hard_negs, first)


def test_a_skipped_layer_mines_its_own_hard_negatives(small_synth_dir, tmp_path):
    """The frozen text vectors of a model with a skipped layer differ, so a shared cache must not serve it another's."""
    plain, _ = _model(small_synth_dir, tmp_path=tmp_path, adapters=["serial", "serial"])
    skip, _ = _model(small_synth_dir, tmp_path=tmp_path, adapters=["skip", "serial"])  # same cache dir
    assert skip.backbone.replaced_layers == ["0:skip"] and plain.backbone.replaced_layers == []
    assert skip._text_source_key() != plain._text_source_key()
    assert len(list((tmp_path / "hard_negatives").glob("hardneg-*.pt"))) == 2
    with torch.no_grad():
        a = plain.encoder.encode_all(plain.num_items, mean_pool=True)
        b = skip.encoder.encode_all(skip.num_items, mean_pool=True)
    assert not torch.allclose(a, b, atol=1e-3)


@pytest.mark.parametrize("predict_from", ["last_item", "seq"])
def test_scoring_states_with_the_text_path_are_causal_and_match_evaluation(small_synth_dir, tmp_path, predict_from):
    m, _ = _model(small_synth_dir, tmp_path=tmp_path, text_path=3, predict_from=predict_from)
    m.eval()
    m.refresh_cache()
    with torch.no_grad():
        for p in m.w_t.parameters():
            p.normal_()  # the text path starts small; make it matter
    seq = torch.tensor([[0, 0, 3, 7, 9, 11, 2, 5]])
    changed = seq.clone()
    changed[0, 6:] = torch.tensor([13, 17])
    with torch.no_grad():
        a, b = m.scoring_states(seq, m.sem_cache), m.scoring_states(changed, m.sem_cache)
        last = m.user_vectors(seq, m.sem_cache)
        without = m.w_o(m.sequence_states(seq, m.sem_cache))
    torch.testing.assert_close(a[0, 2:6], b[0, 2:6], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[0, 6:], b[0, 6:], atol=1e-5)
    torch.testing.assert_close(last, a[:, -1], atol=1e-5, rtol=1e-5)  # training and evaluation agree
    recent = m.standardise(m.sem_cache[torch.tensor([11, 2, 5])]).mean(0)  # the last 3 items
    torch.testing.assert_close(a[0, -1] - without[0, -1], m.w_t(recent), atol=1e-4, rtol=1e-4)


def test_cosine_scoring_is_a_scaled_cosine_that_trains_its_scale(small_synth_dir, tmp_path):
    m, _ = _model(small_synth_dir, tmp_path=tmp_path, scoring="cosine")
    dot, _ = _model(small_synth_dir, tmp_path=tmp_path)
    dot.load_state_dict(m.state_dict(), strict=False)  # the same projections and adapters
    m.eval(), dot.eval()
    m.refresh_cache(), dot.refresh_cache()
    seq = torch.tensor([[0, 0, 3, 7, 9, 11], [4, 8, 15, 16, 23, 2]])
    with torch.no_grad():
        m.score_log_scale.fill_(2.0)
        scores = m.user_vectors(seq, m.sem_cache) @ m.item_table(m.sem_cache).T
        u, e = dot.user_vectors(seq, dot.sem_cache), dot.item_table(dot.sem_cache)
    cos = torch.nn.functional.cosine_similarity(u[:, None], e[None], dim=-1)
    cos[:, 0] = 0
    torch.testing.assert_close(scores, torch.e**2.0 * cos, atol=1e-5, rtol=1e-4)
    assert scores.abs().max() <= torch.e**2.0 + 1e-4
    m.train()
    batch = {"input": seq, "target": torch.tensor([[0, 3, 7, 9, 11, 5], [8, 15, 16, 23, 2, 6]])}
    m.training_step(batch, 0).backward()
    assert m.score_log_scale.grad is not None and m.score_log_scale.grad.abs() > 0
    with pytest.raises(ConfigError, match="scoring"):
        _model(small_synth_dir, tmp_path=tmp_path, scoring="euclid")


def test_item_embeddings_start_at_zero_train_without_decay_and_move_the_scores(small_synth_dir, tmp_path):
    m, d = _model(small_synth_dir, tmp_path=tmp_path, item_embeddings=True, lr=0.01)
    plain, _ = _model(small_synth_dir, tmp_path=tmp_path)
    plain.load_state_dict(m.state_dict(), strict=False)
    m.refresh_cache(), plain.refresh_cache()
    with torch.no_grad():
        torch.testing.assert_close(m.item_table(m.sem_cache), plain.item_table(plain.sem_cache))  # zero at the start
    opt = m.configure_optimizers()
    assert all(g["weight_decay"] == 0 for g in opt.param_groups if any(p is m.item_embeddings for p in g["params"]))
    m.log = lambda *a, **k: None
    batch = next(iter(SequenceDataModule(str(small_synth_dir), batch_size=8, max_len=12, num_negatives=0).train_dataloader()))
    m.training_step(batch, 0).backward()
    opt.step()
    learned = m.item_embeddings.detach().clone()
    assert learned[1:].abs().amax(1).gt(0).all()  # the full softmax reaches every item
    wider = torch.cat([m.sem_cache, m.sem_cache[:3]])  # three rows beyond the catalogue
    with torch.no_grad():
        table = m.item_table(wider)
        m.item_embeddings.zero_()
        features = m.item_table(wider)
    torch.testing.assert_close(table[1 : d.num_items + 1] - features[1 : d.num_items + 1], learned[1:])
    assert not table[0].any() and torch.equal(table[d.num_items + 1 :], features[d.num_items + 1 :])
    with pytest.raises(ConfigError, match="label_smoothing"):
        _model(small_synth_dir, tmp_path=tmp_path, losses={"label_smoothing": 1.0})
    with pytest.raises(ConfigError, match="mask_seen"):
        _model(small_synth_dir, tmp_path=tmp_path, losses={"mask_seen": True, "sampled_softmax": 5})


def test_frozen_backbone_is_bit_identical_after_a_real_fit(small_synth_dir, tmp_path):
    """Every frozen weight (all layers, not only the vocabulary), hashed afresh before and after Trainer.fit with
    AdamW weight decay and item-level adaptation on."""
    dm = SequenceDataModule(str(small_synth_dir), batch_size=16, eval_batch_size=64, max_len=12, num_negatives=0)
    m = DARec(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint,
              backbone=BackboneConfig(name="tiny-bert"), adapters="lora:4", max_len=12, cache_dir=str(tmp_path),
              item_adapter_layers=None, max_fresh_items=16, weight_decay=0.5, lr=0.01)
    before = m.backbone.frozen_weights_sha256()
    adapters = {k: v.clone() for k, v in m.backbone.adapters.state_dict().items()}
    L.Trainer(max_epochs=2, limit_train_batches=4, logger=False, enable_progress_bar=False, enable_checkpointing=False,
              enable_model_summary=False, num_sanity_val_steps=0).fit(m, datamodule=dm)
    assert m.backbone.frozen_weights_sha256() == before
    assert any(not torch.equal(v, m.backbone.adapters.state_dict()[k]) for k, v in adapters.items())  # it did train
    with torch.no_grad():
        m.backbone.layers[1].attention.self.query.base_layer.weight[0, 0] += 1e-3  # one frozen weight, deep inside
    assert m.backbone.frozen_weights_sha256() != before


def test_data_windows_longer_than_the_model_are_refused(small_synth_dir, tmp_path):
    m, _ = _model(small_synth_dir, tmp_path=tmp_path)  # max_len 12
    dm = SequenceDataModule(small_synth_dir, batch_size=8, max_len=16)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False)
    with pytest.raises(ConfigError, match="data max_len 16 exceeds the model's max_len 12"):
        trainer.fit(m, dm)
