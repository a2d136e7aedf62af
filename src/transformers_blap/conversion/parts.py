"""
A stage-1 BLAP built from pretrained parts, as BLAP was: CLAP's audio tower (a transformers checkpoint or a raw LAION
CLAP `.pt`), BERT as the Q-Former, and the configuration of the T5 that stage 2 adds.

    from transformers_blap.conversion import stage1_from_pretrained_parts
    model = stage1_from_pretrained_parts("laion/clap-htsat-unfused", "bert-base-uncased", "google/flan-t5-xl")

The Q-Former and T5 configuration rules (`qformer_config_from_bert`, `exact_gelu_t5_config`) are also those of the
original-release converter (`conversion.original`).
"""

import os
import re

import torch
from torch import nn
from transformers import (
    AutoConfig,
    BertConfig,
    BertForMaskedLM,
    BertForPreTraining,
    BertModel,
    Blip2QFormerConfig,
    ClapAudioConfig,
    ClapAudioModel,
    ClapConfig,
    ClapModel,
    T5Config,
)

from ..configuration_blap import BlapConfig
from ..modeling_blap import BlapForRepresentationLearning
from .laion_clap import convert_laion_clap_checkpoint

# BERT settings that a Q-Former built from it keeps (sizes, activation, dropout, positions, padding).
_BERT_QFORMER_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "layer_norm_eps",
    "pad_token_id",
)
# Stage-1 parameters that take BERT's weights with one more row / entry at the end, `[DEC]`'s (new).
_GROWN_BY_DEC = ("text_embeddings.word_embeddings.weight", "lm_head.decoder.bias")


def qformer_config_from_bert(bert_config: BertConfig, **overrides) -> Blip2QFormerConfig:
    """
    The configuration of a Q-Former built from a BERT: BERT's sizes, activation, dropout, positions and padding.

    Args:
        bert_config (`BertConfig`).
        overrides: further or different [`Blip2QFormerConfig`] arguments (`vocab_size`, `cross_attention_frequency`,
            ...).

    Returns:
        `Blip2QFormerConfig`.
    """
    return Blip2QFormerConfig(**{name: getattr(bert_config, name) for name in _BERT_QFORMER_FIELDS}, **overrides)


def exact_gelu_t5_config(config: T5Config) -> T5Config:
    """A copy of a T5 configuration with the exact (erf) GELU that the original BLAP forces (`dense_act_fn="gelu"`)."""
    config = T5Config.from_dict(config.to_dict())
    config.dense_act_fn = "gelu"
    return config


def load_clap_audio_model(audio_encoder: str | os.PathLike | ClapModel | ClapAudioModel) -> ClapAudioModel:
    """
    The CLAP audio tower, float32.

    Args:
        audio_encoder (`str`, `os.PathLike`, `ClapModel` or `ClapAudioModel`): a transformers `ClapModel` or
            `ClapAudioModel` checkpoint (name or folder), a raw LAION CLAP `.pt` file (read weights-only,
            [`convert_laion_clap_checkpoint`]), or a loaded model.

    Returns:
        `ClapAudioModel`.
    """
    if isinstance(audio_encoder, (str, os.PathLike)) and os.path.isfile(audio_encoder):
        return convert_laion_clap_checkpoint(audio_encoder)
    if isinstance(audio_encoder, (str, os.PathLike)):
        config = AutoConfig.from_pretrained(audio_encoder)
        if isinstance(config, ClapConfig):
            return ClapModel.from_pretrained(audio_encoder, dtype=torch.float32).audio_model
        if isinstance(config, ClapAudioConfig):
            return ClapAudioModel.from_pretrained(audio_encoder, dtype=torch.float32)
        raise ValueError(f"`audio_encoder` {audio_encoder!r} is a {type(config).__name__}, not a CLAP checkpoint.")
    if isinstance(audio_encoder, ClapModel):
        return audio_encoder.audio_model
    if isinstance(audio_encoder, ClapAudioModel):
        return audio_encoder
    raise TypeError(
        f"`audio_encoder` must be a CLAP checkpoint or a ClapModel / ClapAudioModel, got {type(audio_encoder)}."
    )


