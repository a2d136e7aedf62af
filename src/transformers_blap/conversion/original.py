"""
Convert the original BLAP release (a PyTorch Lightning `.ckpt` plus its `config.json`) into a transformers folder:
`BlapForConditionalGeneration` weights (safetensors), config, generation config, `BlapProcessor` files, model card.

The original stage-2 model (`BLAP2_Stage2` of ETH-DISCO/blap) holds:

| original key prefix                | here                                   |
| ---------------------------------- | -------------------------------------- |
| `audio_encoder.audio_branch.`      | `audio_encoder.` (`ClapAudioModel`, see `htsat.py`) |
| `ln_audio.`                        | `audio_layernorm.`                     |
| `query_tokens`                     | `query_tokens`                         |
| `qformer.bert.`                    | `qformer.` (`Blip2QFormerModel`)       |
| `t5_proj.`                         | `language_projection.`                 |
| `t5_model.`                        | `language_model.` (`T5ForConditionalGeneration`, untied head) |

and, not part of the captioner: CLAP's contrastive `audio_encoder.audio_projection.*`, the BERT `position_ids` buffer,
HTS-AT's STFT / mel kernels, window masks and classification head (see `htsat.HTSAT_NON_MODEL_KEYS`), and T5's
`encoder.embed_tokens` / `decoder.embed_tokens`, which are copies of `shared` (checked, then tied).

Every dimension is read from the tensors and cross-checked with the original config and with the configs of the
Q-Former base (`bert-base-uncased`) and the language model (`LLM.t5_model`). Weights are read with
`torch.load(weights_only=True, mmap=True)` and never copied unless a dtype change asks for it, so converting the ~12 GB
release needs about one copy of the weights in memory.
"""

import argparse
import json
import logging
import os
import pickle
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
from huggingface_hub.errors import HfHubHTTPError
from transformers import (
    AutoTokenizer,
    BertConfig,
    Blip2QFormerConfig,
    GenerationConfig,
    PreTrainedTokenizerBase,
    T5Config,
)

from ..configuration_blap import BlapConfig
from ..feature_extraction_blap import BlapFeatureExtractor
from ..hub import PAPER_RESULTS, push_folder, render_model_card
from ..modeling_blap import BlapForConditionalGeneration
from ..processing_blap import BlapProcessor
from .htsat import convert_htsat_state_dict, htsat_config_from_state_dict, renamed
from .parts import exact_gelu_t5_config, qformer_config_from_bert
from .validation import ConversionError, check_state_dict_matches, format_key_problems

logger = logging.getLogger(__name__)

DEFAULT_HUB_REPO = "Tino3141/blap"
DEFAULT_QFORMER_MODEL = "bert-base-uncased"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# The release's usage example (ETH-DISCO/blap README): `predict_answers(audio, prompt, max_len=40, min_len=30,
# num_beams=10)`, i.e. beam search with `max_new_tokens=40`, `min_length=30` and `predict_answers`' default
# `length_penalty=-1`. The repetition penalty comes from the release config (`LLM.repetition_penalty`).
RELEASE_GENERATION_DEFAULTS = {
    "do_sample": False,
    "num_beams": 10,
    "max_new_tokens": 40,
    "min_length": 30,
    "length_penalty": -1.0,
}

# Original config.json schema (`BLAP2_Stage2_Config`): dotted path -> accepted types. Required unless optional.
_NUMBER = (int, float)
ORIGINAL_CONFIG_SCHEMA: dict[str, tuple[type, ...]] = {
    "audio_encoder": (dict,),
    "audio_encoder.embed_dim_audio": (int,),
    "audio_encoder.audio_cfg": (dict,),
    "audio_encoder.audio_cfg.model_type": (str,),
    "audio_encoder.audio_cfg.model_name": (str,),
    "audio_encoder.audio_cfg.sample_rate": (int,),
    "audio_encoder.audio_cfg.clip_samples": (int,),
    "audio_encoder.audio_cfg.mel_bins": (int,),
    "audio_encoder.audio_cfg.window_size": (int,),
    "audio_encoder.audio_cfg.hop_size": (int,),
    "audio_encoder.audio_cfg.fmin": _NUMBER,
    "audio_encoder.audio_cfg.fmax": _NUMBER,
    "LLM": (dict,),
    "LLM.t5_model": (str,),
    "LLM.repetition_penalty": _NUMBER,
    "num_query_tokens": (int,),
    "embed_dim": (int,),
    "max_txt_len": (int,),
    "prompt": (str,),
}
# Keys the original reads but that do not shape the converted model (training-time initialisation, lemmatizer).
ORIGINAL_CONFIG_OPTIONAL = {
    "apply_lemmatizer",
    "atRandom",
    "qFormer_ckpt",
    "qTokens",
    "ln_audio",
    "audio_encoder.pretrained",
    "audio_encoder.audio_cfg.audio_length",
    "audio_encoder.audio_cfg.class_num",
}

