"""
The original BLAP release's checkpoint layout, written from scratch for tests and benchmarks, and an independent
reference implementation of the original forward pass built from transformers building blocks.

`original_tensor_specs` lists every key, shape and dtype of an original `BLAP2_Stage2` Lightning checkpoint of given
dimensions; a test checks that it reproduces the fixture's checkpoint exactly. `reference_forward` /
`reference_generate` compute what the original computes with ClapAudioModel + Blip2QFormerModel + T5 loaded with
their own explicit key renaming (not the converter's); a test proves them equal to the original's outputs on the
fixture, so they can stand in for the original code on checkpoints the original code never saw.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from transformers import (
    BertConfig,
    Blip2QFormerConfig,
    Blip2QFormerModel,
    ClapAudioModel,
    T5Config,
    T5ForConditionalGeneration,
)

from transformers_blap import BlapFeatureExtractor
from transformers_blap.conversion.htsat import (
    LAION_HTSAT_VARIANTS,
    convert_htsat_state_dict,
    htsat_config_from_state_dict,
    relative_position_index,
)

HTSAT = "audio_encoder.audio_branch."


@dataclass(frozen=True)
class OriginalDims:
    """Dimensions of an original BLAP stage-2 checkpoint (HTS-AT variant, Q-Former, query tokens, T5)."""

    num_query_tokens: int
    qformer_hidden: int
    qformer_layers: int
    qformer_intermediate: int
    t5_vocab: int
    t5_d_model: int
    t5_d_kv: int
    t5_heads: int
    t5_d_ff: int
    t5_layers: int
    t5_decoder_layers: int
    t5_buckets: int = 32
    htsat_variant: str = "tiny"
    cross_attention_frequency: int = 2
    mel_bins: int = 64
    n_fft: int = 1024
    class_num: int = 527
    joint_embed: int = 512
    max_position_embeddings: int = 512


# The fixture (original-blap-tiny) and the release (Flan-T5-XL, BERT-base, 32 query tokens).
FIXTURE_DIMS = OriginalDims(8, 128, 4, 256, 226, 64, 32, 2, 128, 2, 2)
RELEASE_DIMS = OriginalDims(32, 768, 12, 3072, 32128, 2048, 64, 32, 5120, 24, 24)


def original_tensor_specs(dims: OriginalDims) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Every key of an original BLAP stage-2 `state_dict` with its shape and dtype (float32 for weights)."""
    f32, i64 = torch.float32, torch.int64
    specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}

    def add(key: str, *shape: int, dtype: torch.dtype = f32) -> None:
        specs[key] = (tuple(shape), dtype)

    def linear(key: str, out_features: int, in_features: int, bias: bool = True) -> None:
        add(f"{key}.weight", out_features, in_features)
        if bias:
            add(f"{key}.bias", out_features)

    def norm(key: str, width: int, bias: bool = True) -> None:
        add(f"{key}.weight", width)
        if bias:
            add(f"{key}.bias", width)

    variant = LAION_HTSAT_VARIANTS[dims.htsat_variant]
    width, depths, heads = variant["patch_embeds_hidden_size"], variant["depths"], variant["num_attention_heads"]
    window, grid = 8, 256 // 4
    add("query_tokens", 1, dims.num_query_tokens, dims.qformer_hidden)
    add(HTSAT + "spectrogram_extractor.stft.conv_real.weight", dims.n_fft // 2 + 1, 1, dims.n_fft)
    add(HTSAT + "spectrogram_extractor.stft.conv_imag.weight", dims.n_fft // 2 + 1, 1, dims.n_fft)
    add(HTSAT + "logmel_extractor.melW", dims.n_fft // 2 + 1, dims.mel_bins)
    for name in ("weight", "bias", "running_mean", "running_var"):
        add(HTSAT + f"bn0.{name}", dims.mel_bins)
    add(HTSAT + "bn0.num_batches_tracked", dtype=i64)
    add(HTSAT + "patch_embed.proj.weight", width, 1, 4, 4)
    add(HTSAT + "patch_embed.proj.bias", width)
    norm(HTSAT + "patch_embed.norm", width)
    for stage, (depth, num_heads) in enumerate(zip(depths, heads)):
        dim, resolution = width * 2**stage, grid // 2**stage
        for block in range(depth):
            prefix = HTSAT + f"layers.{stage}.blocks.{block}."
            if block % 2 == 1 and resolution > window:
                add(prefix + "attn_mask", (resolution // window) ** 2, window * window, window * window)
            norm(prefix + "norm1", dim)
            add(prefix + "attn.relative_position_bias_table", (2 * window - 1) ** 2, num_heads)
            add(prefix + "attn.relative_position_index", window * window, window * window, dtype=i64)
            linear(prefix + "attn.qkv", 3 * dim, dim)
            linear(prefix + "attn.proj", dim, dim)
            norm(prefix + "norm2", dim)
            linear(prefix + "mlp.fc1", 4 * dim, dim)
            linear(prefix + "mlp.fc2", dim, 4 * dim)
        if stage < len(depths) - 1:
            add(HTSAT + f"layers.{stage}.downsample.reduction.weight", 2 * dim, 4 * dim)
            norm(HTSAT + f"layers.{stage}.downsample.norm", 4 * dim)
    audio_width = width * 2 ** (len(depths) - 1)
    norm(HTSAT + "norm", audio_width)
    add(HTSAT + "tscam_conv.weight", dims.class_num, audio_width, 2, 3)
    add(HTSAT + "tscam_conv.bias", dims.class_num)
    linear(HTSAT + "head", dims.class_num, dims.class_num)
    linear("audio_encoder.audio_projection.0", dims.joint_embed, audio_width)
    linear("audio_encoder.audio_projection.2", dims.joint_embed, dims.joint_embed)
    norm("ln_audio", audio_width)

    hidden, q = dims.qformer_hidden, "qformer.bert."
    add(q + "embeddings.position_ids", 1, dims.max_position_embeddings, dtype=i64)
    norm(q + "embeddings.LayerNorm", hidden)
    for layer in range(dims.qformer_layers):
        prefix = q + f"encoder.layer.{layer}."
        for part in ("query", "key", "value"):
            linear(prefix + f"attention.self.{part}", hidden, hidden)
        linear(prefix + "attention.output.dense", hidden, hidden)
        norm(prefix + "attention.output.LayerNorm", hidden)
        if layer % dims.cross_attention_frequency == 0:
            linear(prefix + "crossattention.self.query", hidden, hidden)
            linear(prefix + "crossattention.self.key", hidden, audio_width)
            linear(prefix + "crossattention.self.value", hidden, audio_width)
            linear(prefix + "crossattention.output.dense", hidden, hidden)
            norm(prefix + "crossattention.output.LayerNorm", hidden)
        linear(prefix + "intermediate_query.dense", dims.qformer_intermediate, hidden)
        linear(prefix + "output_query.dense", hidden, dims.qformer_intermediate)
        norm(prefix + "output_query.LayerNorm", hidden)

    d_model, inner = dims.t5_d_model, dims.t5_heads * dims.t5_d_kv
    add("t5_model.shared.weight", dims.t5_vocab, d_model)
    for stack, num_blocks in (("encoder", dims.t5_layers), ("decoder", dims.t5_decoder_layers)):
        add(f"t5_model.{stack}.embed_tokens.weight", dims.t5_vocab, d_model)
        for block in range(num_blocks):
            prefix = f"t5_model.{stack}.block.{block}.layer."
            attentions = ["SelfAttention"] + (["EncDecAttention"] if stack == "decoder" else [])
            for index, attention in enumerate(attentions):
                for part in ("q", "k", "v"):
                    linear(f"{prefix}{index}.{attention}.{part}", inner, d_model, bias=False)
                linear(f"{prefix}{index}.{attention}.o", d_model, inner, bias=False)
                if block == 0 and attention == "SelfAttention":
                    add(f"{prefix}{index}.{attention}.relative_attention_bias.weight", dims.t5_buckets, dims.t5_heads)
                norm(f"{prefix}{index}.layer_norm", d_model, bias=False)
            ffn = len(attentions)
            linear(f"{prefix}{ffn}.DenseReluDense.wi_0", dims.t5_d_ff, d_model, bias=False)
            linear(f"{prefix}{ffn}.DenseReluDense.wi_1", dims.t5_d_ff, d_model, bias=False)
            linear(f"{prefix}{ffn}.DenseReluDense.wo", d_model, dims.t5_d_ff, bias=False)
            norm(f"{prefix}{ffn}.layer_norm", d_model, bias=False)
        norm(f"t5_model.{stack}.final_layer_norm", d_model, bias=False)
    linear("t5_model.lm_head", dims.t5_vocab, d_model, bias=False)
    linear("t5_proj", d_model, hidden)
    return specs


def fixed_value(key: str, shape: tuple[int, ...]) -> torch.Tensor | None:
    """Tensors whose value is fixed by the architecture (index buffers, STFT/mel kernels), else None."""
    if key.endswith("relative_position_index"):
        return relative_position_index(int(round(shape[0] ** 0.5)))
    if key.endswith("position_ids"):
        return torch.arange(shape[1]).unsqueeze(0)
    if key.endswith("num_batches_tracked"):
        return torch.tensor(1000)
    if key.endswith("logmel_extractor.melW"):
        return BlapFeatureExtractor(feature_size=shape[1], fft_window_size=(shape[0] - 1) * 2).mel_filters
    if key.endswith("attn_mask"):
        return torch.zeros(shape)
    return None


def random_original_state_dict(dims: OriginalDims, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """
    An original-format state dict with random weights, all away from their initial values (LayerNorm weights near 1,
    biases and BatchNorm statistics nonzero) so that a wrong mapping cannot pass by accident. The T5 embedding copies
    are the `shared` tensor itself, as in a real Lightning checkpoint.
    """
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key, (shape, spec_dtype) in original_tensor_specs(dims).items():
        special = fixed_value(key, shape)
        if special is not None:
            state_dict[key] = special.to(spec_dtype if not spec_dtype.is_floating_point else torch.float32)
            continue
        noise = torch.randn(shape, generator=generator)
        if key.endswith("running_var"):
            value = 1.0 + noise.abs()
        elif re.search(r"(norm\d?|LayerNorm|layer_norm|ln_audio|bn0)\.weight$", key):
            value = 1.0 + 0.1 * noise
        elif key.endswith(("bias", "running_mean")):
            value = 0.1 * noise
        elif key == "query_tokens" or key.endswith("relative_position_bias_table"):
            value = 0.5 * noise
        else:
            fan_in = shape[1] if len(shape) > 1 else shape[0]
            for size in shape[2:]:
                fan_in *= size
            value = noise / fan_in**0.5
        state_dict[key] = value.to(dtype)
    for stack in ("encoder", "decoder"):
        state_dict[f"t5_model.{stack}.embed_tokens.weight"] = state_dict["t5_model.shared.weight"]
    return state_dict


def lightning_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Wrap a state dict like PyTorch Lightning 2.3 does (the bookkeeping entries hold only plain data)."""
    return {
        "epoch": 3,
        "global_step": 70000,
        "pytorch-lightning_version": "2.3.3",
        "state_dict": dict(state_dict),
        "loops": {"fit_loop": {"state_dict": {}}},
        "callbacks": {},
        "optimizer_states": [],
        "lr_schedulers": [],
    }


# ------------------------------------------------------------------------------------------ independent reference


def reference_modules(
    state_dict: Mapping[str, torch.Tensor], bert_config: BertConfig, t5_config: T5Config, variant: str = "tiny"
) -> dict[str, torch.nn.Module]:
    """
    The original's modules rebuilt from transformers building blocks, in float32, loaded strictly with explicit
    renaming: HTS-AT (the key mapping proven on the fixture), `ln_audio`, the Q-Former, `t5_proj` and T5 with the
    original's exact GELU and untied head.
    """
    weights = {key: value.float() if value.is_floating_point() else value for key, value in state_dict.items()}
    audio = ClapAudioModel(htsat_config_from_state_dict(weights, HTSAT, variant)).eval()
    audio.load_state_dict(convert_htsat_state_dict(weights, HTSAT), strict=True)
    ln_audio = torch.nn.LayerNorm(weights["ln_audio.weight"].shape[0])
    ln_audio.load_state_dict({"weight": weights["ln_audio.weight"], "bias": weights["ln_audio.bias"]})

    num_layers = 1 + max(int(k.split(".")[4]) for k in weights if k.startswith("qformer.bert.encoder.layer."))
    qformer_config = Blip2QFormerConfig(
        hidden_size=bert_config.hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=bert_config.num_attention_heads,
        intermediate_size=bert_config.intermediate_size,
        hidden_act=bert_config.hidden_act,
        layer_norm_eps=bert_config.layer_norm_eps,
        encoder_hidden_size=weights["ln_audio.weight"].shape[0],
        cross_attention_frequency=2,
        use_qformer_text_input=False,
    )
    qformer = Blip2QFormerModel(qformer_config).eval()
    qformer_weights = {}
    for key, value in weights.items():
        if key.startswith("qformer.bert.") and key != "qformer.bert.embeddings.position_ids":
            name = key[len("qformer.bert.") :].replace("embeddings.LayerNorm", "layernorm")
            qformer_weights[re.sub(r"\.(attention|crossattention)\.self\.", r".\1.attention.", name)] = value
    qformer.load_state_dict(qformer_weights, strict=True)

    projection = torch.nn.Linear(*reversed(weights["t5_proj.weight"].shape))
    projection.load_state_dict({"weight": weights["t5_proj.weight"], "bias": weights["t5_proj.bias"]})

    t5_config = T5Config.from_dict(t5_config.to_dict())
    t5_config.dense_act_fn = "gelu"
    t5 = T5ForConditionalGeneration(t5_config).eval()
    t5.lm_head.weight = torch.nn.Parameter(t5.shared.weight.detach().clone())
    t5.all_tied_weights_keys.pop("lm_head.weight", None)
    t5.load_state_dict(
        {k[len("t5_model.") :]: v for k, v in weights.items() if k.startswith("t5_model.")}, strict=True
    )
    assert t5.lm_head.weight.data_ptr() != t5.shared.weight.data_ptr()
    return {
        "audio": audio,
        "ln_audio": ln_audio,
        "query_tokens": weights["query_tokens"],
        "qformer": qformer,
        "t5_proj": projection,
        "t5": t5,
    }


@torch.no_grad()
def reference_forward(
    modules: Mapping, log_mel: torch.Tensor, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, labels=None, **kw
) -> dict[str, torch.Tensor]:
    """
    The original `BLAP2_Stage2.forward`: audio tokens (fine-grained embedding pooled over 32 frames, `ln_audio`),
    Q-Former over the query tokens, `t5_proj`, T5 on `[queries ; prompt]` (query mask 1).

    Returns:
        `dict` with `audio_embeds`, `qformer_last_hidden_state`, `inputs_t5`, `inputs_embeds`, `encoder_mask` and,
        with `labels`, `logits` and `loss`.
    """
    hidden = modules["audio"](log_mel).last_hidden_state
    audio_embeds = modules["ln_audio"](hidden.mean(dim=2).transpose(1, 2))
    queries = modules["query_tokens"].expand(audio_embeds.shape[0], -1, -1)
    query_output = modules["qformer"](query_embeds=queries, encoder_hidden_states=audio_embeds).last_hidden_state
    inputs_t5 = modules["t5_proj"](query_output)
    inputs_embeds = torch.cat([inputs_t5, modules["t5"].encoder.embed_tokens(prompt_ids)], dim=1)
    encoder_mask = torch.cat([torch.ones(inputs_t5.shape[:2], dtype=prompt_mask.dtype), prompt_mask], dim=1)
    outputs = {
        "audio_embeds": audio_embeds,
        "qformer_last_hidden_state": query_output,
        "inputs_t5": inputs_t5,
        "inputs_embeds": inputs_embeds,
        "encoder_mask": encoder_mask,
    }
    if labels is not None:
        result = modules["t5"](inputs_embeds=inputs_embeds, attention_mask=encoder_mask, labels=labels, **kw)
        outputs.update(logits=result.logits, loss=result.loss)
    return outputs


@torch.no_grad()
def reference_generate(modules: Mapping, outputs: Mapping[str, torch.Tensor], **generation) -> torch.Tensor:
    """The original `predict_answers`: T5 beam search from `[queries ; prompt]` embeddings."""
    return modules["t5"].generate(
        inputs_embeds=outputs["inputs_embeds"], attention_mask=outputs["encoder_mask"], do_sample=False, **generation
    )


def ids_until_eos(ids: torch.Tensor, eos_token_id: int) -> list[list[int]]:
    """Each row of generated ids up to and including its first `eos_token_id` (what follows is padding)."""
    rows = []
    for row in ids.tolist():
        rows.append(row[: row.index(eos_token_id) + 1] if eos_token_id in row else row)
    return rows
