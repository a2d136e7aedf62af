"""What the speed work must not change: captions, gradients, and what is computed once per clip."""

import copy
import importlib.util
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GenerationConfig
from transformers.cache_utils import DynamicLayer

from transformers_blap import BlapForConditionalGeneration
from transformers_blap.modeling_blap import (
    BEAM_GROUPED_SDPA,
    CACHE_ARGUMENT,
    BlapBeamSearchCache,
    BlapBufferedLayer,
)

from tiny import TINY_QFORMER, TINY_TEXT, tiny_config, tiny_processor

REPO_ROOT = Path(__file__).resolve().parents[1]
NO_DROPOUT = {
    "qformer_config": {**TINY_QFORMER, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    "text_config": {**TINY_TEXT, "dropout_rate": 0.0},
}


def _model(seed: int = 0, attn_implementation: str | None = None, **overrides) -> BlapForConditionalGeneration:
    torch.manual_seed(seed)
    model = BlapForConditionalGeneration(tiny_config(**overrides))
    if attn_implementation is not None:
        model.set_attn_implementation({"text_config": attn_implementation, "qformer_config": attn_implementation})
    return model.eval()


def _cache(output):
    """The cache of a `generate(..., return_dict_in_generate=True)` output (`cache` from transformers 5.25 on)."""
    return getattr(output, CACHE_ARGUMENT)


def _clips(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.2 * rng.standard_normal(16_000)).astype(np.float32) for _ in range(n)]


def _plain_generate(
    model: BlapForConditionalGeneration, inputs: dict, generation_config: GenerationConfig | None = None, **kwargs
) -> torch.LongTensor:
    """BLAP generation as transformers does it unaided: the T5 gets the inputs embeddings and does the rest."""
    language_model_inputs = model.language_projection(
        model.get_qformer_features(input_features=inputs["input_features"]).last_hidden_state
    )
    inputs_embeds, attention_mask = model._language_model_inputs(
        language_model_inputs, inputs["input_ids"], inputs["attention_mask"]
    )
    generation_config = copy.deepcopy(generation_config or model.generation_config)
    model_kwargs = generation_config.update(**kwargs)
    return model.language_model.generate(
        inputs_embeds=inputs_embeds, attention_mask=attention_mask, generation_config=generation_config, **model_kwargs
    )


@pytest.fixture(scope="module")
def processor(t5_tokenizer_dir):
    return tiny_processor(t5_tokenizer_dir)


@pytest.mark.parametrize(
    "options",
    [
        {"num_beams": 10, "max_new_tokens": 12, "min_new_tokens": 12},
        {"num_beams": 4, "max_new_tokens": 10, "min_length": 2, "repetition_penalty": 1.5, "length_penalty": 0.5},
        {"num_beams": 3, "num_return_sequences": 3, "max_new_tokens": 6, "min_length": 0, "early_stopping": True},
    ],
)
def test_beam_search_with_cross_attention_computed_once_per_clip_equals_plain_generation(processor, options):
    model = _model(seed=1)
    prompts = ["Generate an objective music description.", "Describe it.", "A"]  # padded to different lengths
    inputs = processor(audio=_clips(3), sampling_rate=16_000, text=prompts)
    with torch.no_grad():
        expected = _plain_generate(model, inputs, return_dict_in_generate=True, output_scores=True, **options)
    actual = model.generate(**inputs, return_dict_in_generate=True, output_scores=True, **options)
    assert isinstance(_cache(actual), BlapBeamSearchCache)
    assert torch.equal(actual.sequences, expected.sequences)
    torch.testing.assert_close(actual.sequences_scores, expected.sequences_scores)


def test_beam_sampling_equals_plain_generation(processor):
    model = _model(seed=2)
    inputs = processor(audio=_clips(2), sampling_rate=16_000)
    options = {"do_sample": True, "num_beams": 3, "max_new_tokens": 8, "min_length": 0, "top_k": 20}
    torch.manual_seed(5)
    with torch.no_grad():
        expected = _plain_generate(model, inputs, **options)
    torch.manual_seed(5)
    assert torch.equal(model.generate(**inputs, **options), expected)


