"""Adapter registry, injection, identity at init, trainability, state dicts and custom types."""

import io
from pathlib import Path

import pytest
import torch

from darec.modules.text import pack_items, pad_items, tokenize_sentences
from darec.errors import ConfigError
from darec.modules.adapters import (
    adapter_params,
    adapter_state_dict,
    AdapterChoice,
    apply_adapters,
    count_trainable,
    load_adapter_state_dict,
    mark_only_adapters_trainable,
    parse_assignment,
    registered_adapters,
)
from darec.modules.backbone import BackboneConfig, load_backbone

TINY = ["tiny-bert", "tiny-gpt2", "tiny-llama"]
SENTS = [
    "title: Toy Story; year: 1995; genres: Animation, Children's, Comedy",
    "title: Heat; year: 1995; genres: Action, Crime, Thriller",
    "title: Sabrina; year: 1995; genres: Comedy, Romance",
    "title: Casino; year: 1995; genres: Drama, Thriller",
    "title: Babe; year: 1995",
]


def _fresh(name, attn="sdpa", **kw):
    return load_backbone(BackboneConfig(name=name, attn_implementation=attn, **kw)).eval()


def _batch(bb, pack_len=48):
    toks = tokenize_sentences(SENTS, bb.tokenizer)
    return pack_items(toks, list(range(1, len(SENTS) + 1)), bb.align_id, pack_len), toks


def _encode(bb, packed):
    return bb.encode_segments(packed.input_ids, packed.segment_ids, packed.position_ids)


def _randomise(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_params(module).values():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("kind", ["none", "serial", "parallel", "lora"])
def test_adapters_start_as_identity(name, kind):
    bb = _fresh(name)
    packed, _ = _batch(bb)
    with torch.no_grad():
        before = _encode(bb, packed)
        apply_adapters(bb, kind)
        after = _encode(bb, packed)
    assert torch.equal(before, after)
    assert len(bb.adapters) == bb.num_layers
    assert (count_trainable(bb.adapters) == 0) == (kind == "none")
    if kind != "none":
        _randomise(bb)
        with torch.no_grad():
            assert not torch.allclose(_encode(bb, packed), before)


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama"])
def test_packed_equals_alone_with_trained_adapters(name):
    bb = _fresh(name, attn="eager")
    apply_adapters(bb, ["serial:8", {"type": "lora", "size": 4}])
    _randomise(bb)
    packed, toks = _batch(bb)
    alone = pad_items(toks, list(range(1, len(SENTS) + 1)), bb.align_id)
    with torch.no_grad():
        hp, ha = _encode(bb, packed), _encode(bb, alone)
    pr, pc = packed.align_index.T
    torch.testing.assert_close(hp[pr, pc], ha[alone.align_index[:, 0], alone.align_index[:, 1]], atol=1e-5, rtol=0)


def test_lora_on_gpt2_conv1d_matches_manual_update():
    bb = _fresh("tiny-gpt2")
    conv = bb.layers[0].attn.c_attn
    x = torch.randn(2, 3, bb.hidden_size)
    with torch.no_grad():
        base = conv(x)
    apply_adapters(bb, "lora:4")
    _randomise(bb)
    delta = bb.adapters[0].lora["attn__c_attn"]
    wrapped = bb.layers[0].attn.c_attn
    assert wrapped.base_layer is conv and wrapped.weight is conv.weight
    manual = base + x @ delta.lora_A.weight.T @ delta.lora_B.weight.T * delta.scaling
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), manual)
    assert delta.lora_B.weight.shape == (3 * bb.hidden_size, 4)


