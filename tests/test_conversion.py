"""
Conversion of the original BLAP release, proven against the outputs of the original implementation
(`original-blap-tiny`, see its README) and, for a second checkpoint with other dimensions, against an independent
reference path that is itself proven equal to the original on the fixture.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import soundfile as sf
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import BertConfig, T5Config, pipeline

from blap_cli import build_parser
from transformers_blap import BlapForConditionalGeneration, BlapProcessor
from transformers_blap.conversion import ConversionError, convert_htsat_state_dict, htsat_config_from_state_dict
from transformers_blap.conversion.original import (
    RELEASE_GENERATION_DEFAULTS,
    convert_original_checkpoint,
    load_original_checkpoint,
    main,
    run,
)

from conftest import REPO_ROOT
from original_format import (
    FIXTURE_DIMS,
    HTSAT,
    OriginalDims,
    ids_until_eos,
    lightning_checkpoint,
    original_tensor_specs,
    random_original_state_dict,
    reference_forward,
    reference_generate,
    reference_modules,
)

ATOL = 1e-4
LOSS_ATOL = 1e-5


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def no_leftovers(parent: Path, name: str) -> bool:
    """Nothing named like the output folder or its staging / backup folders exists in `parent`."""
    return not [p for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.")]


@pytest.fixture(scope="module")
def reference(fixture_dir):
    tensors = load_file(fixture_dir / "reference_outputs.safetensors")
    info = json.loads((fixture_dir / "reference.json").read_text())
    audio = [sf.read(fixture_dir / path, dtype="float32")[0] for path in info["audio_files"]]
    return {"tensors": tensors, "info": info, "audio": audio}


@pytest.fixture(scope="module")
def fixture_state_dict(fixture_dir):
    return load_original_checkpoint(fixture_dir / "blap_stage2.ckpt")


@pytest.fixture(scope="module")
def converted_dir(fixture_dir, tmp_path_factory):
    """The fixture converted by the script, as a user would, with small shards to exercise sharded loading."""
    output = tmp_path_factory.mktemp("converted") / "blap-tiny"
    command = [
        sys.executable,
        str(REPO_ROOT / "scripts" / "convert_original_blap.py"),
        "--checkpoint",
        str(fixture_dir / "blap_stage2.ckpt"),
        "--config",
        str(fixture_dir / "config.json"),
        "--output-dir",
        str(output),
        "--max-shard-size",
        "40MB",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return output


@pytest.fixture(scope="module")
def converted(converted_dir):
    model, info = BlapForConditionalGeneration.from_pretrained(converted_dir, output_loading_info=True)
    processor = BlapProcessor.from_pretrained(converted_dir)
    return model, processor, info


@pytest.fixture(scope="module")
def converted_outputs(converted, reference):
    """The converted model's teacher-forced outputs on the fixture clips and captions, with its inputs."""
    model, processor, _ = converted
    inputs = processor(audio=reference["audio"], sampling_rate=48_000, captions=reference["info"]["captions"])
    with torch.no_grad():
        return inputs, model(**inputs)


# --------------------------------------------------------------------------------------------------- HTS-AT alone


def test_htsat_mapping_reproduces_original_audio_tokens(fixture_state_dict, reference):
    from transformers import ClapAudioModel

    config = htsat_config_from_state_dict(fixture_state_dict, HTSAT, variant="tiny")
    assert (config.patch_embeds_hidden_size, list(config.depths), list(config.num_attention_heads)) == (
        96,
        [2, 2, 6, 2],
        [4, 8, 16, 32],
    )
    assert (config.window_size, config.hidden_size, config.num_mel_bins, config.enable_fusion) == (8, 768, 64, False)
    weights = convert_htsat_state_dict(fixture_state_dict, HTSAT)
    assert not any("attn_mask" in k or "tscam" in k or "extractor" in k or "head." in k for k in weights)
    model = ClapAudioModel(config).eval()
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, strict=True)
    ln_audio = torch.nn.LayerNorm(768)
    ln_audio.load_state_dict(
        {"weight": fixture_state_dict["ln_audio.weight"], "bias": fixture_state_dict["ln_audio.bias"]}
    )
    with torch.no_grad():
        hidden = model(reference["tensors"]["log_mel"]).last_hidden_state
        audio_embeds = ln_audio(hidden.mean(dim=2).transpose(1, 2))
    assert max_abs(audio_embeds, reference["tensors"]["audio_embeds"]) < 2e-5


