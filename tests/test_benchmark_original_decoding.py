"""`scripts/benchmark.py`'s row for the original implementation's decoding: no KV cache, same captions."""

import importlib.util
from pathlib import Path

import torch

from transformers_blap import BlapForConditionalGeneration

from blap_testing import RATE, tone
from tiny import tiny_config, tiny_processor

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_original_decoding_row_re_decodes_the_prefix_and_gives_the_baseline_captions(t5_tokenizer_dir):
    benchmark = _benchmark_module()
    variants = {variant.name: variant for variant in benchmark.generation_variants(batch=2, with_compile=False)}
    original, baseline = variants[benchmark.ORIGINAL_DECODING], variants["baseline: fp32 eager, 1 clip, T5 generate"]
    assert (original.use_cache, original.blap_generate, original.batch_size) == (False, False, 1)

    torch.manual_seed(0)
    model = BlapForConditionalGeneration(tiny_config()).eval()
    benchmark.set_attention(model, "eager")
    inputs = tiny_processor(t5_tokenizer_dir)(audio=[tone(1.0, seed=1), tone(1.0, seed=2)], sampling_rate=RATE)
    options = {"num_beams": 3, "max_new_tokens": 6, "min_new_tokens": 6}

    decoder_lengths = []
    hook = model.language_model.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: decoder_lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    ids = {}
    for variant in (baseline, original):
        decoder_lengths.clear()
        ids[variant.name] = benchmark.caption(model, variant, inputs["input_features"], inputs["input_ids"], **options)
        steps = decoder_lengths[:6]  # the first clip's steps
        assert steps == ([1] * 6 if variant.use_cache else [1, 2, 3, 4, 5, 6]), (variant.name, steps)
    hook.remove()
    assert torch.equal(ids[original.name], ids[baseline.name])


def test_speedup_over_the_original_is_reported_in_both_tables():
    benchmark = _benchmark_module()
    rows = [
        {"section": "generate (base)", "variant": benchmark.ORIGINAL_DECODING, "speedup_over_original": 1.0},
        {"section": "generate (base)", "variant": "optimised fp32, batch 1", "speedup_over_original": 5.2},
        {"section": "bf16 vs fp32 (fixture)", "variant": "16 clips", "captions_equal_fp32_share": 0.25},
    ]
    assert "x5.20 over the original's decoding" in benchmark.format_table(rows)
    assert "bf16 = fp32 on 25% of the captions" in benchmark.format_table(rows)
    markdown = benchmark.format_markdown(rows)
    assert "| speed-up over the original's decoding |" in markdown and "| x5.20 |" in markdown
    assert "| captions = fp32 |" in markdown and "| 25% |" in markdown