def test_only_adapters_and_special_tokens_train_and_vocab_is_untouched():
    bb = _fresh("tiny-llama")
    apply_adapters(bb, ["serial:8", "parallel:8"])
    n = mark_only_adapters_trainable(bb)
    trainable = {k for k, p in bb.named_parameters() if p.requires_grad}
    assert trainable == set(adapter_params(bb)) | {"special_embeddings"}
    assert n == count_trainable(bb) == sum(p.numel() for p in adapter_params(bb).values()) + 2 * bb.hidden_size
    vocab = bb.word_embeddings.weight.detach().clone()
    special = bb.special_embeddings.detach().clone()
    up = bb.adapters[0].attn.up.weight.detach().clone()
    opt = torch.optim.AdamW([p for p in bb.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    packed, _ = _batch(bb)
    states = _encode(bb, packed)
    loss = states[packed.align_index[:, 0], packed.align_index[:, 1]].pow(2).sum()
    loss.backward()
    assert bb.special_embeddings.grad is not None and bb.special_embeddings.grad.abs().sum() > 0
    opt.step()
    assert torch.equal(bb.word_embeddings.weight, vocab)
    assert not torch.equal(bb.special_embeddings, special)
    assert not torch.equal(bb.adapters[0].attn.up.weight, up)


def test_adapter_state_dict_round_trip_and_mismatch():
    src = _fresh("tiny-gpt2")
    apply_adapters(src, ["serial:8", "lora:4"])
    _randomise(src)
    buf = io.BytesIO()
    torch.save(adapter_state_dict(src), buf)
    state = torch.load(io.BytesIO(buf.getvalue()))
    assert all(k.startswith("adapters.") for k in state)
    dst = _fresh("tiny-gpt2")
    apply_adapters(dst, ["serial:8", "lora:4"])
    load_adapter_state_dict(dst, state)
    packed, _ = _batch(src)
    with torch.no_grad():
        assert torch.equal(_encode(src, packed), _encode(dst, packed))
    for other in (["serial:4", "lora:4"], ["lora:4", "serial:8"], "parallel:8", ["serial:8", "lora"]):
        bad = _fresh("tiny-gpt2")
        apply_adapters(bad, other)
        with pytest.raises(ConfigError, match="do not match"):
            load_adapter_state_dict(bad, state)


def test_weights_hash_ignores_adapter_wrapping():
    bb = _fresh("tiny-bert")
    before = bb.identity()["weights_sha256"]
    bb._sha256 = None
    apply_adapters(bb, "lora:2")
    assert bb.identity()["weights_sha256"] == before


def test_parse_assignment_forms_and_errors():
    assert parse_assignment("lora:8", 3) == [AdapterChoice("lora", 8)] * 3
    got = parse_assignment(["none", "serial:16", {"type": "parallel", "size": 4}], 3)
    assert got == [AdapterChoice("none"), AdapterChoice("serial", 16), AdapterChoice("parallel", 4)]
    with pytest.raises(ConfigError, match="serial"):
        parse_assignment(["serial"], 2)
    with pytest.raises(ConfigError, match="registered"):
        parse_assignment("houlsby", 2)
    with pytest.raises(ConfigError):
        parse_assignment("lora:x", 2)
    with pytest.raises(ConfigError):
        parse_assignment({"type": "lora", "size": 0}, 2)


def test_apply_twice_is_refused():
    bb = _fresh("tiny-bert")
    apply_adapters(bb, "serial")
    with pytest.raises(ConfigError, match="already"):
        apply_adapters(bb, "lora")


@pytest.mark.parametrize("name", TINY)
def test_skip_leaves_the_layer_out_of_the_pass(name):
    bb = _fresh(name, tiny_layers=3)
    ref = _fresh(name, tiny_layers=3)  # same seed: the same frozen weights
    sha = ref.frozen_weights_sha256()
    apply_adapters(bb, ["serial:4", "skip", "none"])
    apply_adapters(ref, ["serial:4", "none", "none"])
    del ref.layers[1]  # the reference: the same model without its middle layer
    _randomise(bb)
    ref.adapters[0].load_state_dict(bb.adapters[0].state_dict())
    packed, _ = _batch(bb)
    with torch.no_grad():
        torch.testing.assert_close(_encode(bb, packed), _encode(ref, packed), atol=1e-6, rtol=1e-6)
    assert bb.adapters[1].adapter_type == "skip" and count_trainable(bb.adapters[1]) == 0
    assert bb.frozen_weights_sha256() == sha  # the skipped layer's frozen weights stay in the backbone's identity
    with pytest.raises(ConfigError, match="takes no size"):
        apply_adapters(_fresh(name), "skip:8")


def test_frozen_types_are_none_and_skip():
    from darec.modules.adapters import is_frozen_type
    from darec.modules.frozen_prefix import first_adapted_layer

    assert [is_frozen_type(t) for t in ("none", "skip", "serial", "parallel", "lora", "mixture")] == [
        True, True, False, False, False, False]
    assert first_adapted_layer(parse_assignment(["skip", "none", "lora", "skip"], 4)) == 2
    assert first_adapted_layer(parse_assignment("skip", 3)) == 3


def test_custom_adapter_by_class_path(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    path = "custom_adapter_example.ChannelScaleAdapter"
    bb = _fresh("tiny-llama")
    packed, _ = _batch(bb)
    with torch.no_grad():
        before = _encode(bb, packed)
    apply_adapters(bb, [path, "serial:4"])
    assert path in registered_adapters()
    assert {"none", "skip", "serial", "parallel", "lora"} <= set(registered_adapters())
    assert bb.adapters[0].adapter_type == path
    with torch.no_grad():
        assert torch.equal(_encode(bb, packed), before)
    mark_only_adapters_trainable(bb)
    assert bb.adapters[0].scale.scale.requires_grad
    with pytest.raises(ConfigError, match="cannot import"):
        parse_assignment("custom_adapter_example.Missing", 1)


def test_bf16_backbone_with_fp32_adapters():
    bb = _fresh("tiny-llama", dtype="bfloat16")
    apply_adapters(bb, "serial:8")
    mark_only_adapters_trainable(bb)
    assert bb.adapters[0].attn.up.weight.dtype == torch.float32
    packed, _ = _batch(bb)
    out = _encode(bb, packed)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert bb.adapters[0].attn.up.weight.grad is not None


def test_a_path_inside_a_wrapped_module_is_wrapped_inside_it():
    """Wrapping ``block`` and then ``block.dense`` (the mixture adapter does this in BERT's feed-forward output):
    both adapters run; the second is not left on the outer wrapper where nothing calls it."""
    from torch import nn

    from darec.modules.adapters import wrap_output

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(4, 4)

        def forward(self, x):
            return self.dense(x)

    class Add(nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, x):
            return torch.full_like(x, self.value)

    layer = nn.Module()
    layer.block = Block()
    x = torch.randn(2, 4)
    with torch.no_grad():
        ref = layer.block(x)
        wrap_output(layer, "block", Add(1.0), mode="residual")
        wrap_output(layer, "block.dense", Add(10.0), mode="residual")
        assert torch.allclose(layer.block(x), ref + 11.0)