HTSAT_PREFIX = "audio_encoder.audio_branch."
# Original keys that are not weights of BlapForConditionalGeneration (besides HTS-AT's own, see htsat.py).
NON_MODEL_KEYS = (
    re.compile(r"audio_encoder\.audio_projection\.\d+\.(weight|bias)"),
    re.compile(r"qformer\.bert\.embeddings\.position_ids"),
)
_QFORMER_RENAMES = (
    (re.compile(r"qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)"), r"qformer.layernorm.\1"),
    (
        re.compile(
            r"qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)"
        ),
        r"qformer.encoder.layer.\1.\2.attention.\3.\4",
    ),
    (
        re.compile(
            r"qformer\.bert\.encoder\.layer\.(\d+)\.(attention\.output|crossattention\.output|intermediate_query|output_query)"
            r"\.(dense|LayerNorm)\.(weight|bias)"
        ),
        r"qformer.encoder.layer.\1.\2.\3.\4",
    ),
)
_TOP_LEVEL_RENAMES = {
    "query_tokens": "query_tokens",
    "ln_audio.weight": "audio_layernorm.weight",
    "ln_audio.bias": "audio_layernorm.bias",
    "t5_proj.weight": "language_projection.weight",
    "t5_proj.bias": "language_projection.bias",
}
_T5_EMBEDDING_COPIES = ("t5_model.encoder.embed_tokens.weight", "t5_model.decoder.embed_tokens.weight")


# --------------------------------------------------------------------------------------------------- reading inputs


def load_original_config(path: str | os.PathLike) -> dict[str, Any]:
    """
    Read and validate an original BLAP `config.json` (the `BLAP2_Stage2_Config` schema).

    Args:
        path (`str` or `os.PathLike`): the release's `config.json`.

    Returns:
        `dict`: the parsed config.

    Raises:
        [`ConversionError`]: the file is missing or not JSON, required fields are missing or have the wrong type, or
            it describes something this converter does not support (an audio encoder other than HTS-AT).
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"Original config {path} does not exist.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConversionError(f"Original config {path} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise ConversionError(f"Original config {path} must hold a JSON object, got {type(config).__name__}.")

    problems = []
    for dotted, types in ORIGINAL_CONFIG_SCHEMA.items():
        found, value = _lookup(config, dotted)
        if not found:
            problems.append(f"missing `{dotted}`")
        elif not isinstance(value, types) or isinstance(value, bool):
            expected = " or ".join(t.__name__ for t in types)
            problems.append(f"`{dotted}` must be {expected}, got {type(value).__name__} {value!r}")
    if problems:
        raise ConversionError(
            f"Original config {path} does not follow the BLAP release's schema:\n  " + "\n  ".join(problems)
        )
    known = set(ORIGINAL_CONFIG_SCHEMA) | ORIGINAL_CONFIG_OPTIONAL
    unknown = sorted(key for key in _dotted_keys(config) if key not in known)
    if unknown:
        logger.warning("Original config %s has fields this converter does not use: %s", path, ", ".join(unknown))
    audio_cfg = config["audio_encoder"]["audio_cfg"]
    if audio_cfg["model_type"] != "HTSAT":
        raise ConversionError(
            f"Original config {path}: audio_encoder.audio_cfg.model_type is {audio_cfg['model_type']!r}; only the"
            " HTS-AT audio encoder ('HTSAT') of the BLAP release is supported."
        )
    if config.get("apply_lemmatizer"):
        logger.warning(
            "Original config %s sets apply_lemmatizer: the original lemmatizes captions with spaCy after decoding;"
            " the converted model returns the captions as generated.",
            path,
        )
    return config


def _lookup(config: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    """`(True, value)` for a dotted path into nested dicts, `(False, None)` when any part is missing."""
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False, None
        value = value[part]
    return True, value


def _dotted_keys(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every leaf and branch of nested dicts as dotted paths."""
    keys = []
    for key, value in config.items():
        keys.append(prefix + key)
        if isinstance(value, Mapping):
            keys.extend(_dotted_keys(value, prefix + key + "."))
    return keys


