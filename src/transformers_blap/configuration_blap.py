"""Configuration of BLAP: HTS-AT audio encoder + Q-Former + T5 language model."""

import json
import os
from pathlib import Path
from typing import Any

from transformers import Blip2QFormerConfig, ClapAudioConfig, T5Config
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

DEFAULT_PROMPT = "Generate an objective music description."

# HTS-AT "tiny" (LAION CLAP `HTSAT-tiny`, 768 channels), no feature fusion.
HTSAT_TINY = {
    "patch_embeds_hidden_size": 96,
    "depths": [2, 2, 6, 2],
    "num_attention_heads": [4, 8, 16, 32],
    "window_size": 8,
    "spec_size": 256,
    "num_mel_bins": 64,
    "hidden_size": 768,
    "projection_dim": 512,
    "enable_fusion": False,
}

# BERT-base Q-Former with cross-attention in every second layer; bert-base-uncased's 30522 tokens plus `[DEC]`.
QFORMER_BERT_BASE = {
    "vocab_size": 30523,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "cross_attention_frequency": 2,
    "encoder_hidden_size": 768,
}

# Flan-T5-XL; the original forces exact (erf) GELU in its gated FFN and keeps the LM head untied.
FLAN_T5_XL = {
    "vocab_size": 32128,
    "d_model": 2048,
    "d_kv": 64,
    "d_ff": 5120,
    "num_layers": 24,
    "num_decoder_layers": 24,
    "num_heads": 32,
    "feed_forward_proj": "gated-gelu",
    "dense_act_fn": "gelu",
    "tie_word_embeddings": False,
    "decoder_start_token_id": 0,
}


