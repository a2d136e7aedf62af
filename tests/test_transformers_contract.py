"""
The private or internal transformers names transformers_blap still relies on, one row each in `RELIANCES`: the name,
where the package uses it, and a check of what the package needs from it (existence, signature, behaviour). A
transformers release that removes or changes one fails its row with a message naming both. docs/design.md lists the
same names with the reason each is kept; add a row here with every name added there.

Beside the table: no FutureWarning or DeprecationWarning from the package's own code on the installed transformers.
"""

import inspect
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from transformers import (
    Cache,
    DynamicCache,
    EncoderDecoderCache,
    PreTrainedConfig,
    PreTrainedModel,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.generation import GenerateBeamEncoderDecoderOutput

import transformers_blap
from transformers_blap import AudioToTextPipeline, BlapForConditionalGeneration
from transformers_blap.modeling_blap import BEAM_GROUPED_SDPA, CACHE_ARGUMENT, BlapBufferedLayer

from tiny import TINY_TEXT, tiny_config, tiny_processor

PACKAGE_DIR = Path(transformers_blap.__file__).resolve().parent


def _tiny_t5(**overrides) -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    return T5ForConditionalGeneration(T5Config(**{**TINY_TEXT, "dropout_rate": 0.0, **overrides})).eval()


# ----------------------------------------------------------------------------------------------------- the checks


def check_attn_implementation() -> None:
    """Reading `config._attn_implementation` tells which implementation a T5 stack runs; the stacks hold copies of the
    language model's config, set one by one with the public `set_attn_implementation`."""
    model = _tiny_t5(attn_implementation="eager")
    assert isinstance(inspect.getattr_static(PreTrainedConfig, "_attn_implementation"), property)
    assert model.config._attn_implementation == model.decoder.config._attn_implementation == "eager"
    model.decoder.set_attn_implementation("sdpa")
    assert model.decoder.config._attn_implementation == "sdpa"
    assert model.encoder.config._attn_implementation == model.config._attn_implementation == "eager"


def check_registered_mask_function() -> None:
    """`ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]`, registered for BLAP's grouped SDPA: with it transformers masks padded
    encoder positions under that name exactly as under "sdpa" (without a mask function it builds no mask at all)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    assert callable(ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    model = _tiny_t5()
    encoder_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    generator = torch.Generator().manual_seed(0)
    encoder_hidden_states = torch.randn(2, 5, TINY_TEXT["d_model"], generator=generator)
    decoder_ids = torch.tensor([[0, 5, 9], [0, 7, 3]])

    def decode() -> torch.Tensor:
        with torch.no_grad():
            return model.decoder(
                input_ids=decoder_ids, encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_mask
            ).last_hidden_state

    model.decoder.set_attn_implementation("sdpa")
    expected = decode()
    model.decoder.set_attn_implementation(BEAM_GROUPED_SDPA)
    torch.testing.assert_close(decode(), expected)
    encoder_hidden_states[0, 3:] += 100.0  # masked positions: must change nothing
    torch.testing.assert_close(decode()[0], expected[0])


def check_sdpa_attention_function() -> None:
    """`ALL_ATTENTION_FUNCTIONS["sdpa"]`, the kernel BLAP's grouped SDPA wraps: called as `(module, query, key, value,
    attention_mask, **kwargs)` on `(batch, heads, length, head_dim)` tensors, it returns `(output, weights)` with the
    output laid out `(batch, query_length, heads, head_dim)`, which the grouped attention reshapes."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 3, length, 4, generator=generator) for length in (5, 7, 7))
    module = torch.nn.Module()
    module.is_causal = False
    module.training = False
    output, _ = ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, None, dropout=0.0, scaling=1.0)
    expected = torch.nn.functional.scaled_dot_product_attention(query, key, value, scale=1.0).transpose(1, 2)
    torch.testing.assert_close(output, expected)


def check_cache_argument() -> None:
    """The name a model's `forward` takes its cache under (`past_key_values`; `cache` from 5.25), which
    `CACHE_ARGUMENT` reads off `T5ForConditionalGeneration.forward`: the T5 stacks take the same name, and `generate`
    returns the cache under it."""
    assert CACHE_ARGUMENT in ("cache", "past_key_values")
    assert CACHE_ARGUMENT in inspect.signature(T5ForConditionalGeneration.forward).parameters
    assert CACHE_ARGUMENT in inspect.signature(type(_tiny_t5().decoder).forward).parameters
    assert CACHE_ARGUMENT in GenerateBeamEncoderDecoderOutput.__dataclass_fields__


def check_filled_cross_attention_cache() -> None:
    """`EncoderDecoderCache.is_updated`: a cross-attention cache filled before decoding counts as computed, so that
    the decoder reads the keys and values BLAP's generate put there instead of projecting the encoder output again."""
    filled = DynamicCache()
    filled.update(torch.zeros(2, 2, 5, 8), torch.zeros(2, 2, 5, 8), 0)
    cache = EncoderDecoderCache(DynamicCache(), filled)
    assert cache.is_updated == {0: True}
    assert EncoderDecoderCache(DynamicCache(), DynamicCache()).is_updated == {}


def check_cache_layer_interface() -> None:
    """`CacheLayerMixin` (public): `BlapBufferedLayer` implements every abstract method and keeps the mixin's
    `keys` / `values` / `is_initialized`, which the cache and the attention layers read."""
    assert not BlapBufferedLayer.__abstractmethods__
    layer = BlapBufferedLayer(capacity=4)
    assert layer.keys is None and layer.values is None and layer.is_initialized is False
    cache = Cache(layers=[layer])
    keys = torch.randn(2, 2, 3, 8)
    cache.update(keys, keys + 1, 0)
    assert torch.equal(layer.keys, keys) and cache.get_seq_length(0) == 3 and cache.get_mask_sizes(1, 0) == (4, 0)


def check_prepare_generate_kwargs(t5_tokenizer_dir: Path) -> None:
    """`Pipeline._prepare_generate_kwargs(generate_kwargs)`: the generation options given when the pipeline was made,
    under those of the call, as every transformers pipeline hands them to `generate`."""
    from transformers.pipelines.base import Pipeline

    assert list(inspect.signature(Pipeline._prepare_generate_kwargs).parameters)[:2] == ["self", "generate_kwargs"]
    processor = tiny_processor(t5_tokenizer_dir)
    captioner = AudioToTextPipeline(BlapForConditionalGeneration(tiny_config()), processor=processor, num_beams=3)
    kwargs = captioner._prepare_generate_kwargs({"max_new_tokens": 5})
    assert kwargs["num_beams"] == 3 and kwargs["max_new_tokens"] == 5
    assert captioner._prepare_generate_kwargs({"num_beams": 2})["num_beams"] == 2


def check_pipeline_parameter_hooks(t5_tokenizer_dir: Path) -> None:
    """`Pipeline._sanitize_parameters` and the `_preprocess_params` / `_forward_params` / `_postprocess_params` it
    fills at init: the batch captioner drives the pipeline's stages with them."""
    processor = tiny_processor(t5_tokenizer_dir)
    captioner = AudioToTextPipeline(BlapForConditionalGeneration(tiny_config()), processor=processor, window_s=0.5)
    assert captioner._preprocess_params == {"window_s": 0.5}
    assert captioner._forward_params == {"generate_kwargs": {}} and captioner._postprocess_params == {}
    sanitized = captioner._sanitize_parameters(prompt="A", num_beams=2)
    assert sanitized == ({"prompt": "A"}, {"generate_kwargs": {"num_beams": 2}}, {})


def check_chunk_pipeline_and_pad_collate_fn(t5_tokenizer_dir: Path) -> None:
    """`pipelines.base.ChunkPipeline` (one input, many windows) and `pad_collate_fn(tokenizer, feature_extractor)`,
    which pads the items of a batch into one dict of tensors."""
    from transformers.pipelines.base import ChunkPipeline, Pipeline, pad_collate_fn

    assert issubclass(ChunkPipeline, Pipeline) and callable(ChunkPipeline.run_single)
    processor = tiny_processor(t5_tokenizer_dir)
    collate = pad_collate_fn(processor.tokenizer, processor.feature_extractor)
    items = [{"audio": torch.zeros(1, 4), "start": 0.0}, {"audio": torch.ones(1, 4), "start": 1.0}]
    batch = collate(items)
    assert batch["audio"].shape == (2, 4) and batch["start"] == [0.0, 1.0]


def check_dynamic_module_utils(tmp_path: Path) -> None:
    """`dynamic_module_utils.get_imports` (the packages a remote-code file imports outside `try` blocks) and
    `get_relative_import_files` (the files it pulls in with `from .x import ...`), as the remote-code loader uses
    them."""
    from transformers.dynamic_module_utils import get_imports, get_relative_import_files

    (tmp_path / "main.py").write_text(
        "import numpy\nfrom .helper import x\ntry:\n    import not_needed\nexcept ImportError:\n    pass\n"
    )
    (tmp_path / "helper.py").write_text("import soxr\nx = 1\n")
    assert set(get_imports(tmp_path / "main.py")) == {"numpy"}
    assert [Path(path).name for path in get_relative_import_files(tmp_path / "main.py")] == ["helper.py"]


def check_keep_in_fp32_modules(tmp_path: Path) -> None:
    """`_keep_in_fp32_modules_strict` keeps the named modules in float32 when a checkpoint loads in half precision;
    `_keep_in_fp32_modules` is the list quantizers read."""
    model = BlapForConditionalGeneration(tiny_config())
    model.save_pretrained(tmp_path)
    loaded = BlapForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.query_tokens.dtype == torch.float32 and loaded.qformer.layernorm.weight.dtype == torch.float32
    assert loaded.language_model.shared.weight.dtype == torch.bfloat16
    assert hasattr(PreTrainedModel, "_keep_in_fp32_modules")


def check_no_split_modules() -> None:
    """`_no_split_modules`: the blocks a `device_map` keeps on one device; a built model holds its class's list with
    its sub-models' (what transformers' accelerate integration reads)."""
    model = BlapForConditionalGeneration(tiny_config())
    assert {"ClapAudioLayer", "Blip2QFormerLayer", "T5Block"} <= set(model._no_split_modules)


def check_model_class_attributes() -> None:
    """The class attributes and hooks transformers reads from every model class: `_supports_sdpa`,
    `_supports_attention_backend`, `_can_compile_fullgraph`, `_keys_to_ignore_on_load_unexpected`,
    `_skip_keys_device_placement`, `_init_weights`."""
    for name in (
        "_supports_sdpa",
        "_supports_attention_backend",
        "_can_compile_fullgraph",
        "_keys_to_ignore_on_load_unexpected",
        "_skip_keys_device_placement",
    ):
        assert hasattr(PreTrainedModel, name), name
    assert callable(PreTrainedModel._init_weights)


def check_tied_weights_keys() -> None:
    """`_tied_weights_keys` (class) and `all_tied_weights_keys` (instance): T5's tying plan maps `lm_head.weight` to
    the shared embeddings; `untie_lm_head` takes it out of both."""
    model = _tiny_t5(tie_word_embeddings=True)
    assert isinstance(T5ForConditionalGeneration._tied_weights_keys, dict)
    assert "lm_head.weight" in T5ForConditionalGeneration._tied_weights_keys
    assert "lm_head.weight" in model.all_tied_weights_keys
    assert model.lm_head.weight is model.shared.weight


def check_blip2_text_embeddings() -> None:
    """`Blip2TextEmbeddings` (not in `modeling_blip_2.__all__`): word + position embeddings of the Q-Former's text,
    positions counted from 0, nothing else (no LayerNorm: stage 1 applies the Q-Former's own), the parameter names
    stage-1 checkpoints hold, and a non-persistent `position_ids` buffer (not saved)."""
    from transformers import Blip2QFormerConfig
    from transformers.models.blip_2.modeling_blip_2 import Blip2TextEmbeddings

    config = Blip2QFormerConfig(vocab_size=40, hidden_size=32, max_position_embeddings=16, num_hidden_layers=1)
    embeddings = Blip2TextEmbeddings(config)
    assert set(embeddings.state_dict()) == {"word_embeddings.weight", "position_embeddings.weight"}
    input_ids = torch.tensor([[3, 7, 1], [2, 0, 5]])
    expected = embeddings.word_embeddings(input_ids) + embeddings.position_embeddings(torch.arange(3))[None]
    torch.testing.assert_close(embeddings(input_ids=input_ids), expected)


# ------------------------------------------------------------------------------------------------------ the table

# (transformers name, where transformers_blap relies on it, check). A check's arguments are pytest fixtures.
RELIANCES: list[tuple[str, str, Callable[..., None]]] = [
    (
        "PretrainedConfig._attn_implementation (read)",
        "modeling_blap: BlapForConditionalGeneration._set_language_model_stack_attention, _beam_search_cache;"
        " scripts/benchmark.py set_attention",
        check_attn_implementation,
    ),
    (
        "masking_utils.ALL_MASK_ATTENTION_FUNCTIONS['sdpa']",
        "modeling_blap: AttentionMaskInterface.register(BEAM_GROUPED_SDPA, ...)",
        check_registered_mask_function,
    ),
    (
        "modeling_utils.ALL_ATTENTION_FUNCTIONS['sdpa']",
        "modeling_blap.beam_grouped_sdpa_attention",
        check_sdpa_attention_function,
    ),
    (
        "the cache argument name of forward/generate (past_key_values, cache)",
        "modeling_blap.CACHE_ARGUMENT: BlapForConditionalGeneration.generate, _beam_search_cache",
        check_cache_argument,
    ),
    (
        "EncoderDecoderCache.is_updated",
        "modeling_blap.BlapForConditionalGeneration._beam_search_cache (cross-attention filled once per clip)",
        check_filled_cross_attention_cache,
    ),
    (
        "cache_utils.CacheLayerMixin (keys, values, is_initialized, abstract methods)",
        "modeling_blap.BlapBufferedLayer",
        check_cache_layer_interface,
    ),
    (
        "Pipeline._prepare_generate_kwargs",
        "pipeline_audio_to_text.AudioToTextPipeline._forward",
        check_prepare_generate_kwargs,
    ),
    (
        "Pipeline._sanitize_parameters, _preprocess_params, _forward_params, _postprocess_params",
        "pipeline_audio_to_text.AudioToTextPipeline.call_parameters (used by captioning.py)",
        check_pipeline_parameter_hooks,
    ),
    (
        "pipelines.base.ChunkPipeline, pad_collate_fn",
        "pipeline_audio_to_text.AudioToTextPipeline; captioning.caption_to_jsonl",
        check_chunk_pipeline_and_pad_collate_fn,
    ),
    (
        "dynamic_module_utils.get_imports, get_relative_import_files",
        "remote_code_blap.remote_code_files, hub.remote_code_requirements",
        check_dynamic_module_utils,
    ),
    (
        "PreTrainedModel._keep_in_fp32_modules_strict, _keep_in_fp32_modules",
        "modeling_blap.BlapPreTrainedModel; conversion/original.py",
        check_keep_in_fp32_modules,
    ),
    (
        "PreTrainedModel._no_split_modules",
        "modeling_blap.BlapPreTrainedModel",
        check_no_split_modules,
    ),
    (
        "PreTrainedModel._supports_sdpa, _supports_attention_backend, _can_compile_fullgraph,"
        " _keys_to_ignore_on_load_unexpected, _skip_keys_device_placement, _init_weights",
        "modeling_blap: BlapPreTrainedModel, both model classes",
        check_model_class_attributes,
    ),
    (
        "models.blip_2.modeling_blip_2.Blip2TextEmbeddings",
        "modeling_blap.BlapForRepresentationLearning.text_embeddings",
        check_blip2_text_embeddings,
    ),
    (
        "PreTrainedModel._tied_weights_keys, all_tied_weights_keys",
        "modeling_blap.untie_lm_head",
        check_tied_weights_keys,
    ),
]


@pytest.mark.parametrize(("name", "used_in", "check"), RELIANCES, ids=[row[0].split(" ")[0] for row in RELIANCES])
def test_transformers_still_provides(name, used_in, check, request):
    arguments = {parameter: request.getfixturevalue(parameter) for parameter in inspect.signature(check).parameters}
    try:
        check(**arguments)
    except Exception as error:
        pytest.fail(
            f"transformers {transformers.__version__} changed `{name}`, which transformers_blap relies on in"
            f" {used_in}: {type(error).__name__}: {error}",
            pytrace=False,
        )


def test_the_package_code_raises_no_deprecation_warning(t5_tokenizer_dir):
    """Training forward, beam search (BLAP's path, SDPA and eager), greedy search and the pipeline on the installed
    transformers: no FutureWarning or DeprecationWarning attributed to the package's own code."""
    processor = tiny_processor(t5_tokenizer_dir)
    model = BlapForConditionalGeneration(tiny_config()).eval()
    rng = np.random.default_rng(0)
    clips = [(0.2 * rng.standard_normal(16_000)).astype(np.float32) for _ in range(2)]
    inputs = processor(audio=clips, sampling_rate=16_000, text=["Describe it.", "A"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(**processor(audio=clips, sampling_rate=16_000, captions=["calm piano", "loud drums"])).loss.backward()
        with torch.no_grad():
            model.generate(**inputs, num_beams=3, max_new_tokens=3, return_dict_in_generate=True)
            model.generate(**inputs, num_beams=1, max_new_tokens=3)
            model.set_attn_implementation({"text_config": "eager"})
            model.generate(**inputs, num_beams=3, max_new_tokens=3)
            AudioToTextPipeline(model, processor=processor)(clips[0], sampling_rate=16_000, max_new_tokens=3)
    ours = [
        f"{Path(w.filename).name}:{w.lineno}: {w.category.__name__}: {w.message}"
        for w in caught
        if issubclass(w.category, (FutureWarning, DeprecationWarning))
        and Path(w.filename).resolve().is_relative_to(PACKAGE_DIR)
    ]
    assert not ours, ours
