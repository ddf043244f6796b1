"""benchmarks/cross_fit.py: fold encoders train as the full SASRec did, on the other folds' users only."""

from __future__ import annotations

import json

import torch

from darec.data.dataset import PreparedData
from darec.modules.cf import export_module, load_cf_embeddings
from darec.modules.sasrec import SASRec


def test_full_training_reads_the_stride_and_mask_the_full_sasrec_trained_with(benchmark_script, tmp_path) -> None:
    cross_fit = benchmark_script("cross_fit")
    for name, meta, want in (
        ("sasrec_L100_p25_s0", {"config": {"model": {"mask_seen": True}, "data": {"stride": 25}}}, {"stride": 25, "mask_seen": True}),
        ("sasrec_L50_p11_s0", {"spec": {}}, {"stride": None, "mask_seen": False}),  # before configurations were recorded
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "meta.json").write_text(json.dumps(meta))
        assert cross_fit.full_training(tmp_path, name) == want


def test_a_fold_encoder_keeps_the_full_item_table_and_masking_seen_items_changes_its_loss(
        benchmark_script, small_synth_dir, tmp_path) -> None:
    cross_fit = benchmark_script("cross_fit")
    data = PreparedData(small_synth_dir)
    torch.manual_seed(0)
    full_model = SASRec(data.num_items, data.num_users, data.fingerprint, hidden_size=16, inner_size=32, max_len=12)
    full = load_cf_embeddings(export_module(full_model.eval(), data, tmp_path / "full.safetensors"), data.fingerprint)
    runs = {mask: cross_fit.train_fold_encoder(data, full, 2, 0, seed=0, patience=5, max_epochs=2, stride=6, mask_seen=mask)
            for mask in (False, True)}
    for enc, curve in runs.values():
        assert torch.equal(enc.item_embedding.weight, full.item_emb.float())
        assert not enc.item_embedding.weight.requires_grad
        assert len(curve) == 2 and all(torch.isfinite(torch.tensor(c["train_loss"])) for c in curve)
    # the same windows and initialisation: leaving a window's items out of the softmax lowers the first epoch's loss
    assert runs[True][1][0]["train_loss"] < runs[False][1][0]["train_loss"]