def test_t5_encoder_and_cross_attention_projections_run_once_per_clip(processor):
    model = _model()
    seen: dict[str, list[int]] = {"encoder": [], "cross_k": [], "self_k": []}
    decoder_layer = model.language_model.decoder.block[0].layer
    hooks = [
        model.language_model.encoder.register_forward_hook(
            lambda module, args, kwargs, output: seen["encoder"].append(kwargs["inputs_embeds"].shape[0]),
            with_kwargs=True,
        ),
        decoder_layer[1].EncDecAttention.k.register_forward_hook(
            lambda module, args, output: seen["cross_k"].append(args[0].shape[0])
        ),
        decoder_layer[0].SelfAttention.k.register_forward_hook(
            lambda module, args, output: seen["self_k"].append(args[0].shape[0])
        ),
    ]
    inputs = processor(audio=_clips(3), sampling_rate=16_000)
    model.generate(**inputs, num_beams=5, max_new_tokens=6, min_new_tokens=6)
    for hook in hooks:
        hook.remove()
    assert seen["encoder"] == [3]  # once, on the 3 clips, not on 3 x 5 beams
    assert seen["cross_k"] == [3]  # once per clip, never again while decoding
    # One decoder step on the 3 clips fills the cross-attention cache, then the decoder runs on every beam per step.
    assert seen["self_k"] == [3] + [15] * 6


def test_static_cache_and_greedy_still_take_transformers_path(processor):
    model = _model(seed=3)
    inputs = processor(audio=_clips(2), sampling_rate=16_000)
    options = {"num_beams": 4, "max_new_tokens": 6, "min_new_tokens": 6}
    dynamic = model.generate(**inputs, **options)
    static = model.generate(**inputs, cache_implementation="static", return_dict_in_generate=True, **options)
    assert not isinstance(_cache(static), BlapBeamSearchCache)
    assert torch.equal(static.sequences, dynamic)
    greedy = model.generate(**inputs, num_beams=1, max_new_tokens=6, min_new_tokens=6, return_dict_in_generate=True)
    assert not isinstance(_cache(greedy), BlapBeamSearchCache)
    with torch.no_grad():
        assert torch.equal(
            greedy.sequences, _plain_generate(model, inputs, num_beams=1, max_new_tokens=6, min_new_tokens=6)
        )


def test_optimised_captioning_equals_baseline_in_float32(processor):
    """The benchmark's claim in miniature: SDPA, batched clips, shared cross-attention == eager, one clip at a time."""
    clips = _clips(4, seed=7)
    options = {"num_beams": 10, "max_new_tokens": 10, "min_new_tokens": 10}
    baseline = _model(seed=4, attn_implementation="eager")
    with torch.no_grad():
        expected = [
            _plain_generate(baseline, processor(audio=[clip], sampling_rate=16_000), **options)[0] for clip in clips
        ]
    optimised = _model(seed=4, attn_implementation="sdpa")
    with torch.inference_mode():
        actual = optimised.generate(**processor(audio=clips, sampling_rate=16_000), **options)
    assert optimised.language_model.config._attn_implementation == "sdpa"
    assert baseline.language_model.config._attn_implementation == "eager"
    assert torch.equal(actual, torch.stack(expected))


@pytest.mark.parametrize(
    ("implementation", "decoder_implementation", "cached_rows"),
    [("sdpa", BEAM_GROUPED_SDPA, 3), ("eager", "eager", 3 * 5)],
)
def test_cross_attention_keys_are_kept_once_per_clip_with_sdpa(
    processor, implementation, decoder_implementation, cached_rows
):
    """SDPA decodes against one copy of the cross-attention keys/values per clip (not per beam); eager repeats them.
    Either way the captions are plain generation's; the decoder's attention is set with the model's, not by
    `generate`."""
    model = _model(seed=6, attn_implementation=implementation)
    prompts = ["Generate an objective music description.", "Describe it.", "A"]  # padded: the mask must be applied
    inputs = processor(audio=_clips(3, seed=3), sampling_rate=16_000, text=prompts)
    options = {"num_beams": 5, "max_new_tokens": 8, "min_new_tokens": 8}
    with torch.no_grad():
        expected = _plain_generate(model, inputs, **options)
        actual = model.generate(**inputs, return_dict_in_generate=True, **options)
    cross_attention = _cache(actual).cross_attention_cache
    assert all(layer.keys.shape[0] == cached_rows for layer in cross_attention.layers)
    assert torch.equal(actual.sequences, expected)
    assert model.language_model.decoder.config._attn_implementation == decoder_implementation
    assert model.language_model.encoder.config._attn_implementation == implementation