def load_bert(
    qformer: str | os.PathLike | BertModel | BertForMaskedLM | BertForPreTraining,
) -> tuple[BertModel, nn.Module | None]:
    """The BERT encoder (float32 when loaded here) and its masked-LM prediction head (None when it has none)."""
    if isinstance(qformer, (str, os.PathLike)):
        qformer = BertForMaskedLM.from_pretrained(qformer, dtype=torch.float32)
    if isinstance(qformer, (BertForMaskedLM, BertForPreTraining)):
        return qformer.bert, qformer.cls.predictions
    if isinstance(qformer, BertModel):
        return qformer, None
    raise TypeError(f"`qformer` must be a BERT checkpoint or a BERT model, got {type(qformer).__name__}.")


def bert_weights_for_stage1(bert: BertModel, mlm_head: nn.Module | None) -> dict[str, torch.Tensor]:
    """
    BERT's weights under [`BlapForRepresentationLearning`]'s names: embeddings -> `text_embeddings` (the LayerNorm
    -> `qformer.layernorm`), each layer's self-attention and feed-forward -> the Q-Former's (the feed-forward also
    into the query feed-forward, `intermediate_query` / `output_query`), the masked-LM head -> `lm_head`. BERT's
    segment embeddings and pooler have no counterpart.

    Returns:
        `dict[str, torch.Tensor]`: the word embeddings and the LM-head bias lack `[DEC]`'s last row / entry.

    Raises:
        `ValueError`: a BERT weight that has no place in the Q-Former.
    """
    copies: dict[str, torch.Tensor] = {}
    for name, tensor in bert.state_dict().items():
        if name.startswith(("embeddings.token_type_embeddings.", "pooler.")):
            continue
        layer = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", name)
        if name.startswith("embeddings.LayerNorm."):
            targets = ["qformer.layernorm." + name.rsplit(".", 1)[1]]
        elif name.startswith("embeddings."):
            targets = ["text_embeddings." + name[len("embeddings.") :]]
        elif layer is not None and layer.group(2).startswith("attention.self."):
            targets = [f"qformer.encoder.layer.{layer.group(1)}.attention.attention.{layer.group(2)[15:]}"]
        elif layer is not None and layer.group(2).startswith(("intermediate.", "output.")):
            module, rest = layer.group(2).split(".", 1)
            prefix = f"qformer.encoder.layer.{layer.group(1)}."
            targets = [f"{prefix}{module}.{rest}", f"{prefix}{module}_query.{rest}"]
        elif layer is not None:
            targets = [f"qformer.encoder.layer.{layer.group(1)}.{layer.group(2)}"]
        else:
            raise ValueError(f"Unexpected BERT weight {name!r}: cannot place it in the Q-Former.")
        for target in targets:
            copies[target] = tensor
    if mlm_head is not None:
        copies["lm_head.dense.weight"] = mlm_head.transform.dense.weight
        copies["lm_head.dense.bias"] = mlm_head.transform.dense.bias
        copies["lm_head.layer_norm.weight"] = mlm_head.transform.LayerNorm.weight
        copies["lm_head.layer_norm.bias"] = mlm_head.transform.LayerNorm.bias
        copies["lm_head.decoder.bias"] = mlm_head.decoder.bias
    return copies


@torch.no_grad()
def _load_bert_weights(model: BlapForRepresentationLearning, copies: dict[str, torch.Tensor]) -> None:
    """Copy `bert_weights_for_stage1`'s tensors into `model`, each shape checked."""
    params = dict(model.named_parameters())
    for target, tensor in copies.items():
        if target not in params:
            raise ValueError(f"BERT weight for {target!r} has no place in this Q-Former (layer count mismatch?).")
        param = params[target]
        if target in _GROWN_BY_DEC:
            param[: tensor.shape[0]].copy_(tensor)
        elif param.shape != tensor.shape:
            raise ValueError(
                f"BERT weight for {target!r} has shape {tuple(tensor.shape)}, expected {tuple(param.shape)}."
            )
        else:
            param.copy_(tensor)


