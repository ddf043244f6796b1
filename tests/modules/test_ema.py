"""WeightEma, and DARec evaluated, checkpointed and reloaded with averaged weights (``ema``)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from darec.data.datamodules.sequence import SequenceDataModule
from darec.errors import ConfigError
from darec.modules.backbone import BackboneConfig
from darec.modules.darec import DARec
from darec.modules.ema import WeightEma


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    net[1].bias.requires_grad_(False)
    return net


def test_shadows_follow_the_warmed_up_average_of_the_trainable_weights_only():
    net = _net()
    ema = WeightEma(net, 0.9)
    assert ema.names == ["0.weight", "0.bias", "1.weight"]  # the frozen bias is not averaged
    expected = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    for step in range(1, 6):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ema.update()
        d = min(0.9, (1 + step) / (10 + step))
        for n, p in net.named_parameters():
            if p.requires_grad:
                expected[n] = d * expected[n] + (1 - d) * p.detach()
    assert int(ema.updates) == 5
    for n in ema.names:
        torch.testing.assert_close(ema.shadow(n), expected[n])
    assert {k for k in ema.state_dict()} == {ema.key(n) for n in ema.names} | {"updates"}


def test_a_warmup_of_two_averages_every_step_so_far_equally_the_start_counted_twice():
    net = _net()
    ema = WeightEma(net, 0.999, warmup=2)
    seen = {n: [p.detach().clone(), p.detach().clone()] for n, p in net.named_parameters() if p.requires_grad}
    for _ in range(7):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ema.update()
        for n in seen:
            seen[n].append(net.get_parameter(n).detach().clone())
    for n in ema.names:
        torch.testing.assert_close(ema.shadow(n), torch.stack(seen[n]).mean(0))
    default = WeightEma(_net(), 0.999)
    assert default.warmup == 10.0


def test_use_and_restore_swap_exactly_and_are_idempotent():
    net = _net()
    ema = WeightEma(net, 0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)
    ema.update()
    trained = {n: p.detach().clone() for n, p in net.named_parameters()}
    ema.use()
    ema.use()
    assert ema.in_use
    for n in ema.names:
        assert torch.equal(net.get_parameter(n), ema.shadow(n))
    assert torch.equal(net[1].bias, trained["1.bias"])  # untouched
    assert set(ema.trained_state("m.")) == {f"m.{n}" for n in ema.names}
    with pytest.raises(RuntimeError, match="restore"):
        ema.update()
    ema.restore()
    ema.restore()
    for n, p in net.named_parameters():
        assert torch.equal(p, trained[n])
    assert ema.trained_state() == {}


def test_decay_outside_the_open_interval_and_a_warmup_of_one_or_less_are_refused():
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="ema"):
            WeightEma(_net(), bad)
    for bad in (1.0, 0.5, -3.0):
        with pytest.raises(ConfigError, match="ema_warmup must be above 1"):
            WeightEma(_net(), 0.9, warmup=bad)


def test_darec_evaluates_and_reloads_with_the_averaged_weights_and_trains_its_own(small_synth_dir, tmp_path):
    dm = SequenceDataModule(str(small_synth_dir), batch_size=16, eval_batch_size=64, max_len=12, num_negatives=0)
    kw = dict(num_items=dm.num_items, num_users=dm.num_users, data_fingerprint=dm.fingerprint,
              backbone=BackboneConfig(name="tiny-bert"), max_len=12, cache_dir=str(tmp_path), lr=3e-3)
    torch.manual_seed(0)
    m = DARec(ema=0.8, ema_warmup=3.0, **kw)
    assert m.ema.warmup == 3.0
    trainer = L.Trainer(max_epochs=2, limit_train_batches=4, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    trainer.fit(m, datamodule=dm)
    assert int(m.ema.updates) == 8 and not m.ema.in_use  # back to the trained weights after each validation
    trained = {n: m.get_parameter(n).detach().clone() for n in m.ema.names}
    averaged = {n: m.ema.shadow(n).clone() for n in m.ema.names}
    assert any(not torch.allclose(trained[n], averaged[n]) for n in m.ema.names)

    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    blob = torch.load(ckpt, weights_only=False)
    for n in m.ema.names:  # the checkpoint holds the trained values and their average
        assert torch.equal(blob["state_dict"][n], trained[n]), n

    # the validation figure is that of a plain DARec holding the averaged weights
    got = L.Trainer(logger=False, enable_progress_bar=False).validate(m, datamodule=dm, verbose=False)[0]
    plain = DARec(**kw)
    plain.load_state_dict({**{k: v for k, v in m.state_dict().items() if not k.startswith("ema.")}, **averaged},
                          strict=False)
    plain.inputs_calibrated.fill_(True)
    want = L.Trainer(logger=False, enable_progress_bar=False).validate(plain, datamodule=dm, verbose=False)[0]
    assert got["val/ndcg@10"] == pytest.approx(want["val/ndcg@10"], abs=1e-6)
    m.train()
    for n in m.ema.names:
        assert torch.equal(m.get_parameter(n), trained[n]), n

    loaded = DARec.load_from_checkpoint(ckpt)
    assert loaded.ema.warmup == 3.0
    again = L.Trainer(logger=False, enable_progress_bar=False).validate(loaded, datamodule=dm, verbose=False)[0]
    assert again["val/ndcg@10"] == pytest.approx(got["val/ndcg@10"], abs=1e-6)
    loaded.train()
    for n in m.ema.names:
        assert torch.equal(loaded.get_parameter(n), trained[n]), n