def test_gradient_checkpointing_keeps_stage2_gradients_and_saves_fewer_activations(processor):
    inputs = processor(audio=_clips(2), sampling_rate=16_000, captions=["calm jazz piano", "loud rock guitar"])

    def gradients_and_saved_tensors(checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
        model = _model(seed=5, **NO_DROPOUT)
        model.set_stage2_trainable()
        if checkpointing:
            model.activation_checkpointing_enable()
        model.train()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            loss = model(**inputs).loss
        loss.backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
        return grads, sum(saved)

    plain, plain_saved = gradients_and_saved_tensors(checkpointing=False)
    checkpointed, checkpointed_saved = gradients_and_saved_tensors(checkpointing=True)
    assert plain.keys() == checkpointed.keys()
    assert all(grad is not None and grad.abs().sum() > 0 for grad in checkpointed.values())
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)
    assert checkpointed_saved < 0.6 * plain_saved


def test_generation_config_object_takes_the_same_path(processor):
    model = _model(seed=6)
    inputs = processor(audio=_clips(2), sampling_rate=16_000)
    config = GenerationConfig(
        num_beams=3, max_new_tokens=5, min_new_tokens=5, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0
    )
    with torch.no_grad():
        expected = _plain_generate(model, inputs, generation_config=config)
    assert torch.equal(model.generate(**inputs, generation_config=config), expected)


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("benchmark", REPO_ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_random_checkpoint_loads_completely_sharded_and_untied(tmp_path):
    benchmark = _benchmark_module()
    config = tiny_config()
    path = benchmark.write_random_checkpoint(config, tmp_path / "ckpt", torch.bfloat16, max_shard_bytes=20_000)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((path / shard).is_file() for shard in shards)
    assert shards[-1].endswith(f"-of-{len(shards):05d}.safetensors")
    model = benchmark.load_model(path, "bfloat16")  # raises on any missing, unexpected or mismatched weight
    fresh = BlapForConditionalGeneration(config)
    for name, buffer in fresh.named_buffers():
        if not buffer.is_floating_point():  # HTS-AT's relative_position_index must be the real one
            assert torch.equal(model.get_buffer(name), buffer), name
    language_model = model.language_model
    assert language_model.lm_head.weight.data_ptr() != language_model.shared.weight.data_ptr()
    assert not torch.equal(language_model.lm_head.weight, language_model.shared.weight)
    assert model.language_model.shared.weight.dtype == torch.bfloat16 and model.query_tokens.dtype == torch.float32


def test_benchmark_targets_read_off_the_rows():
    benchmark = _benchmark_module()
    row = {"section": "generate (base)", "dtype": "float32", "peak_rss_over_weights": 1.2, "added_rss_over_weights": 1}
    rows = [
        {**row, "variant": "baseline", "speedup": 1.0, "captions_equal_baseline": True},
        {**row, "variant": "batched", "speedup": 3.5, "captions_equal_baseline": True},
        {**row, "variant": "faster, other captions", "speedup": 9.0, "captions_equal_baseline": False},
        {**row, "variant": "bf16", "dtype": "bfloat16", "speedup": 9.0, "captions_equal_baseline": True},
        {"section": "generate (base)", "variant": "compiled", "failed": "RuntimeError: no compiler"},
        {"section": "load (xl, bfloat16)", "variant": "from_pretrained (meta init)", "peak_rss_over_weights": 1.1},
    ]
    targets = benchmark.check_targets(rows)
    throughput = targets["throughput_3x_base_fp32_equal_captions"]
    assert throughput["variant"] == "batched" and throughput["met"]
    assert targets["3b_loads_once: load (xl, bfloat16)"]["met"]
    assert "| generate (base) | compiled |" in benchmark.format_markdown(rows)
    assert benchmark.peak_rss_bytes() > 0


def test_buffered_self_attention_layer_holds_what_dynamic_layer_holds():
    """Updates past the capacity and beam reorderings through spare buffers: transformers' `DynamicLayer`'s keys and
    values, sequence lengths and mask sizes."""
    generator = torch.Generator().manual_seed(0)
    buffered, dynamic = BlapBufferedLayer(capacity=3), DynamicLayer()
    spare = None

    def states(length: int, batch_size: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(torch.randn(batch_size, 2, length, 4, generator=generator) for _ in range(2))

    for step, length in enumerate([2, 1, 1, 1, 1]):  # 6 positions: twice the capacity
        keys, values = states(length)
        actual, expected = buffered.update(keys, values), dynamic.update(keys, values)
        for got, want in zip(actual, expected):
            assert torch.equal(got, want), step
        beam_idx = torch.randint(0, 6, (6,), generator=generator)
        spare = buffered.reorder_cache(beam_idx, spare)
        dynamic.reorder_cache(beam_idx)
        assert torch.equal(buffered.keys, dynamic.keys) and torch.equal(buffered.values, dynamic.values)
        assert buffered.get_seq_length() == dynamic.get_seq_length()
        assert buffered.get_mask_sizes(1) == dynamic.get_mask_sizes(1)
    assert buffered.get_seq_length() == 6 and buffered.key_buffer.shape[-2] == 6
    buffered.reset()
    assert buffered.get_seq_length() == 0
    keys, values = states(1, batch_size=2)
    assert torch.equal(buffered.update(keys, values)[0], keys)


def test_beam_search_self_attention_cache_is_allocated_once_for_the_caption(processor):
    """One buffer pair per decoder layer sized for the caption, plus one spare pair that beam reordering rotates."""
    model = _model(seed=8)
    inputs = processor(audio=_clips(2), sampling_rate=16_000)
    output = model.generate(**inputs, num_beams=4, max_new_tokens=7, min_new_tokens=7, return_dict_in_generate=True)
    cache = _cache(output)
    layers = cache.self_attention_cache.layers
    assert all(isinstance(layer, BlapBufferedLayer) for layer in layers)
    shape = (2 * 4, TINY_TEXT["num_heads"], 7, TINY_TEXT["d_kv"])
    assert {tuple(layer.key_buffer.shape) for layer in layers} == {shape}
    assert all(layer.get_seq_length() == 7 for layer in layers)  # filled: the start token and 6 of the 7 tokens
    buffers = [tensor for layer in layers for tensor in (layer.key_buffer, layer.value_buffer)]
    buffers += list(cache._spare_buffers)
    assert len({tensor.data_ptr() for tensor in buffers}) == 2 * (len(layers) + 1)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_two_threads_captioning_with_one_model_give_the_sequential_captions(processor, implementation):
    """`generate` changes nothing on the model while it runs: two threads beam-searching different clips with one
    model at the same time get exactly the captions of one-after-the-other calls."""
    model = _model(seed=6, attn_implementation=implementation)
    options = {"num_beams": 4, "max_new_tokens": 8, "min_new_tokens": 8}
    prompts = [["Generate an objective music description.", "Describe it."], ["A", "Describe the drums."]]
    clips = [_clips(2, seed=11), _clips(2, seed=12)]
    batches = [processor(audio=audio, sampling_rate=16_000, text=text) for audio, text in zip(clips, prompts)]
    with torch.no_grad():
        expected = [_plain_generate(model, inputs, **options) for inputs in batches]
    assert not torch.equal(expected[0], expected[1])
    decoder_implementation = model.language_model.decoder.config._attn_implementation
    results: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def caption(index: int) -> None:
        try:
            start.wait()
            for _ in range(2):
                results[index].append(model.generate(**batches[index], **options))
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=caption, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for index in (0, 1):
        assert len(results[index]) == 2
        assert all(torch.equal(sequences, expected[index]) for sequences in results[index])
    assert model.language_model.decoder.config._attn_implementation == decoder_implementation


def test_decoder_attention_follows_the_model_and_is_not_saved(tmp_path):
    """The decoder runs BLAP's grouped SDPA whenever the language model is set to SDPA (built, loaded or switched);
    no saved file names it, so a checkpoint loads where the name is not registered."""
    model = _model(attn_implementation="eager")
    language_model = model.language_model
    assert language_model.decoder.config._attn_implementation == "eager"
    model.set_attn_implementation({"text_config": "sdpa"})
    assert language_model.config._attn_implementation == language_model.encoder.config._attn_implementation == "sdpa"
    assert language_model.decoder.config._attn_implementation == BEAM_GROUPED_SDPA
    model.save_pretrained(tmp_path)
    saved = "".join(path.read_text() for path in tmp_path.glob("*.json"))
    assert "attn" not in saved.lower() and BEAM_GROUPED_SDPA not in language_model.decoder.config.to_json_string()
    reloaded = BlapForConditionalGeneration.from_pretrained(tmp_path)
    assert reloaded.language_model.decoder.config._attn_implementation == BEAM_GROUPED_SDPA
    eager = BlapForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager")
    assert eager.language_model.decoder.config._attn_implementation == "eager"