def stage1_from_pretrained_parts(
    audio_encoder: str | os.PathLike | ClapModel | ClapAudioModel,
    qformer: str | os.PathLike | BertModel | BertForMaskedLM | BertForPreTraining = "bert-base-uncased",
    language_model: str | os.PathLike | T5Config | None = None,
    **config_kwargs,
) -> BlapForRepresentationLearning:
    r"""
    A stage-1 model built from pretrained parts, as BLAP was.

    - Audio encoder: a CLAP audio tower in transformers format, e.g. `"laion/clap-htsat-unfused"` or
      `"laion/larger_clap_music"` (a `ClapModel` checkpoint, whose text tower is dropped) or a `ClapAudioModel`; or the
      path of a raw LAION CLAP checkpoint file (`.pt`, e.g. `music_audioset_epoch_15_esc_90.14.pt`), converted on the
      fly (weights-only loading; see `blap convert-laion-clap`). Without feature fusion.
    - Q-Former: BERT (`"bert-base-uncased"`): its embeddings, self-attention and feed-forward layers; the query
      feed-forward layers (`intermediate_query`, `output_query`) start as copies of the text ones; the cross-attention
      layers (every `cross_attention_frequency`-th layer, default 2) and the `[DEC]` embedding are new; the LM head
      comes from BERT's masked-LM head when the checkpoint has one. BERT's segment embeddings and pooler have no
      counterpart. The vocabulary grows by one token, `[DEC]`, whose id is BERT's vocabulary size (30522 for
      bert-base-uncased: what `build_qformer_tokenizer` gives).
    - Language model: only its configuration is read (stage 1 holds no language model; stage 2 loads its weights),
      with the original's exact-GELU activation. Defaults to Flan-T5-XL's.

    Args:
        audio_encoder (`str`, `os.PathLike`, `ClapModel` or `ClapAudioModel`): a checkpoint name or folder, a LAION
            CLAP `.pt` file, or a loaded model.
        qformer (`str`, `os.PathLike` or a BERT model, *optional*, defaults to `"bert-base-uncased"`).
        language_model (`str`, `os.PathLike` or `T5Config`, *optional*): the T5 of stage 2.
        config_kwargs: further [`BlapConfig`] arguments (`num_query_tokens`, `embed_dim`, ...) and
            `cross_attention_frequency`.

    Returns:
        [`BlapForRepresentationLearning`], in eval mode (as `from_pretrained` returns models).
    """
    audio = load_clap_audio_model(audio_encoder)
    bert, mlm_head = load_bert(qformer)
    if isinstance(language_model, (str, os.PathLike)):
        language_model = T5Config.from_pretrained(language_model)
    text_config = None if language_model is None else exact_gelu_t5_config(language_model)
    bert_config = bert.config
    qformer_config = qformer_config_from_bert(
        bert_config,
        vocab_size=bert_config.vocab_size + 1,
        cross_attention_frequency=config_kwargs.pop("cross_attention_frequency", 2),
    )
    config = BlapConfig(
        audio_config=audio.config.to_dict(),
        qformer_config=qformer_config,
        text_config=text_config,
        qformer_dec_token_id=bert_config.vocab_size,
        **config_kwargs,
    )
    model = BlapForRepresentationLearning(config)
    model.audio_encoder.load_state_dict(audio.state_dict())
    _load_bert_weights(model, bert_weights_for_stage1(bert, mlm_head))
    return model.eval()


__all__ = [
    "bert_weights_for_stage1",
    "exact_gelu_t5_config",
    "load_bert",
    "load_clap_audio_model",
    "qformer_config_from_bert",
    "stage1_from_pretrained_parts",
]
