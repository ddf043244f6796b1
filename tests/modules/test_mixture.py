"""The ``mixture`` adapter: identity at init, a per-token router, exact reduction to each expert, the balance term,
and that DARec trains with it."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from darec.data.datamodules.base import RecDataModule
from darec.data.datamodules.sequence import SequenceDataModule
from darec.data.synth import SynthConfig, write_synthetic
from darec.modules.adapters import adapter_params, apply_adapters, registered_adapters
from darec.modules.backbone import BackboneConfig, load_backbone
from darec.modules.darec import DARec
from darec.modules.mixture import EXPERTS, MixtureContainer, Router, balance_loss
from darec.modules.popularity import Popularity
from darec.modules.text import pack_items, tokenize_sentences

TINY = ["tiny-bert", "tiny-gpt2", "tiny-llama"]
SENTS = ["title: Toy Story; year: 1995", "title: Heat; year: 1995; genres: Action", "title: Babe", "title: Casino"]
# the single-type adapter each expert equals, with the mixture's size 16 (LoRA rank 16 // 8)
SINGLE = {"serial": "serial:16", "parallel": "parallel:16", "lora": "lora:2"}
# mixture parameter name (inside a layer's container) -> the single type's name for the same tensor
RENAME = {"serial": {"attn.expert.": "attn.", "ffn.expert.": "ffn."}, "parallel": {"parallel.expert.": "ffn."},
          "lora": {".expert.": "."}}


def _backbone(name, adapters):
    bb = load_backbone(BackboneConfig(name=name, attn_implementation="sdpa")).eval()
    apply_adapters(bb, adapters)
    return bb


def _encode(bb):
    toks = tokenize_sentences(SENTS, bb.tokenizer)
    packed = pack_items(toks, list(range(1, len(SENTS) + 1)), bb.align_id, 48)
    return bb.encode_segments(packed.input_ids, packed.segment_ids, packed.position_ids)


def _randomise(bb):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in adapter_params(bb).values():
            p.normal_(0.0, 0.1)


def test_mixture_is_registered():
    assert "mixture" in registered_adapters()


@pytest.mark.parametrize("name", TINY)
def test_mixture_starts_as_the_frozen_layer(name):
    plain = _backbone(name, "none")
    mixed = _backbone(name, "mixture:16")
    with torch.no_grad():
        assert torch.allclose(_encode(plain), _encode(mixed), atol=1e-6)


@pytest.mark.parametrize("name", TINY)
def test_router_gates_are_per_token_and_sum_to_one(name):
    bb = _backbone(name, "mixture:16")
    _randomise(bb)
    with torch.no_grad():
        _encode(bb)
    for container in bb.adapters:
        gates = container.router.gates
        assert gates.shape[-1] == len(EXPERTS)
        assert torch.allclose(gates.sum(-1), torch.ones(gates.shape[:-1]), atol=1e-6)
        flat = gates.reshape(-1, len(EXPERTS))
        assert float(flat.std(0).min()) > 1e-3  # tokens get different gates


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("expert", EXPERTS)
def test_a_one_hot_router_gives_exactly_that_expert(name, expert):
    """With every token routed to one expert, the mixture layer computes what that adapter type computes alone."""
    mixed = _backbone(name, "mixture:16")
    _randomise(mixed)
    single = _backbone(name, SINGLE[expert])
    with torch.no_grad():
        for mix_c, one_c in zip(mixed.adapters, single.adapters):
            mix_c.router.proj.weight.zero_()
            mix_c.router.proj.bias.copy_(torch.tensor([1e4 if e == expert else 0.0 for e in EXPERTS]))
            own = one_c.adapter_params()
            copied = 0
            for key, p in mix_c.adapter_params().items():
                target = key
                for old, new in RENAME[expert].items():
                    target = target.replace(old, new)
                if target != key and target in own:
                    own[target].copy_(p)
                    copied += 1
            assert copied == len(own), (sorted(own), sorted(mix_c.adapter_params()))
        out_mixed, out_single = _encode(mixed), _encode(single)
        frozen = _encode(_backbone(name, "none"))
    assert not torch.allclose(out_single, frozen, atol=1e-3)  # the expert does change the output
    assert torch.allclose(out_mixed, out_single, atol=1e-5), (out_mixed - out_single).abs().max()


def test_balance_term_is_one_when_spread_and_e_when_collapsed():
    spread = torch.eye(3).repeat(4, 1)  # 12 tokens, 4 per expert, each fully routed
    assert float(balance_loss(spread)) == pytest.approx(1.0)
    collapsed = torch.tensor([[1.0, 0.0, 0.0]]).repeat(12, 1)
    assert float(balance_loss(collapsed)) == pytest.approx(3.0)
    soft = torch.tensor([[0.6, 0.3, 0.1]]).repeat(12, 1)  # all tokens pick expert 0, mean gate 0.6
    assert float(balance_loss(soft)) == pytest.approx(3 * 0.6)


def test_the_balance_term_spreads_a_collapsed_router():
    torch.manual_seed(0)
    router = Router(hidden_size=8)
    with torch.no_grad():
        router.proj.bias.copy_(torch.tensor([3.0, 0.0, 0.0]))
    x = torch.randn(64, 8)
    opt = torch.optim.SGD(router.parameters(), lr=0.5)
    before = router.route(x).detach().mean(0)
    for _ in range(100):
        router.route(x.clone())
        opt.zero_grad()
        router.balance.backward()
        opt.step()
    after = router.route(x.clone()).detach().mean(0)
    assert before[0] > 0.85
    assert after[0] < 0.5 and float(after.min()) > 0.15, (before, after)
    assert float(balance_loss(router.gates.detach())) < float(balance_loss(torch.tensor([[0.9, 0.05, 0.05]]))) - 0.5


def test_the_router_routes_once_per_input_and_does_not_keep_the_input_alive():
    import weakref

    router = Router(hidden_size=8)
    x = torch.randn(2, 5, 8)
    gates = router.route(x)
    assert router.route(x) is gates  # the same input: the other experts reuse its gates
    y = x.clone()
    assert router.route(y) is not gates and torch.equal(router.route(y), gates)
    router.route(x)
    router.balance.backward()  # after the backward pass nothing needs the input any more
    alive = weakref.ref(x)
    del x, gates
    assert alive() is None  # the router does not hold the layer's last input
    gates = router.gates.detach()
    z = torch.randn(2, 5, 8)
    assert not torch.equal(router.route(z), gates)


def test_an_expert_running_before_the_router_is_a_clear_error():
    router = Router(hidden_size=8)
    with pytest.raises(RuntimeError, match="before the router"):
        router.current(torch.randn(2, 5, 8))


SYNTH = SynthConfig(num_users=600, num_items=60, num_clusters=4, stay_prob=0.85, next_prob=0.15, min_len=10, max_len=20)


def test_darec_trains_with_mixture_adapters(tmp_path):
    """DARec with a mixture in every layer learns (beats popularity by far), every expert and the router train,
    the balance term is part of the loss, and no expert is left without tokens."""
    data = tmp_path / "data"
    write_synthetic(data, SYNTH)
    L.seed_everything(1)
    dm = SequenceDataModule(str(data), batch_size=32, eval_batch_size=256, max_len=20, num_negatives=0)
    m = DARec(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint,
              backbone=BackboneConfig(name="tiny-llama", tiny_hidden=64), adapters="mixture:16", max_len=20,
              lr=1e-3, cache_dir=str(tmp_path / "cache"))
    assert all(isinstance(c, MixtureContainer) for c in m.backbone.adapters)
    start = {k: v.detach().clone() for k, v in adapter_params(m.backbone).items()}
    logged: list[float] = []

    class Balance(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            logged.append(float(trainer.callback_metrics["train/balance"]))

    trainer = L.Trainer(max_epochs=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, check_val_every_n_epoch=8,
                        callbacks=[Balance()])
    trainer.fit(m, datamodule=dm)
    val = float(trainer.callback_metrics["val/ndcg@10"])
    pop = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False).validate(
        Popularity(num_items=dm.num_items), datamodule=RecDataModule(str(data), eval_batch_size=256), verbose=False)[0]
    assert val > pop["val/ndcg@10"] + 0.1, (val, pop)
    moved = {k for k, v in adapter_params(m.backbone).items() if not torch.equal(v.detach(), start[k])}
    assert moved == set(start)  # every expert of every layer and every router trained
    # 0.01 x balance; balance is about 1 when spread (a little less when the gates are soft) and 3 when collapsed
    assert logged and all(0.009 <= b <= 0.03 + 1e-6 for b in logged)
    assert max(logged[-20:]) < 0.015  # and it stays spread
    for c in m.backbone.adapters:
        assert float(c.gate_means().min()) > 0.05, c.gate_means()
