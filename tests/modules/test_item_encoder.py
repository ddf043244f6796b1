"""Item level: the semantic vector carries the text, fresh and cached encodings agree, frozen-prefix caching is exact."""

from __future__ import annotations

import pytest
import torch

from darec.data.dataset import PreparedData
from darec.errors import ConfigError
from darec.modules.adapters import adapter_state_dict, load_adapter_state_dict
from darec.modules.backbone import BackboneConfig
from darec.modules.darec import DARec


def _model(data_dir, tmp_path, name="tiny-bert", **kw) -> DARec:
    """A DARec whose adapters act at the item level too (the paper's item-level adaptation)."""
    kw.setdefault("item_adapter_layers", None)
    kw.setdefault("max_fresh_items", 64)
    d = PreparedData(data_dir)
    m = DARec(num_items=d.num_items, num_users=d.num_users, data_fingerprint=d.fingerprint,
              backbone=BackboneConfig(name=name, **kw.pop("backbone", {})), max_len=12, cache_dir=str(tmp_path), **kw)
    m.attach_data(d.sentences, d.text_hash, d.fingerprint, d.train_sequences())
    return m


def _perturb_adapters(m: DARec, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.backbone.adapters.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def test_mean_vector_equals_the_frozen_sentence_embedding(small_synth_dir, tmp_path):
    """With identity adapters, ``item_vector: mean`` is exactly what the pretrained sentence encoder computes for
    each sentence alone ([CLS] sentence [SEP], mean over its tokens): the [ALIGN] token changes nothing."""
    m = _model(small_synth_dir, tmp_path, name="minilm")
    d = PreparedData(small_synth_dir)
    got = m.encoder.encode(torch.arange(1, 9))
    tok = m.backbone.tokenizer
    hf = m.backbone.model
    for row, i in zip(got, range(1, 9)):
        enc = tok(d.sentences[i], return_tensors="pt", truncation=True, max_length=m.max_item_tokens)
        with torch.no_grad():
            ref = hf(**enc).last_hidden_state[0].mean(0)
        torch.testing.assert_close(row, ref, atol=1e-5, rtol=1e-5)


def test_fresh_encoding_equals_cached_in_train_mode(small_synth_dir, tmp_path):
    """MiniLM ships with dropout 0.1; the frozen backbone must not apply it at either level (DARec's own dropout,
    on the trainable inputs, is off here)."""
    m = _model(small_synth_dir, tmp_path, name="minilm", dropout=0.0)
    _perturb_adapters(m)
    m.refresh_cache()
    m.train()
    ids = torch.tensor([3, 1, 7, 12])
    torch.testing.assert_close(m.encoder.encode(ids), m.sem_cache[ids], atol=1e-5, rtol=1e-5)
    seq = torch.tensor([[0, 3, 1, 7, 12]])
    torch.testing.assert_close(m.sequence_states(seq, m.sem_cache), m.sequence_states(seq, m.sem_cache), atol=0, rtol=0)


def test_straight_through_rows_equal_the_cache_and_carry_the_adapter_gradient(small_synth_dir, tmp_path):
    m = _model(small_synth_dir, tmp_path)
    _perturb_adapters(m)
    m.refresh_cache()
    _perturb_adapters(m, seed=1)  # the adapters moved since the refresh: the cache is stale
    ids = torch.tensor([[0, 2, 5, 9]])
    table, fresh_ids, _ = m.fresh_semantics(ids)
    assert fresh_ids.tolist() == [2, 5, 9]
    torch.testing.assert_close(table, m.sem_cache.float(), atol=0, rtol=0)  # values: all cached
    table[fresh_ids].sum().backward()
    grads = [p.grad for p in m.backbone.adapters.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    old = _model(small_synth_dir, tmp_path, fresh_gradient="replace")
    old.load_state_dict(m.state_dict())
    old.sem_cache.copy_(m.sem_cache)
    table_old, _, _ = old.fresh_semantics(ids)
    assert not torch.allclose(table_old[fresh_ids], m.sem_cache[fresh_ids], atol=1e-4)  # the old path differs


@pytest.mark.parametrize("name,adapters,cut", [("tiny-bert", ["none", "serial", "lora:4"], 1),
                                               ("tiny-llama", ["none", "none", "parallel"], 2),
                                               ("tiny-bert", ["skip", "none", "serial"], 2)])
def test_frozen_prefix_caching_is_exact(small_synth_dir, tmp_path, name, adapters, cut):
    kw = dict(name=name, adapters=adapters, backbone={"tiny_layers": 3}, item_vector="mean")
    cached = _model(small_synth_dir, tmp_path, frozen_prefix=True, **kw)
    plain = _model(small_synth_dir, tmp_path, frozen_prefix=False, **kw)
    assert cached.encoder.prefix is not None and cached.encoder.prefix.cut == cut
    assert plain.encoder.prefix is None
    _perturb_adapters(cached)
    load_adapter_state_dict(plain.backbone, adapter_state_dict(cached.backbone))  # same seed: same frozen weights
    with torch.no_grad():
        cached.backbone.special_embeddings.add_(1.0)  # [ALIGN] trains; with the mean vector it must not matter
        plain.backbone.special_embeddings.add_(1.0)
    ids = torch.tensor([5, 1, 33, 8, 2])
    torch.testing.assert_close(cached.encoder.encode(ids), plain.encoder.encode(ids), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached.encoder.encode_all(), plain.encoder.encode_all(), atol=1e-5, rtol=1e-5)
    fresh = cached.encoder.encode(ids)
    fresh.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in cached.backbone.adapters.parameters())


def test_frozen_prefix_is_only_used_where_it_is_exact(small_synth_dir, tmp_path):
    m = _model(small_synth_dir, tmp_path, adapters=["none", "serial"], item_vector="align")
    assert m.encoder.prefix is None  # the [ALIGN] state below the cut depends on its trainable embedding
    with pytest.raises(ConfigError, match="item_vector 'mean'"):
        m.encoder.enable_frozen_prefix(1)
    assert _model(small_synth_dir, tmp_path, adapters=["none", "serial"], item_vector="mean").encoder.prefix is not None
    assert _model(small_synth_dir, tmp_path, adapters=["serial", "none"], item_vector="mean").encoder.prefix is None


def test_item_adapters_off_encodes_with_the_frozen_backbone_once(small_synth_dir, tmp_path):
    on = _model(small_synth_dir, tmp_path)
    off = _model(small_synth_dir, tmp_path, item_adapter_layers=0, max_fresh_items=0)
    load_adapter_state_dict(off.backbone, adapter_state_dict(on.backbone))
    frozen = on.encoder.encode_all()  # identity adapters at init: the frozen backbone
    _perturb_adapters(on)
    _perturb_adapters(off)
    assert not torch.allclose(on.encoder.encode_all(), frozen, atol=1e-4)
    torch.testing.assert_close(off.encoder.encode_all(), frozen, atol=1e-6, rtol=1e-6)
    off.refresh_cache()
    built = off.sem_cache.clone()
    with torch.no_grad():
        off.backbone.special_embeddings.add_(1.0)
    off.refresh_cache()  # nothing at the item level trains: the cache is not rebuilt
    assert off.item_level_frozen and torch.equal(off.sem_cache, built)
    seq = torch.tensor([[0, 2, 5, 9]])
    assert not torch.allclose(off.sequence_states(seq, off.sem_cache), _model(small_synth_dir, tmp_path, item_adapter_layers=0,
                              max_fresh_items=0).sequence_states(seq, off.sem_cache), atol=1e-4)  # the sequence level adapts


def test_top_item_adapter_layers_only_are_exact_and_cached(small_synth_dir, tmp_path):
    """``item_adapter_layers: 1`` of 3: the item level equals a model whose lower adapters are absent, and layers
    below the top one are computed once."""
    kw = dict(backbone={"tiny_layers": 3}, item_vector="mean")
    top = _model(small_synth_dir, tmp_path, adapters="serial", item_adapter_layers=1, **kw)
    ref = _model(small_synth_dir, tmp_path, adapters=["none", "none", "serial"], frozen_prefix=False, **kw)
    assert top.encoder.prefix is not None and top.encoder.prefix.cut == 2
    _perturb_adapters(top)
    with torch.no_grad():
        for (n, p) in ref.backbone.adapters[2].named_parameters():
            p.copy_(dict(top.backbone.adapters[2].named_parameters())[n])
    torch.testing.assert_close(top.encoder.encode_all(), ref.encoder.encode_all(), atol=1e-5, rtol=1e-5)
    seq = torch.tensor([[0, 2, 5, 9]])
    assert not torch.allclose(top.sequence_states(seq, top.sem_cache), ref.sequence_states(seq, top.sem_cache), atol=1e-4)