class BlapConfig(PreTrainedConfig):
    r"""
    Configuration of a [`BlapForConditionalGeneration`] (and [`BlapForRepresentationLearning`]) model.

    Composed like `Blip2Config`: three sub-configurations plus the glue between them. Each sub-configuration accepts a
    `dict` or a config object.

    Args:
        audio_config (`dict` or `ClapAudioConfig`, *optional*):
            The HTS-AT audio encoder (`transformers.ClapAudioModel`). Defaults to HTS-AT "tiny" without fusion.
        qformer_config (`dict` or `Blip2QFormerConfig`, *optional*):
            The Q-Former. Defaults to BERT-base with cross-attention every second layer. Its `encoder_hidden_size` is
            always set to `audio_config.hidden_size`.
        text_config (`dict` or `T5Config`, *optional*):
            The language model. Defaults to Flan-T5-XL dimensions with exact GELU and an untied LM head.
        num_query_tokens (`int`, *optional*, defaults to 32):
            Number of learned query tokens fed to the Q-Former.
        prompt (`str`, *optional*):
            The instruction given to the language model when no `text` is passed to the processor.
        embed_dim (`int`, *optional*, defaults to 256):
            Size of the shared audio-text embedding space of stage 1 (contrastive / matching).
        max_txt_len (`int`, *optional*, defaults to 64):
            Maximum caption length in tokens used in training.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the query-token and projection initialisers.
        qformer_dec_token_id (`int`, *optional*, defaults to 30522):
            Stage 1: the id of the `[DEC]` token that replaces `[CLS]` when the Q-Former decodes a caption (the token
            added to bert-base-uncased's vocabulary; see `BlapStage1Processor`).
        initial_temperature (`float`, *optional*, defaults to 0.07):
            Stage 1: initial value of the learnable temperature of the audio-text similarities.
        projection_dropout (`float`, *optional*, defaults to 0.5):
            Stage 1: dropout inside the 2-layer audio and text projections.
        label_smoothing (`float`, *optional*, defaults to 0.1):
            Stage 1: label smoothing of the contrastive and the caption-generation cross-entropies.
        tie_word_embeddings (`bool`, *optional*, defaults to `True`):
            Stage 1: tie the Q-Former's LM-head decoder to its word embeddings (as BERT and BLIP-2 do). It does not
            concern the language model, whose tying `text_config` decides.

    Example:

    ```python
    >>> from transformers_blap import BlapConfig, BlapForConditionalGeneration
    >>> config = BlapConfig(num_query_tokens=16)
    >>> model = BlapForConditionalGeneration(config)
    ```
    """

    model_type = "blap"
    sub_configs_defaults = {
        "audio_config": SubConfigSpec(config_class=ClapAudioConfig, init_kwargs=HTSAT_TINY),
        "qformer_config": SubConfigSpec(config_class=Blip2QFormerConfig, init_kwargs=QFORMER_BERT_BASE),
        "text_config": SubConfigSpec(config_class=T5Config, init_kwargs=FLAN_T5_XL),
    }

    audio_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    num_query_tokens: int = 32
    prompt: str = DEFAULT_PROMPT
    embed_dim: int = 256
    max_txt_len: int = 64
    initializer_range: float = 0.02
    qformer_dec_token_id: int = 30522
    initial_temperature: float = 0.07
    projection_dropout: float = 0.5
    label_smoothing: float = 0.1
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.audio_config.enable_fusion:
            raise ValueError("BLAP uses HTS-AT without feature fusion: `audio_config.enable_fusion` must be False.")
        if self.text_config.model_type != "t5":
            raise ValueError(f"`text_config` must be a T5 config, got model_type={self.text_config.model_type!r}.")
        self.qformer_config.encoder_hidden_size = self.audio_config.hidden_size
        self.is_encoder_decoder = True

    @classmethod
    def get_config_dict(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """
        `PreTrainedConfig.get_config_dict`, which refuses the original release's `config.json` with one line naming
        the call that converts it ([`OriginalReleaseError`]), and any other `config.json` without a `model_type`,
        instead of reading them as a default (Flan-T5-XL sized) configuration.
        """
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if is_original_release_config(config_dict):
            raise OriginalReleaseError(pretrained_model_name_or_path)
        if "model_type" not in config_dict:
            raise ValueError(
                f"{os.fspath(pretrained_model_name_or_path)!r} is neither a transformers BLAP folder (a config.json"
                " with a model_type, and its weights) nor the original BLAP release (its .ckpt and the config.json of"
                " BLAP2_Stage2_Config)."
            )
        return config_dict, kwargs


# ------------------------------------------------------------------------------------ the authors' original release


def is_original_release_config(config: object) -> bool:
    """Whether a parsed `config.json` is the original BLAP release's (`BLAP2_Stage2_Config`), not transformers'."""
    return (
        isinstance(config, dict)
        and "model_type" not in config
        and isinstance(config.get("audio_encoder"), dict)
        and isinstance(config.get("LLM"), dict)
    )


class OriginalReleaseError(ValueError):
    """
    `from_pretrained` met the authors' original release (a PyTorch Lightning `.ckpt` and the `config.json` of
    `BLAP2_Stage2_Config`), which transformers does not read; the message names the call that converts it.
    """

    def __init__(self, pretrained_model_name_or_path: str | os.PathLike):
        name = os.fspath(pretrained_model_name_or_path)
        super().__init__(
            f"{name} is the original BLAP release (a Lightning .ckpt and its config.json), not a transformers folder:"
            f" convert it with transformers_blap.conversion.original_release_folder({name!r}) and load the folder it"
            " returns (from_pretrained, pipeline(model=...)); `blap caption --model` and `blap evaluate --model` do"
            " that themselves."
        )


def is_original_release(pretrained_model_name_or_path: str | os.PathLike, hub_kwargs: dict | None = None) -> bool:
    """
    Whether `pretrained_model_name_or_path` (a local folder or Hub repository) holds the original release's
    `config.json`. `False` where there is none or it cannot be read (no such repository, offline, ...).

    Args:
        pretrained_model_name_or_path (`str` or `os.PathLike`): what was passed to `from_pretrained`.
        hub_kwargs (`dict`, *optional*): its keyword arguments; `revision`, `cache_dir`, `token`, `local_files_only`
            and `subfolder` are used to read `config.json`.
    """
    hub_kwargs = hub_kwargs or {}
    path = Path(pretrained_model_name_or_path)
    if path.is_dir():
        config_file = path / (hub_kwargs.get("subfolder") or "") / "config.json"
    else:
        import huggingface_hub  # here, not at the top: the remote-code entry modules would have to name it too

        try:
            config_file = huggingface_hub.hf_hub_download(
                str(pretrained_model_name_or_path),
                "config.json",
                **{key: hub_kwargs[key] for key in _HUB_KWARGS if hub_kwargs.get(key) is not None},
            )
        except Exception:  # not a repository, no config.json, offline: not something to convert
            return False
    try:
        config = json.loads(Path(config_file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return is_original_release_config(config)


_HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "subfolder")


__all__ = ["BlapConfig", "DEFAULT_PROMPT", "OriginalReleaseError", "is_original_release", "is_original_release_config"]