def test_htsat_problems_are_listed(fixture_state_dict):
    with pytest.raises(ConversionError, match="no key starts with 'audio_branch.'"):
        convert_htsat_state_dict(fixture_state_dict, "audio_branch.")
    broken = dict(fixture_state_dict)
    broken[HTSAT + "absolute_pos_embed"] = torch.zeros(1, 4096, 96)
    broken[HTSAT + "layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(64, 64, dtype=torch.long)
    with pytest.raises(ConversionError) as error:
        convert_htsat_state_dict(broken, HTSAT)
    message = str(error.value)
    assert "1 unknown key(s)" in message and HTSAT + "absolute_pos_embed" in message
    assert "layers.0.blocks.0.attention.self.relative_position_index: not the Swin relative-position index" in message
    with pytest.raises(
        ConversionError, match="patch_embeds_hidden_size is 96 in the weights but 128 for HTS-AT 'base'"
    ):
        htsat_config_from_state_dict(fixture_state_dict, HTSAT, variant="base")


# ------------------------------------------------------------------------- the test helpers, proven on the fixture


def test_synthetic_layout_is_the_release_layout(fixture_state_dict):
    specs = original_tensor_specs(FIXTURE_DIMS)
    assert list(specs) == list(fixture_state_dict)
    assert all(specs[key][0] == tuple(tensor.shape) for key, tensor in fixture_state_dict.items())


def test_reference_path_reproduces_the_original(fixture_dir, fixture_state_dict, reference):
    ref, info = reference["tensors"], reference["info"]
    modules = reference_modules(
        fixture_state_dict,
        BertConfig.from_pretrained(fixture_dir / "bert-base-uncased"),
        T5Config.from_pretrained(fixture_dir / "flan-t5-tiny"),
    )
    prompt_mask = torch.ones_like(ref["prompt_input_ids"])
    outputs = reference_forward(
        modules,
        ref["log_mel"],
        ref["prompt_input_ids"],
        prompt_mask,
        labels=ref["labels"],
        decoder_attention_mask=ref["decoder_attention_mask"],
    )
    for name in ("audio_embeds", "qformer_last_hidden_state", "inputs_t5", "logits"):
        assert max_abs(outputs[name], ref[name]) < ATOL, name
    assert max_abs(outputs["loss"], ref["loss"][0]) < LOSS_ATOL
    generated = reference_generate(modules, outputs, repetition_penalty=info["repetition_penalty"], **info["generate"])
    assert torch.equal(generated, ref["generated_ids"])


# ----------------------------------------------------------------------------------------- the converted fixture


def test_output_folder_is_complete(converted_dir, fixture_dir):
    names = {p.name for p in converted_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "README.md"} <= names
    assert {"processor_config.json", "tokenizer_config.json"} <= names
    shards = sorted(converted_dir.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2 and "model.safetensors" not in names
    assert [p.name for p in converted_dir.parent.iterdir()] == ["blap-tiny"]  # no staging folder left

    config = json.loads((converted_dir / "config.json").read_text())
    original = json.loads((fixture_dir / "config.json").read_text())
    assert config["model_type"] == "blap"
    assert config["prompt"] == original["prompt"] and config["num_query_tokens"] == 8
    assert config["text_config"]["dense_act_fn"] == "gelu"
    assert config["qformer_config"]["num_attention_heads"] == 2 and config["qformer_config"]["num_hidden_layers"] == 4
    generation = json.loads((converted_dir / "generation_config.json").read_text())
    assert generation["repetition_penalty"] == original["LLM"]["repetition_penalty"]
    for name, value in RELEASE_GENERATION_DEFAULTS.items():
        assert generation[name] == value, name
    assert (generation["num_beams"], generation["max_new_tokens"], generation["min_length"]) == (10, 40, 30)
    card = (converted_dir / "README.md").read_text()
    assert "blap_stage2.ckpt" in card and original["prompt"] in card and "$" not in card.split("```")[0]


def test_converted_model_matches_the_original(converted, converted_outputs, reference):
    model, _, info = converted
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"))
    ref = reference["tensors"]
    inputs, outputs = converted_outputs
    assert torch.equal(inputs["input_ids"], ref["prompt_input_ids"])
    assert torch.equal(inputs["labels"], ref["labels"])
    assert torch.equal(inputs["decoder_attention_mask"], ref["decoder_attention_mask"])
    assert max_abs(outputs.audio_embeds, ref["audio_embeds"]) < ATOL
    assert max_abs(outputs.qformer_outputs.last_hidden_state, ref["qformer_last_hidden_state"]) < ATOL
    assert max_abs(outputs.language_model_inputs, ref["inputs_t5"]) < ATOL
    assert max_abs(outputs.logits, ref["logits"]) < ATOL
    assert max_abs(outputs.loss, ref["loss"][0]) < LOSS_ATOL
    head, shared = model.language_model.lm_head.weight, model.language_model.shared.weight
    assert head.data_ptr() != shared.data_ptr() and not torch.equal(head, shared)


def test_converted_model_generates_the_original_captions(converted, reference):
    model, processor, _ = converted
    inputs = processor(audio=reference["audio"], sampling_rate=48_000)
    generated = model.generate(**inputs, **reference["info"]["generate"])
    eos = processor.tokenizer.eos_token_id
    assert ids_until_eos(generated, eos) == ids_until_eos(reference["tensors"]["generated_ids"], eos)
    texts = processor.batch_decode(generated, skip_special_tokens=True)
    assert texts == reference["info"]["generated_text"]


def test_pipeline_on_the_converted_folder_gives_the_original_captions(converted_dir, reference, fixture_dir):
    captioner = pipeline("audio-to-text", model=str(converted_dir))
    paths = [str(fixture_dir / path) for path in reference["info"]["audio_files"]]
    results = captioner(paths, batch_size=2, **reference["info"]["generate"])
    assert [result[0]["generated_text"] for result in results] == reference["info"]["generated_text"]
    assert all(result[0]["windows"] == [{"start": 0.0, "end": 10.0, "caption": result[0]["generated_text"]}]
               for result in results)  # fmt: skip


def test_generate_defaults_to_the_release_usage_example(converted, converted_outputs, monkeypatch):
    model, _, _ = converted
    seen = []

    def record(**kwargs):
        seen.append(kwargs["generation_config"])
        return torch.zeros(1, 1, dtype=torch.long)

    monkeypatch.setattr(model.language_model, "generate", record)
    model.generate(**{k: converted_outputs[0][k] for k in ("input_features", "input_ids", "attention_mask")})
    used = seen[0]
    for name, value in {**RELEASE_GENERATION_DEFAULTS, "repetition_penalty": 1.5}.items():
        assert getattr(used, name) == value, name


@pytest.mark.slow
def test_round_trip_keeps_everything(converted, converted_outputs, reference, tmp_path):
    model, processor, _ = converted
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded, info = BlapForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"))
    reprocessor = BlapProcessor.from_pretrained(tmp_path)
    assert reloaded.generation_config.to_dict() == model.generation_config.to_dict()
    # The saved config carries the remote-code entries; the live one is left as it was by the save.
    assert getattr(model.config, "auto_map", None) is None and reloaded.config.auto_map["AutoConfig"]
    not_compared = ("_name_or_path", "auto_map", "custom_pipelines")
    configs = [{k: v for k, v in m.config.to_dict().items() if k not in not_compared} for m in (model, reloaded)]
    assert configs[0] == configs[1]
    inputs, before = converted_outputs
    again = reprocessor(audio=reference["audio"], sampling_rate=48_000, captions=reference["info"]["captions"])
    assert all(torch.equal(again[k], inputs[k]) for k in inputs)
    with torch.no_grad():
        after = reloaded(**inputs)
    for name in ("audio_embeds", "language_model_inputs", "logits", "loss"):
        assert torch.equal(getattr(before, name), getattr(after, name)), name
    assert torch.equal(before.qformer_outputs.last_hidden_state, after.qformer_outputs.last_hidden_state)
    head, shared = reloaded.language_model.lm_head.weight, reloaded.language_model.shared.weight
    assert head.data_ptr() != shared.data_ptr() and not torch.equal(head, shared)
    generate_inputs = {k: inputs[k] for k in ("input_features", "input_ids", "attention_mask")}
    generated = reloaded.generate(**generate_inputs, **reference["info"]["generate"])
    assert torch.equal(generated, reference["tensors"]["generated_ids"])


@pytest.mark.slow
def test_dtype_option(fixture_dir, reference, tmp_path):
    stored = {}
    for dtype in ("bfloat16", "float16"):
        output = convert_original_checkpoint(
            fixture_dir / "blap_stage2.ckpt", fixture_dir / "config.json", tmp_path / dtype, dtype=dtype
        )
        with safe_open(output / "model.safetensors", "pt") as weights:
            stored[dtype] = {key: weights.get_slice(key).get_dtype() for key in weights.keys()}
        assert json.loads((output / "config.json").read_text())["dtype"] == dtype
    # What transformers keeps in float32 when loading in that dtype is stored in float32, the rest in the dtype.
    float32 = {dtype: {key for key, value in stored[dtype].items() if value == "F32"} for dtype in stored}
    strict = {key for key in stored["float16"] if key == "query_tokens" or key.startswith("qformer.")}
    assert float32["bfloat16"] == strict
    assert float32["float16"] == strict | {key for key in stored["float16"] if ".DenseReluDense.wo." in key}
    assert stored["bfloat16"]["language_model.shared.weight"] == "BF16"
    assert stored["float16"]["language_model.shared.weight"] == "F16"

    model = BlapForConditionalGeneration.from_pretrained(tmp_path / "float16", dtype=torch.float16)
    processor = BlapProcessor.from_pretrained(tmp_path / "float16")
    inputs = processor(audio=reference["audio"], sampling_rate=48_000, captions=reference["info"]["captions"])
    with torch.no_grad():
        logits = model(**inputs).logits
    expected = reference["tensors"]["logits"]
    assert logits.dtype == torch.float16
    assert max_abs(logits, expected) < 0.05 * expected.abs().max().item()


# ------------------------------------------------------------------------------------------------------ bad inputs


def _fixture_checkpoint(fixture_dir: Path, path: Path, edit) -> Path:
    state_dict = dict(load_original_checkpoint(fixture_dir / "blap_stage2.ckpt"))
    edit(state_dict)
    torch.save(lightning_checkpoint(state_dict), path)
    return path


BAD_CHECKPOINTS = {
    "truncated": (
        lambda fixture, path: path.write_bytes((fixture / "blap_stage2.ckpt").read_bytes()[:20_000_000]),
        "not a PyTorch zip checkpoint: it is truncated",
    ),
    "extra key": (
        lambda fixture, path: _fixture_checkpoint(
            fixture, path, lambda sd: sd.update({"qformer.bert.encoder.layer.0.extra.weight": torch.zeros(2)})
        ),
        r"1 unknown key\(s\):\n    qformer.bert.encoder.layer.0.extra.weight",
    ),
    "missing key": (
        lambda fixture, path: _fixture_checkpoint(
            fixture, path, lambda sd: sd.pop("t5_model.decoder.block.1.layer.2.DenseReluDense.wo.weight")
        ),
        r"1 missing key\(s\):\n    language_model.decoder.block.1.layer.2.DenseReluDense.wo.weight",
    ),
    "mis-shaped key": (
        lambda fixture, path: _fixture_checkpoint(
            fixture, path, lambda sd: sd.update({"t5_proj.weight": torch.zeros(64, 96)})
        ),
        r"1 mis-shaped key\(s\):\n    language_projection.weight: got \(64, 96\), expected \(64, 128\)",
    ),
    "pickled object": (
        lambda fixture, path: torch.save(
            {"state_dict": {"query_tokens": torch.zeros(1)}, "hyper_parameters": argparse.Namespace(lr=1e-4)}, path
        ),
        "holds pickled Python objects other than weights \\(first one: argparse.Namespace\\)",
    ),
    "pickled module": (
        lambda fixture, path: torch.save(torch.nn.Linear(2, 2), path),
        "holds pickled Python objects other than weights",
    ),
    "not weights": (
        lambda fixture, path: torch.save({"state_dict": {"query_tokens": [1, 2, 3]}}, path),
        r"entries that are not tensors\) cannot be converted:\n  1 unknown key\(s\):\n    query_tokens",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_a_clear_error_and_writes_nothing(kind, fixture_dir, tmp_path):
    make, message = BAD_CHECKPOINTS[kind]
    checkpoint = tmp_path / "bad.ckpt"
    make(fixture_dir, checkpoint)
    with pytest.raises(ConversionError, match=message):
        convert_original_checkpoint(checkpoint, fixture_dir / "config.json", tmp_path / "out")
    assert no_leftovers(tmp_path, "out")


def test_wrong_config_schema_is_a_clear_error(fixture_dir, tmp_path):
    config = json.loads((fixture_dir / "config.json").read_text())
    del config["LLM"]["t5_model"]
    config["num_query_tokens"] = "8"
    config["audio_encoder"]["audio_cfg"].pop("fmax")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ConversionError) as error:
        convert_original_checkpoint(fixture_dir / "blap_stage2.ckpt", path, tmp_path / "out")
    message = str(error.value)
    assert "does not follow the BLAP release's schema" in message
    assert "missing `LLM.t5_model`" in message and "missing `audio_encoder.audio_cfg.fmax`" in message
    assert "`num_query_tokens` must be int, got str '8'" in message
    path.write_text("[1, 2]")
    with pytest.raises(ConversionError, match="must hold a JSON object"):
        convert_original_checkpoint(fixture_dir / "blap_stage2.ckpt", path, tmp_path / "out")
    assert no_leftovers(tmp_path, "out")


def test_config_that_contradicts_the_checkpoint_is_a_clear_error(fixture_dir, tmp_path):
    for edit, message in (
        (lambda c: c.update(num_query_tokens=16), "num_query_tokens: 16 in the config, 8 in the checkpoint"),
        (lambda c: c["audio_encoder"]["audio_cfg"].update(fmax=8000), "differs from the mel filter bank"),
        (lambda c: c["audio_encoder"]["audio_cfg"].update(model_name="base"), "but 128 for HTS-AT 'base'"),
        (lambda c: c["audio_encoder"]["audio_cfg"].update(class_num=10), "class_num: 10 in the config, 527 in the"),
        (lambda c: c["audio_encoder"]["audio_cfg"].update(window_size=2048), "but audio_cfg.window_size 2048 gives"),
        (lambda c: c["audio_encoder"]["audio_cfg"].update(model_type="Cnn14"), "only the HTS-AT audio encoder"),
    ):
        config = json.loads((fixture_dir / "config.json").read_text())
        edit(config)
        shutil.copytree(fixture_dir / "flan-t5-tiny", tmp_path / "flan-t5-tiny", dirs_exist_ok=True)
        shutil.copytree(fixture_dir / "bert-base-uncased", tmp_path / "bert-base-uncased", dirs_exist_ok=True)
        (tmp_path / "config.json").write_text(json.dumps(config))
        with pytest.raises(ConversionError, match=message):
            convert_original_checkpoint(fixture_dir / "blap_stage2.ckpt", tmp_path / "config.json", tmp_path / "out")
    bert = json.loads((fixture_dir / "bert-base-uncased" / "config.json").read_text())
    (tmp_path / "bert.json").write_text(json.dumps({**bert, "num_hidden_layers": 12}))
    (tmp_path / "bert-12").mkdir()
    shutil.copy(tmp_path / "bert.json", tmp_path / "bert-12" / "config.json")
    with pytest.raises(ConversionError, match="num_hidden_layers: 4 in the checkpoint, 12 expected"):
        convert_original_checkpoint(
            fixture_dir / "blap_stage2.ckpt",
            fixture_dir / "config.json",
            tmp_path / "out",
            qformer_model=str(tmp_path / "bert-12"),
        )
    assert no_leftovers(tmp_path, "out")


def test_failure_while_writing_leaves_nothing(fixture_dir, tmp_path, monkeypatch):
    def fail(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(BlapProcessor, "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        convert_original_checkpoint(fixture_dir / "blap_stage2.ckpt", fixture_dir / "config.json", tmp_path / "out")
    assert no_leftovers(tmp_path, "out")


def test_existing_output_is_only_replaced_on_request(fixture_dir, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("user data")
    with pytest.raises(ConversionError, match="exists and is not empty; pass --overwrite"):
        convert_original_checkpoint(fixture_dir / "blap_stage2.ckpt", fixture_dir / "config.json", output)
    assert (output / "keep.txt").read_text() == "user data"
    convert_original_checkpoint(fixture_dir / "blap_stage2.ckpt", fixture_dir / "config.json", output, overwrite=True)
    assert not (output / "keep.txt").exists() and (output / "model.safetensors").is_file()
    assert {p.name for p in tmp_path.iterdir()} == {"out"}


def test_offline_hub_lookups_fail_clearly(fixture_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConversionError, match="Could not download the original BLAP release 'Tino3141/blap'"):
        convert_original_checkpoint(None, None, tmp_path / "out", from_hub="Tino3141/blap")
    with pytest.raises(ConversionError, match="Cannot load the language model config from 'google/flan-t5-xl'"):
        convert_original_checkpoint(
            fixture_dir / "blap_stage2.ckpt",
            fixture_dir / "config.json",
            tmp_path / "out",
            text_model="google/flan-t5-xl",
        )
    assert no_leftovers(tmp_path, "out")
    with pytest.raises(
        ConversionError, match="The conversion is complete in .*, but uploading it to 'me/blap' failed"
    ):
        convert_original_checkpoint(
            fixture_dir / "blap_stage2.ckpt", fixture_dir / "config.json", tmp_path / "out", push_to_hub="me/blap"
        )
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_command_line_errors_exit_with_a_message(fixture_dir, tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "none.ckpt"), "--config", str(fixture_dir / "config.json"),
                 "--output-dir", str(tmp_path / "out")]) == 2  # fmt: skip
    assert (
        f"blap convert-original: error: Checkpoint {tmp_path / 'none.ckpt'} does not exist." in capsys.readouterr().err
    )
    assert main(["--output-dir", str(tmp_path / "out")]) == 2
    assert "Both --checkpoint and --config are needed (or --from-hub)" in capsys.readouterr().err


def test_subcommand_mounts_in_a_blap_style_parser(fixture_dir, tmp_path):
    args = build_parser().parse_args(
        ["convert-original", "--checkpoint", "c.ckpt", "--config", "c.json", "--output-dir", "o", "--from-hub"]
    )
    assert args.handler == f"{run.__module__}:{run.__name__}" and args.from_hub == "Tino3141/blap"
    assert args.dtype == "float32" and args.max_shard_size == "5GB"
    assert args.text_model is None and args.qformer_model is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["convert-original", "--output-dir", "o", "--dtype", "float64"])


# ------------------------------------------------------------------------- acceptance: another original checkpoint

SECOND_DIMS = OriginalDims(
    num_query_tokens=12,
    qformer_hidden=96,
    qformer_layers=6,
    qformer_intermediate=160,
    t5_vocab=226,
    t5_d_model=48,
    t5_d_kv=16,
    t5_heads=3,
    t5_d_ff=96,
    t5_layers=3,
    t5_decoder_layers=2,
)
SECOND_PROMPT = "Describe the instruments and the mood of this piece."
SECOND_GENERATION = {"num_beams": 4, "max_new_tokens": 15, "min_length": 8, "length_penalty": 0.7}
SECOND_REPETITION_PENALTY = 1.2


@pytest.fixture(scope="module")
def second_release(fixture_dir, tmp_path_factory):
    """
    A second original-format release built here: random float32 weights with other dimensions than the fixture
    (6 Q-Former layers with 4 heads, 12 query tokens, another T5), its own config.json, BERT and T5 folders.
    """
    folder = tmp_path_factory.mktemp("second-release")
    state_dict = random_original_state_dict(SECOND_DIMS, seed=1)
    torch.save(lightning_checkpoint(state_dict), folder / "blap_stage2.ckpt")
    config = json.loads((fixture_dir / "config.json").read_text())
    config.update(num_query_tokens=12, prompt=SECOND_PROMPT, embed_dim=32, max_txt_len=40)
    config["LLM"] = {"t5_model": "flan-t5-other", "repetition_penalty": SECOND_REPETITION_PENALTY}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "bert-base-uncased").mkdir()
    bert = BertConfig.from_pretrained(fixture_dir / "bert-base-uncased")
    bert.update({"hidden_size": 96, "num_hidden_layers": 6, "num_attention_heads": 4, "intermediate_size": 160})
    bert.save_pretrained(folder / "bert-base-uncased")
    shutil.copytree(fixture_dir / "flan-t5-tiny", folder / "flan-t5-other")
    t5 = T5Config.from_pretrained(fixture_dir / "flan-t5-tiny")
    t5.update({"d_model": 48, "d_kv": 16, "num_heads": 3, "d_ff": 96, "num_layers": 3, "num_decoder_layers": 2})
    (folder / "flan-t5-other" / "config.json").write_text(t5.to_json_string())
    return folder, state_dict, bert, t5


@pytest.mark.slow
def test_second_checkpoint_reproduces_its_reference_outputs(second_release, reference, tmp_path):
    folder, state_dict, bert, t5 = second_release
    output = convert_original_checkpoint(folder / "blap_stage2.ckpt", folder / "config.json", tmp_path / "converted")
    model = BlapForConditionalGeneration.from_pretrained(output)
    processor = BlapProcessor.from_pretrained(output)
    assert model.config.qformer_config.num_attention_heads == 4 and model.config.num_query_tokens == 12
    assert model.generation_config.repetition_penalty == SECOND_REPETITION_PENALTY

    clips = [*reference["audio"], reference["audio"][1][: 4 * 48_000]]  # a batch of three, one short clip
    captions = ["Calm jazz.", "A loud rock song with distorted guitars and drums.", "Piano."]
    inputs = processor(audio=clips, sampling_rate=48_000, captions=captions)
    assert processor.decode(inputs["input_ids"][0], skip_special_tokens=True) == SECOND_PROMPT
    with torch.no_grad():
        outputs = model(**inputs)

    from transformers_blap import BlapFeatureExtractor

    log_mel = BlapFeatureExtractor()(clips, sampling_rate=48_000)["input_features"]
    assert torch.equal(log_mel, inputs["input_features"])
    modules = reference_modules(state_dict, bert, t5)
    expected = reference_forward(
        modules,
        log_mel,
        inputs["input_ids"],
        inputs["attention_mask"],
        labels=inputs["labels"],
        decoder_attention_mask=inputs["decoder_attention_mask"],
    )
    assert outputs.audio_embeds.shape == (3, 32, 768) and outputs.logits.shape[:2] == inputs["labels"].shape
    assert max_abs(outputs.audio_embeds, expected["audio_embeds"]) < ATOL
    assert max_abs(outputs.qformer_outputs.last_hidden_state, expected["qformer_last_hidden_state"]) < ATOL
    assert max_abs(outputs.language_model_inputs, expected["inputs_t5"]) < ATOL
    assert max_abs(outputs.logits, expected["logits"]) < ATOL
    assert max_abs(outputs.loss, expected["loss"]) < LOSS_ATOL

    generate_inputs = {k: inputs[k] for k in ("input_features", "input_ids", "attention_mask")}
    generated = model.generate(**generate_inputs, **SECOND_GENERATION)
    reference_ids = reference_generate(
        modules, expected, repetition_penalty=SECOND_REPETITION_PENALTY, **SECOND_GENERATION
    )
    eos = processor.tokenizer.eos_token_id
    assert ids_until_eos(generated, eos) == ids_until_eos(reference_ids, eos)
    assert len({tuple(row) for row in ids_until_eos(generated, eos)}) == 3
