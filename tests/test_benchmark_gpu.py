"""`scripts/benchmark_gpu.py` on CPU with a tiny model: the figures it reports for accelerators are computed right."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from transformers_blap import BlapForConditionalGeneration

from tiny import TINY_TEXT, tiny_config

pytest.importorskip("bitsandbytes", reason="the `quantization` extra: pip install -e '.[quantization]'")
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_gpu.py"


def _script():
    spec = importlib.util.spec_from_file_location("benchmark_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decode_step_bytes_counts_decoder_weights_head_and_caches():
    torch.manual_seed(0)
    model = BlapForConditionalGeneration(tiny_config())
    state = model.state_dict()
    read = ("language_model.decoder.block.", "language_model.decoder.final_layer_norm.", "language_model.lm_head.")
    weights = sum(tensor.numel() * 4 for key, tensor in state.items() if key.startswith(read))
    per_position = 2 * TINY_TEXT["num_decoder_layers"] * TINY_TEXT["num_heads"] * TINY_TEXT["d_kv"] * 4
    encoder_length = model.config.num_query_tokens + 18  # queries + the release's prompt
    clips, beams, tokens = 3, 4, 9
    expected = weights + clips * encoder_length * per_position + clips * beams * (tokens + 1) / 2 * per_position
    assert _script().decode_step_bytes(model, clips, beams, tokens) == int(expected)


def test_cpu_run_reports_every_variant(tmp_path):
    torch.manual_seed(0)
    BlapForConditionalGeneration(tiny_config()).save_pretrained(tmp_path / "blap")
    argv = ["--checkpoint", str(tmp_path / "blap"), "--device", "cpu", "--dtype", "float32", "--clips", "2"]
    argv += ["--beams", "2", "--new-tokens", "3", "--repeats", "1", "--variants", "full", "8bit"]
    results = _script().main([*argv, "--output", str(tmp_path / "results.json")])
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(results))
    full, int8 = results["rows"]
    assert full["variant"] == "float32" and int8["variant"].startswith("8bit")
    for row in (full, int8):  # timings are reported, not asserted: a tiny model's steps are within the noise
        assert {"captions_per_s", "decode_step_ms", "decode_gb_per_s", "bandwidth_fraction", "load_s"} <= row.keys()
        assert row["device_memory_peak_gib"] is None  # device memory is read on CUDA only
    assert int8["weights_gib"] < full["weights_gib"]
    assert int8["decode_step_bytes"] < full["decode_step_bytes"]
    assert results["environment"]["copy_bandwidth_gb_per_s"] > 0