def load_original_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """
    Memory-map the `state_dict` of an original BLAP Lightning checkpoint, without unpickling anything but tensors and
    plain containers.

    Args:
        path (`str` or `os.PathLike`): the release's `.ckpt` (a Lightning checkpoint, or a bare state dict).

    Returns:
        `dict[str, torch.Tensor]`: the weights, still backed by the file (nothing is read until used).

    Raises:
        [`ConversionError`]: the file is missing, truncated or not a PyTorch zip checkpoint, holds pickled objects
            other than tensors, or holds no state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"Checkpoint {path} does not exist.")
    if not zipfile.is_zipfile(path):
        raise ConversionError(
            f"Checkpoint {path} is not a PyTorch zip checkpoint: it is truncated, corrupted, or in the legacy"
            " (pre-1.6) format that cannot be memory-mapped. Download it again."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        what = f" (first one: {found.group(1)})" if found else ""
        raise ConversionError(
            f"Checkpoint {path} holds pickled Python objects other than weights{what}. They are never unpickled here:"
            " the original release stores only tensors and plain data, so this file is not (only) a BLAP checkpoint."
        ) from error
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise ConversionError(f"Checkpoint {path} cannot be read (truncated or corrupted?): {error}") from error
    if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint:
        state_dict = checkpoint["state_dict"]
    else:
        state_dict = checkpoint
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise ConversionError(
            f"Checkpoint {path} holds no state dict: expected a Lightning checkpoint with a 'state_dict' entry or a"
            f" mapping of names to tensors, got {type(checkpoint).__name__}."
        )
    not_tensors = [str(key) for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ConversionError(
            format_key_problems(f"Checkpoint {path} (entries that are not tensors)", unknown=not_tensors)
        )
    return dict(state_dict)


def resolve_pretrained_source(name_or_dir: str, config_dir: Path) -> str:
    """
    Where to read a base model's config / tokenizer from: `name_or_dir` itself when it is a folder, else a folder of
    that name beside the original config (as in the fixture), else the Hub id `name_or_dir`.

    Args:
        name_or_dir (`str`): e.g. `"google/flan-t5-xl"`, `"bert-base-uncased"` or a path.
        config_dir (`Path`): the folder of the original `config.json`.

    Returns:
        `str`: a local folder or a Hub id.
    """
    if Path(name_or_dir).is_dir():
        return str(Path(name_or_dir))
    beside = config_dir / name_or_dir
    if beside.is_dir():
        return str(beside)
    return name_or_dir


def _load_base(kind: str, source: str, loader) -> Any:
    """Call `loader(source)` with a clear error when `source` is neither a usable folder nor reachable on the Hub."""
    try:
        return loader(source)
    except (OSError, ValueError) as error:
        raise ConversionError(
            f"Cannot load the {kind} from {source!r}: no folder of that name exists (given directly or beside the"
            f" original config), and the Hugging Face Hub did not provide it (offline?). Pass a local folder with"
            f" the matching option. Cause: {error}"
        ) from error


def download_original_release(
    repo_id: str = DEFAULT_HUB_REPO,
    revision: str | None = None,
    base_models: Sequence[str] = (),
    **hub_kwargs,
) -> tuple[Path, Path]:
    """
    Download the original release (its single `.ckpt` and `config.json`) from the Hugging Face Hub.

    Args:
        repo_id (`str`, *optional*, defaults to `"Tino3141/blap"`): the authors' repository.
        revision (`str`, *optional*): a branch, tag or commit; the default branch when omitted.
        base_models (`Sequence[str]`, *optional*): folders of the repository to download too, when it has them: the
            base models that the converter looks up beside the config (`LLM.t5_model`, `bert-base-uncased`).
        hub_kwargs: further `snapshot_download` arguments (`cache_dir`, `token`, `local_files_only`).

    Returns:
        `tuple[Path, Path]`: the local checkpoint and config paths (in the Hub cache).

    Raises:
        [`ConversionError`]: without network (or with `HF_HUB_OFFLINE=1` and nothing cached), or when the repository
            does not hold exactly one `.ckpt` and a `config.json`.
    """
    patterns = ["*.ckpt", "config.json", *(f"{name}/*" for name in base_models)]
    try:
        folder = Path(
            huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=patterns, **hub_kwargs)
        )
    except (OSError, ValueError, HfHubHTTPError) as error:
        raise ConversionError(
            f"Could not download the original BLAP release {repo_id!r} from the Hugging Face Hub ({error})."
            " Without network, fetch its .ckpt and config.json elsewhere and pass --checkpoint and --config."
        ) from error
    checkpoints = sorted(folder.rglob("*.ckpt"))
    config = folder / "config.json"
    if len(checkpoints) != 1 or not config.is_file():
        raise ConversionError(
            f"Hub repository {repo_id!r} should hold one .ckpt and a config.json; found checkpoints"
            f" {[str(p.relative_to(folder)) for p in checkpoints]} and config.json: {config.is_file()}."
        )
    return checkpoints[0], config


# ------------------------------------------------------------------------------------------- deriving configuration


def _count_layers(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    """Number of consecutive layer indices `N` in keys matching `pattern` (a regex with one `(\\d+)` group)."""
    regex = re.compile(pattern)
    indices = {int(match.group(1)) for key in state_dict if (match := regex.match(key)) is not None}
    if indices and sorted(indices) != list(range(len(indices))):
        raise ConversionError(f"Layers of {pattern!r} are not numbered 0, 1, ...: {sorted(indices)}.")
    return len(indices)


def _require(state_dict: Mapping[str, torch.Tensor], key: str, ndim: int) -> torch.Tensor:
    if key not in state_dict:
        raise ConversionError(f"The checkpoint lacks {key!r}, which the conversion needs to size the model.")
    tensor = state_dict[key]
    if tensor.ndim != ndim:
        raise ConversionError(f"{key!r} has shape {tuple(tensor.shape)}; expected {ndim} dimensions.")
    return tensor


def _rows(state_dict: Mapping[str, torch.Tensor], key: str) -> int | None:
    """First dimension of an optional tensor."""
    return state_dict[key].shape[0] if key in state_dict else None


def qformer_config_from_original(
    state_dict: Mapping[str, torch.Tensor], base_config: BertConfig, audio_hidden_size: int
) -> Blip2QFormerConfig:
    """
    The stage-2 Q-Former's configuration: sizes from the tensors, the rest (heads, activation, LayerNorm epsilon,
    dropout) from the BERT it was built from, each size cross-checked with that BERT config.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): the original weights.
        base_config (`BertConfig`): the config of `bert-base-uncased` (or the stand-in the original was built from).
        audio_hidden_size (`int`): the width of the audio tokens the cross-attention reads.

    Returns:
        `Blip2QFormerConfig` without text input (`use_qformer_text_input=False`: stage 2 has no text FFN).
    """
    hidden_size = _require(state_dict, "qformer.bert.embeddings.LayerNorm.weight", 1).shape[0]
    num_layers = _count_layers(state_dict, r"qformer\.bert\.encoder\.layer\.(\d+)\.")
    intermediate_size = _require(state_dict, "qformer.bert.encoder.layer.0.intermediate_query.dense.weight", 2).shape[
        0
    ]
    cross_layers = sorted(
        {
            int(m.group(1))
            for key in state_dict
            if (m := re.match(r"qformer\.bert\.encoder\.layer\.(\d+)\.crossattention\.", key))
        }
    )
    if not cross_layers or cross_layers[0] != 0:
        raise ConversionError(f"The Q-Former must cross-attend in layer 0; the checkpoint has it in {cross_layers}.")
    frequency = cross_layers[1] - cross_layers[0] if len(cross_layers) > 1 else num_layers
    if cross_layers != list(range(0, num_layers, frequency)):
        raise ConversionError(
            f"Q-Former cross-attention layers {cross_layers} are not every {frequency}-th of {num_layers} layers."
        )
    encoder_width = _require(state_dict, "qformer.bert.encoder.layer.0.crossattention.self.key.weight", 2).shape[1]
    problems = []
    for name, derived, expected in (
        ("hidden_size", hidden_size, base_config.hidden_size),
        ("num_hidden_layers", num_layers, base_config.num_hidden_layers),
        ("intermediate_size", intermediate_size, base_config.intermediate_size),
        ("cross-attention input width", encoder_width, audio_hidden_size),
    ):
        if derived != expected:
            problems.append(f"{name}: {derived} in the checkpoint, {expected} expected")
    if hidden_size % base_config.num_attention_heads != 0:
        problems.append(f"hidden size {hidden_size} is not divisible by {base_config.num_attention_heads} heads")
    if problems:
        raise ConversionError(
            "The Q-Former weights do not match its base BERT config (--qformer-model) and the audio encoder: "
            + "; ".join(problems)
            + "."
        )
    # Sizes equal BERT's (checked above).
    return qformer_config_from_bert(
        base_config,
        vocab_size=base_config.vocab_size,
        initializer_range=base_config.initializer_range,
        cross_attention_frequency=frequency,
        encoder_hidden_size=encoder_width,
        use_qformer_text_input=False,
    )


def text_config_from_original(state_dict: Mapping[str, torch.Tensor], base_config: T5Config) -> T5Config:
    """
    The language model's configuration: the base T5 config (`LLM.t5_model`), every size cross-checked with the
    tensors, and the exact (erf) GELU the original forces (`t5_config.dense_act_fn = "gelu"`).

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): the original weights.
        base_config (`T5Config`): the config of the T5 named by the original config (or `--text-model`).

    Returns:
        `T5Config`.
    """
    shared = _require(state_dict, "t5_model.shared.weight", 2)
    query = _require(state_dict, "t5_model.encoder.block.0.layer.0.SelfAttention.q.weight", 2)
    bias = _require(state_dict, "t5_model.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", 2)
    gated = "t5_model.encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in state_dict
    ffn = "wi_0" if gated else "wi"
    d_ff = _require(state_dict, f"t5_model.encoder.block.0.layer.1.DenseReluDense.{ffn}.weight", 2).shape[0]
    problems = []
    for name, derived, expected in (
        ("vocab_size", shared.shape[0], base_config.vocab_size),
        ("d_model", shared.shape[1], base_config.d_model),
        ("num_layers", _count_layers(state_dict, r"t5_model\.encoder\.block\.(\d+)\."), base_config.num_layers),
        (
            "num_decoder_layers",
            _count_layers(state_dict, r"t5_model\.decoder\.block\.(\d+)\."),
            base_config.num_decoder_layers,
        ),
        ("num_heads", bias.shape[1], base_config.num_heads),
        ("num_heads * d_kv", query.shape[0], base_config.num_heads * base_config.d_kv),
        ("relative_attention_num_buckets", bias.shape[0], base_config.relative_attention_num_buckets),
        ("d_ff", d_ff, base_config.d_ff),
        ("gated feed-forward", gated, base_config.is_gated_act),
    ):
        if derived != expected:
            problems.append(f"{name}: {derived} in the checkpoint, {expected} in the config")
    if problems:
        raise ConversionError(
            "The T5 weights do not match the language model's config (LLM.t5_model / --text-model): "
            + "; ".join(problems)
            + "."
        )
    return exact_gelu_t5_config(base_config)


def blap_config_from_original(
    original_config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    qformer_base_config: BertConfig,
    text_base_config: T5Config,
) -> BlapConfig:
    """
    Build the [`BlapConfig`] of an original checkpoint, every dimension derived from its tensors and cross-checked
    with the original config and the base configs.

    Args:
        original_config (`Mapping[str, Any]`): from [`load_original_config`].
        state_dict (`Mapping[str, torch.Tensor]`): from [`load_original_checkpoint`].
        qformer_base_config (`BertConfig`): the Q-Former's base BERT config.
        text_base_config (`T5Config`): the language model's config.

    Returns:
        [`BlapConfig`].
    """
    audio_cfg = original_config["audio_encoder"]["audio_cfg"]
    audio_config = htsat_config_from_state_dict(state_dict, HTSAT_PREFIX, variant=audio_cfg["model_name"])
    query_tokens = _require(state_dict, "query_tokens", 3)
    ln_audio = _require(state_dict, "ln_audio.weight", 1)
    problems = []
    for name, derived, expected in (
        (
            "audio_encoder.embed_dim_audio",
            audio_config.hidden_size,
            original_config["audio_encoder"]["embed_dim_audio"],
        ),
        ("audio_encoder.audio_cfg.mel_bins", audio_config.num_mel_bins, audio_cfg["mel_bins"]),
        ("num_query_tokens", query_tokens.shape[1], original_config["num_query_tokens"]),
        ("ln_audio width", ln_audio.shape[0], audio_config.hidden_size),
        (
            "audio_encoder.audio_cfg.class_num",
            _rows(state_dict, HTSAT_PREFIX + "head.weight"),
            audio_cfg.get("class_num"),
        ),
    ):
        if expected is None or derived is None:
            continue
        if derived != expected:
            problems.append(f"{name}: {expected} in the config, {derived} in the checkpoint")
    if problems:
        raise ConversionError("The checkpoint does not match its original config: " + "; ".join(problems) + ".")
    qformer_config = qformer_config_from_original(state_dict, qformer_base_config, audio_config.hidden_size)
    if query_tokens.shape[2] != qformer_config.hidden_size:
        raise ConversionError(
            f"query_tokens have width {query_tokens.shape[2]}, the Q-Former {qformer_config.hidden_size}."
        )
    text_config = text_config_from_original(state_dict, text_base_config)
    config = BlapConfig(
        audio_config=audio_config,
        qformer_config=qformer_config,
        text_config=text_config,
        num_query_tokens=query_tokens.shape[1],
        prompt=original_config["prompt"],
        embed_dim=original_config["embed_dim"],
        max_txt_len=original_config["max_txt_len"],
    )
    if config.text_config.dense_act_fn != "gelu":
        raise ConversionError("Internal error: the converted T5 config lost the exact GELU activation.")
    return config


def feature_extractor_from_original(
    original_config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
) -> BlapFeatureExtractor:
    """
    The [`BlapFeatureExtractor`] equal to the original's in-model front end (torchlibrosa), from `audio_cfg`; its mel
    filter bank and STFT size are checked against the kernels stored in the checkpoint.

    Args:
        original_config (`Mapping[str, Any]`): from [`load_original_config`].
        state_dict (`Mapping[str, torch.Tensor]`): from [`load_original_checkpoint`].

    Returns:
        [`BlapFeatureExtractor`].
    """
    audio_cfg = original_config["audio_encoder"]["audio_cfg"]
    feature_extractor = BlapFeatureExtractor(
        feature_size=audio_cfg["mel_bins"],
        sampling_rate=audio_cfg["sample_rate"],
        fft_window_size=audio_cfg["window_size"],
        hop_length=audio_cfg["hop_size"],
        max_length_s=audio_cfg["clip_samples"] / audio_cfg["sample_rate"],
        frequency_min=audio_cfg["fmin"],
        frequency_max=audio_cfg["fmax"],
    )
    stft_key = HTSAT_PREFIX + "spectrogram_extractor.stft.conv_real.weight"
    if stft_key in state_dict:
        expected = (audio_cfg["window_size"] // 2 + 1, 1, audio_cfg["window_size"])
        if tuple(state_dict[stft_key].shape) != expected:
            raise ConversionError(
                f"{stft_key} has shape {tuple(state_dict[stft_key].shape)}, but audio_cfg.window_size"
                f" {audio_cfg['window_size']} gives {expected}."
            )
    mel_key = HTSAT_PREFIX + "logmel_extractor.melW"
    if mel_key in state_dict:
        stored = state_dict[mel_key].to(torch.float32)
        filters = feature_extractor.mel_filters
        if stored.shape != filters.shape or not torch.allclose(
            stored, filters, rtol=0, atol=1e-6 * filters.abs().max()
        ):
            raise ConversionError(
                f"{mel_key} differs from the mel filter bank that audio_cfg describes (sample_rate, window_size,"
                " mel_bins, fmin, fmax): the config does not belong to this checkpoint."
            )
    return feature_extractor


# ----------------------------------------------------------------------------------------------- converting weights


def convert_original_state_dict(
    state_dict: Mapping[str, torch.Tensor], scale_decoder_outputs: bool = False
) -> dict[str, torch.Tensor]:
    """
    Rename an original BLAP stage-2 state dict into [`BlapForConditionalGeneration`]'s names. Tensors are not copied
    (except the split HTS-AT query/key/value projections).

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): from [`load_original_checkpoint`].
        scale_decoder_outputs (`bool`, *optional*, defaults to `False`): whether the language model ties its head to
            the embeddings (original T5); then the checkpoint's `lm_head` must equal `shared`. Flan-T5 does not.

    Returns:
        `dict[str, torch.Tensor]`, including `language_model.encoder.embed_tokens.weight` and
        `language_model.decoder.embed_tokens.weight` (the `shared` tensor itself, as the model ties them).

    Raises:
        [`ConversionError`]: listing every unknown key, and when the embedding copies differ from `shared`.
    """
    converted = convert_htsat_state_dict(state_dict, HTSAT_PREFIX)
    converted = {f"audio_encoder.{key}": tensor for key, tensor in converted.items()}
    unknown = []
    for key, tensor in state_dict.items():
        if key.startswith(HTSAT_PREFIX) or any(pattern.fullmatch(key) for pattern in NON_MODEL_KEYS):
            continue
        if key in _TOP_LEVEL_RENAMES:
            converted[_TOP_LEVEL_RENAMES[key]] = tensor
        elif key in _T5_EMBEDDING_COPIES:
            continue
        elif key.startswith("t5_model."):
            converted["language_model." + key[len("t5_model.") :]] = tensor
        elif (target := renamed(key, _QFORMER_RENAMES)) is not None:
            converted[target] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(format_key_problems("The original checkpoint", unknown=unknown))

    shared = state_dict.get("t5_model.shared.weight")
    if shared is not None:
        copies = list(_T5_EMBEDDING_COPIES) + (["t5_model.lm_head.weight"] if scale_decoder_outputs else [])
        differing = [key for key in copies if key in state_dict and not torch.equal(state_dict[key], shared)]
        if differing:
            raise ConversionError(
                f"{differing} differ from t5_model.shared.weight, but the T5 language model ties them to it."
            )
        converted["language_model.encoder.embed_tokens.weight"] = shared
        converted["language_model.decoder.embed_tokens.weight"] = shared
        if scale_decoder_outputs:
            converted["language_model.lm_head.weight"] = shared
    return converted


def float32_modules(model: BlapForConditionalGeneration, dtype: torch.dtype) -> set[str]:
    """
    The modules that `from_pretrained(dtype=dtype)` keeps in float32 (`_keep_in_fp32_modules` under float16,
    `_keep_in_fp32_modules_strict` under float16 and bfloat16), so the converted weights are stored as they load.
    """
    modules = set()
    if dtype == torch.float16:
        modules |= set(model._keep_in_fp32_modules or ())
    if dtype in (torch.float16, torch.bfloat16):
        modules |= set(model._keep_in_fp32_modules_strict or ())
    return modules


def _cast(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype, float32: set[str]) -> dict:
    """Floating tensors to `dtype`, those of the `float32` modules to float32; other tensors unchanged."""
    cast = {}
    for key, tensor in state_dict.items():
        if not tensor.is_floating_point():
            cast[key] = tensor
            continue
        cast[key] = tensor.to(torch.float32 if float32 & set(key.split(".")) else dtype)
    # Tensors that were one object stay one object (the tied T5 embeddings).
    shared = "language_model.shared.weight"
    for key in ("language_model.encoder.embed_tokens.weight", "language_model.decoder.embed_tokens.weight"):
        if state_dict.get(key) is state_dict.get(shared):
            cast[key] = cast[shared]
    return cast


def build_converted_model(
    config: BlapConfig, state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32
) -> BlapForConditionalGeneration:
    """
    Create a [`BlapForConditionalGeneration`] holding the converted weights, without a second copy: the model is
    built on the meta device and the (memory-mapped) tensors are assigned to it.

    Args:
        config ([`BlapConfig`]): from [`blap_config_from_original`].
        state_dict (`Mapping[str, torch.Tensor]`): from [`convert_original_state_dict`].
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): the weights' dtype in the converted model.

    Returns:
        [`BlapForConditionalGeneration`] in eval mode.

    Raises:
        [`ConversionError`]: listing every missing, unexpected or mis-shaped key.
    """
    with torch.device("meta"):
        model = BlapForConditionalGeneration(config)
    expected = {key: tensor.shape for key, tensor in model.state_dict().items()}
    check_state_dict_matches(state_dict, expected, "The original checkpoint (in transformers names)")
    model.load_state_dict(_cast(state_dict, dtype, float32_modules(model, dtype)), strict=True, assign=True)
    model.tie_weights()
    language_model = model.language_model
    if config.text_config.scale_decoder_outputs != (language_model.lm_head.weight is language_model.shared.weight):
        raise ConversionError("Internal error: the converted language model's head tying does not match its config.")
    model.config.dtype = dtype
    return model.eval()


def generation_config_from_original(original_config: Mapping[str, Any], config: BlapConfig) -> GenerationConfig:
    """
    The converted generation defaults: the release's usage example (`RELEASE_GENERATION_DEFAULTS`) and its config's
    `LLM.repetition_penalty`, with the language model's special tokens.
    """
    text_config = config.text_config
    return GenerationConfig(
        decoder_start_token_id=text_config.decoder_start_token_id,
        eos_token_id=text_config.eos_token_id,
        pad_token_id=text_config.pad_token_id,
        repetition_penalty=float(original_config["LLM"]["repetition_penalty"]),
        **RELEASE_GENERATION_DEFAULTS,
    )


# ------------------------------------------------------------------------------------------------------ the command


def convert_original_checkpoint(
    checkpoint: str | os.PathLike | None,
    config: str | os.PathLike | None,
    output_dir: str | os.PathLike,
    text_model: str | None = None,
    qformer_model: str | None = None,
    dtype: str = "float32",
    max_shard_size: str | int = "5GB",
    push_to_hub: str | None = None,
    from_hub: str | None = None,
    overwrite: bool = False,
) -> Path:
    """
    Convert the original BLAP release into a complete transformers folder.

    Writes `output_dir` atomically: everything goes to a temporary folder beside it, renamed into place only when
    complete, so a failure never leaves a half-written `output_dir`.

    Args:
        checkpoint (`str` or `os.PathLike`, *optional*): the original Lightning `.ckpt` (omit with `from_hub`).
        config (`str` or `os.PathLike`, *optional*): the original `config.json` (omit with `from_hub`).
        output_dir (`str` or `os.PathLike`): the folder to create.
        text_model (`str`, *optional*): the language model's config and tokenizer: a folder or Hub id; defaults to
            the config's `LLM.t5_model`, looked up beside the config first.
        qformer_model (`str`, *optional*): the Q-Former's base BERT config: a folder or Hub id; defaults to
            `bert-base-uncased`, looked up beside the config first.
        dtype (`str`, *optional*, defaults to `"float32"`): `"float32"`, `"bfloat16"` or `"float16"`.
        max_shard_size (`str` or `int`, *optional*, defaults to `"5GB"`): largest safetensors shard.
        push_to_hub (`str`, *optional*): a Hub repository id to upload the finished folder to.
        from_hub (`str`, *optional*): download the `.ckpt` and `config.json` from this Hub repository instead.
        overwrite (`bool`, *optional*, defaults to `False`): replace a non-empty `output_dir`.

    Returns:
        `Path`: `output_dir`.
    """
    if dtype not in DTYPES:
        raise ConversionError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    if from_hub is not None:
        if checkpoint is not None or config is not None:
            raise ConversionError("Pass either --from-hub or --checkpoint and --config, not both.")
        checkpoint, config = download_original_release(from_hub)
    if checkpoint is None or config is None:
        raise ConversionError("Both --checkpoint and --config are needed (or --from-hub).")
    checkpoint, config_path, output_dir = Path(checkpoint), Path(config), Path(output_dir).resolve()
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise ConversionError(f"Output folder {output_dir} exists and is not empty; pass --overwrite to replace it.")

    original_config = load_original_config(config_path)
    state_dict = load_original_checkpoint(checkpoint)
    text_source = resolve_pretrained_source(text_model or original_config["LLM"]["t5_model"], config_path.parent)
    qformer_source = resolve_pretrained_source(qformer_model or DEFAULT_QFORMER_MODEL, config_path.parent)
    text_base = _load_base("language model config", text_source, T5Config.from_pretrained)
    qformer_base = _load_base("Q-Former base (BERT) config", qformer_source, BertConfig.from_pretrained)
    tokenizer: PreTrainedTokenizerBase = _load_base(
        "language model tokenizer", text_source, AutoTokenizer.from_pretrained
    )

    blap_config = blap_config_from_original(original_config, state_dict, qformer_base, text_base)
    if len(tokenizer) > blap_config.text_config.vocab_size:
        raise ConversionError(
            f"The tokenizer from {text_source!r} has {len(tokenizer)} tokens, more than the language model's"
            f" {blap_config.text_config.vocab_size} embeddings."
        )
    feature_extractor = feature_extractor_from_original(original_config, state_dict)
    converted = convert_original_state_dict(state_dict, blap_config.text_config.scale_decoder_outputs)
    model = build_converted_model(blap_config, converted, DTYPES[dtype])
    model.generation_config = generation_config_from_original(original_config, blap_config)
    processor = BlapProcessor(
        feature_extractor, tokenizer, prompt=blap_config.prompt, max_txt_len=blap_config.max_txt_len
    )
    card = render_model_card(
        blap_config,
        repo_id=push_to_hub,
        # The paper's numbers describe the authors' release only, not any checkpoint in its format.
        eval_results=PAPER_RESULTS if from_hub == DEFAULT_HUB_REPO else None,
        description=_card_description(blap_config, model, from_hub or checkpoint.name, text_source, dtype),
        feature_extractor=feature_extractor,
        generation_config=model.generation_config,
        prompt=processor.prompt,
    )

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the output folder's mode
        model.save_pretrained(staging, max_shard_size=max_shard_size)
        # save_pretrained records the dtype of the first parameter, `query_tokens`, which float16 keeps in float32.
        model.config.dtype = dtype
        model.config.save_pretrained(staging)
        processor.save_pretrained(staging)
        card.save(staging / "README.md")
        _replace_folder(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Converted %s into %s", checkpoint, output_dir)

    if push_to_hub is not None:
        try:
            push_folder(output_dir, push_to_hub, commit_message="Convert the original BLAP release")
        except (OSError, ValueError, HfHubHTTPError) as error:
            raise ConversionError(
                f"The conversion is complete in {output_dir}, but uploading it to {push_to_hub!r} failed: {error}"
            ) from error
    return output_dir


def _replace_folder(source: Path, target: Path) -> None:
    """Move the finished `source` folder to `target`, replacing an existing `target` only once `source` is in place."""
    if not target.exists():
        source.rename(target)
        return
    previous = target.with_name(f".{target.name}.previous-{os.getpid()}")
    target.rename(previous)
    source.rename(target)
    if previous.is_dir():
        shutil.rmtree(previous)
    else:
        previous.unlink()


def _card_description(
    config: BlapConfig, model: BlapForConditionalGeneration, source: Any, text_source: str, dtype: str
) -> str:
    """The model card's paragraph on these weights: where they come from and what they are."""
    generation = model.generation_config
    num_parameters = sum(parameter.numel() for parameter in model.parameters())
    size = f"{num_parameters / 1e9:.2f} B" if num_parameters >= 1e9 else f"{num_parameters / 1e6:.1f} M"
    settings = ", ".join(
        f"{name}={getattr(generation, name)}"
        for name in ("num_beams", "max_new_tokens", "min_length", "length_penalty", "repetition_penalty")
    )
    return (
        f"Converted by `blap convert-original` from the authors' checkpoint `{source}` (language model config and"
        f" tokenizer from `{text_source}`), {size} parameters stored as {dtype}. The conversion is tested to be"
        " numerically equivalent to the original implementation. Generation defaults reproduce the release's usage"
        f" example: {settings}."
    )


