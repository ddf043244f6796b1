"""The GPU step benchmark runs end to end on CPU with the tiny config and writes its JSON."""

import json


def test_gpu_step_tiny_cpu(tmp_path, benchmark_script):
    module = benchmark_script("gpu_step")
    out = tmp_path / "gpu_step.json"
    result = module.main(["--tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    for key in ("device", "torch", "transformers", "command", "git_commit", "tokens_per_s", "step_time_s",
                "peak_memory_bytes", "achieved_flops_6N", "achieved_flops_4N", "mfu_6N", "mfu_4N", "flops_formula"):
        assert key in saved, key
    from darec.modules.backbone import CPU_FLOAT32_SDPA

    assert saved["attn_implementation"] == CPU_FLOAT32_SDPA  # sdpa, in float32 under bfloat16 autocast on a CPU
    assert saved["tokens_per_step"] == saved["item_tokens"] + saved["sequence_positions"]
    assert saved["tokens_per_s"] > 0 and saved["mfu_6N"] is None
    assert len(saved["losses"]) == 2 and all(x == x for x in saved["losses"])
    assert module.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert module.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert module.peak_flops("Tesla T4") is None


def test_gpu_darec_module_step_tiny_cpu(tmp_path, benchmark_script):
    module = benchmark_script("gpu_darec_step")
    out = tmp_path / "gpu_darec_step.json"
    result = module.main(["--tiny", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["device_type"] == "cpu" and saved["tokens_per_s"] > 0 and saved["mfu_6N"] is None
    assert saved["config"]["catalogue"] == 100 and len(saved["losses"]) == 2
    assert all(x == x for x in saved["losses"]) and result["model"]["trainable_params"] > 0