def run(args: argparse.Namespace) -> int:
    """Run a conversion from parsed arguments; a [`ConversionError`] becomes an error message and exit status 2."""
    try:
        output_dir = convert_original_checkpoint(
            checkpoint=args.checkpoint,
            config=args.config,
            output_dir=args.output_dir,
            text_model=args.text_model,
            qformer_model=args.qformer_model,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            push_to_hub=args.push_to_hub,
            from_hub=args.from_hub,
            overwrite=args.overwrite,
        )
    except ConversionError as error:
        print(f"blap convert-original: error: {error}", file=sys.stderr)
        return 2
    print(f"Converted BLAP written to {output_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python scripts/convert_original_blap.py ...`, the same as `blap convert-original ...`."""
    from blap_cli import main as blap_main

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    return blap_main(["convert-original", *(sys.argv[1:] if argv is None else argv)])


__all__ = [
    "DEFAULT_HUB_REPO",
    "RELEASE_GENERATION_DEFAULTS",
    "blap_config_from_original",
    "build_converted_model",
    "convert_original_checkpoint",
    "convert_original_state_dict",
    "download_original_release",
    "feature_extractor_from_original",
    "load_original_checkpoint",
    "load_original_config",
    "main",
    "qformer_config_from_original",
    "run",
    "text_config_from_original",
]


if __name__ == "__main__":
    sys.exit(main())
