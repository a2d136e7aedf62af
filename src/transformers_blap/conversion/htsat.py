"""
LAION-CLAP HTS-AT weights -> `transformers.ClapAudioModel` weights.

LAION CLAP (and BLAP, which embeds it) stores the HTS-AT audio encoder as `audio_branch.*` with the names of the
original Swin-Transformer code (`bn0`, `layers.N.blocks.M.attn.qkv`, `mlp.fc1`, ...). `transformers.ClapAudioModel`
holds the same network under other names and with the fused query/key/value projection split in three. This module
maps one onto the other, strictly: every key under the prefix is either converted, or known not to be a weight of
`ClapAudioModel` (the STFT / mel kernels, the shifted-window masks, the sound-event classification head), or reported
as an error. It also derives the `ClapAudioConfig` from the tensors, so a converted checkpoint never relies on a guess.
"""

import math
import re
from collections.abc import Mapping, Sequence

import torch
from transformers import ClapAudioConfig

from .validation import ConversionError, format_key_problems

# The HTS-AT variants of LAION CLAP (`create_htsat_model`); all use spec_size 256, patch 4, stride (4, 4), window 8.
LAION_HTSAT_VARIANTS: dict[str, dict[str, int | list[int]]] = {
    "tiny": {"patch_embeds_hidden_size": 96, "depths": [2, 2, 6, 2], "num_attention_heads": [4, 8, 16, 32]},
    "base": {"patch_embeds_hidden_size": 128, "depths": [2, 2, 12, 2], "num_attention_heads": [4, 8, 16, 32]},
    "large": {"patch_embeds_hidden_size": 256, "depths": [2, 2, 12, 2], "num_attention_heads": [4, 8, 16, 32]},
}
LAION_HTSAT_SPEC_SIZE = 256
LAION_HTSAT_PATCH_STRIDE = 4

# Keys under the HTS-AT prefix that are not weights of `ClapAudioModel`: the torchlibrosa STFT / mel kernels (the
# feature extractor computes the log-mel), the shifted-window masks (`ClapAudioModel` builds them on the fly) and the
# sound-event detection head (`tscam_conv`, `head`), which feeds only the classification outputs.
HTSAT_NON_MODEL_KEYS = (
    re.compile(r"spectrogram_extractor\.stft\.conv_(real|imag)\.weight"),
    re.compile(r"logmel_extractor\.melW"),
    re.compile(r"layers\.\d+\.blocks\.\d+\.attn_mask"),
    re.compile(r"tscam_conv\.(weight|bias)"),
    re.compile(r"head\.(weight|bias)"),
)

_NORM = r"(weight|bias)"
_BATCH_NORM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
# (original key relative to the prefix, ClapAudioModel key template); `qkv` is handled separately.
_RENAMES = (
    (re.compile(rf"bn0\.{_BATCH_NORM}"), r"audio_encoder.batch_norm.\1"),
    (re.compile(r"patch_embed\.(proj|norm|mel_conv2d)\.(weight|bias)"), r"audio_encoder.patch_embed.\1.\2"),
    (
        re.compile(rf"patch_embed\.fusion_model\.(local_att|global_att)\.(\d+)\.{_BATCH_NORM}"),
        r"audio_encoder.patch_embed.fusion_model.\1.\2.\3",
    ),
    (
        re.compile(rf"layers\.(\d+)\.blocks\.(\d+)\.norm1\.{_NORM}"),
        r"audio_encoder.layers.\1.blocks.\2.layernorm_before.\3",
    ),
    (
        re.compile(rf"layers\.(\d+)\.blocks\.(\d+)\.norm2\.{_NORM}"),
        r"audio_encoder.layers.\1.blocks.\2.layernorm_after.\3",
    ),
    (
        re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.attn\.(relative_position_bias_table|relative_position_index)"),
        r"audio_encoder.layers.\1.blocks.\2.attention.self.\3",
    ),
    (
        re.compile(rf"layers\.(\d+)\.blocks\.(\d+)\.attn\.proj\.{_NORM}"),
        r"audio_encoder.layers.\1.blocks.\2.attention.output.dense.\3",
    ),
    (
        re.compile(rf"layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.{_NORM}"),
        r"audio_encoder.layers.\1.blocks.\2.intermediate.dense.\3",
    ),
    (
        re.compile(rf"layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.{_NORM}"),
        r"audio_encoder.layers.\1.blocks.\2.output.dense.\3",
    ),
    (
        re.compile(r"layers\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)"),
        r"audio_encoder.layers.\1.downsample.\2",
    ),
    (re.compile(rf"norm\.{_NORM}"), r"audio_encoder.norm.\1"),
)
_QKV = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)")


def renamed(name: str, renames: Sequence[tuple[re.Pattern, str]]) -> str | None:
    """`name` under the first `(pattern, template)` of `renames` whose pattern matches it whole; None if none does."""
    for pattern, template in renames:
        match = pattern.fullmatch(name)
        if match is not None:
            return match.expand(template)
    return None


def relative_position_index(window_size: int) -> torch.Tensor:
    """
    The Swin relative-position index of a square window: entry `(i, j)` is the row of the bias table holding the bias
    of token `j` as seen from token `i`.

    Args:
        window_size (`int`): side of the attention window, in patches.

    Returns:
        `torch.LongTensor` of shape `(window_size**2, window_size**2)`.
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")).flatten(
        1
    )
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return relative[:, :, 0] * (2 * window_size - 1) + relative[:, :, 1]


def convert_htsat_state_dict(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """
    Rename the LAION-CLAP HTS-AT weights found under `prefix` into the state dict of a `transformers.ClapAudioModel`.

    The fused `attn.qkv` projection (output features ordered query, key, value) is split into `attention.self.query`,
    `.key` and `.value`; every other tensor is renamed without being copied. Keys that are not weights of
    `ClapAudioModel` (see `HTSAT_NON_MODEL_KEYS`) are dropped; keys outside `prefix` are ignored, so a whole CLAP or
    BLAP state dict can be passed. The relative-position indices are checked against the canonical Swin index.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): e.g. a BLAP checkpoint's `state_dict` or a LAION CLAP `.pt`
            checkpoint's `state_dict`.
        prefix (`str`, *optional*, defaults to `""`): where the HTS-AT lives in `state_dict`, with the trailing dot,
            e.g. `"audio_encoder.audio_branch."` (BLAP) or `"audio_branch."` / `"module.audio_branch."` (LAION CLAP).

    Returns:
        `dict[str, torch.Tensor]`: `ClapAudioModel` keys (`"audio_encoder.…"`) to tensors, dtypes unchanged.

    Raises:
        [`ConversionError`]: when no key starts with `prefix`, or some key under it is unknown (e.g. the absolute
            position embedding of `ape=True`, or 1-D fusion layers, which `ClapAudioModel` does not have); all such
            keys are listed.
    """
    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    mis_shaped: list[str] = []
    found = False
    for key, tensor in state_dict.items():
        if not key.startswith(prefix):
            continue
        found = True
        name = key[len(prefix) :]
        if any(pattern.fullmatch(name) for pattern in HTSAT_NON_MODEL_KEYS):
            continue
        qkv = _QKV.fullmatch(name)
        if qkv is not None:
            layer, block, kind = qkv.groups()
            if tensor.shape[0] % 3 != 0:
                mis_shaped.append(f"{key}: got {tuple(tensor.shape)}, expected a first dimension divisible by 3")
                continue
            for part, chunk in zip(("query", "key", "value"), tensor.chunk(3, dim=0)):
                # A copy: safetensors refuses tensors that share memory, and the chunks are views of one tensor.
                converted[f"audio_encoder.layers.{layer}.blocks.{block}.attention.self.{part}.{kind}"] = chunk.clone()
            continue
        target = renamed(name, _RENAMES)
        if target is None:
            unknown.append(key)
        else:
            converted[target] = tensor
    if not found:
        raise ConversionError(f"The state dict has no HTS-AT weights: no key starts with {prefix!r}.")
    for key, tensor in converted.items():
        if key.endswith("relative_position_index"):
            window = math.isqrt(tensor.shape[0]) if tensor.ndim == 2 else 0
            if tensor.ndim != 2 or window * window != tensor.shape[0] or tensor.shape[0] != tensor.shape[1]:
                mis_shaped.append(f"{key}: got {tuple(tensor.shape)}, expected (window**2, window**2)")
            elif not torch.equal(tensor.to(torch.long), relative_position_index(window)):
                mis_shaped.append(f"{key}: not the Swin relative-position index of a {window}x{window} window")
    message = format_key_problems(f"HTS-AT weights under {prefix!r}", unknown=unknown, mis_shaped=mis_shaped)
    if message:
        raise ConversionError(message)
    return converted


def htsat_config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], prefix: str = "", variant: str | None = None
) -> ClapAudioConfig:
    """
    Derive the `ClapAudioConfig` of an HTS-AT from its LAION-CLAP weights, and cross-check it with the named variant.

    Read from the tensors: mel bins (`bn0`), patch embedding width, kernel and input channels, the number of blocks
    and heads of every stage, the window size (from the relative-position bias tables), the MLP ratio, whether the
    query/key/value projection has a bias and the patch embedding a LayerNorm, feature fusion. Not stored in the
    weights and fixed for every LAION HTS-AT: `spec_size` 256 and `patch_stride` (4, 4); where the shifted-window
    masks are present, they confirm both.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): original weights (see [`convert_htsat_state_dict`]).
        prefix (`str`, *optional*, defaults to `""`): where the HTS-AT lives in `state_dict`.
        variant (`str`, *optional*): the LAION-CLAP `model_name` it claims to be (`"tiny"`, `"base"` or `"large"`);
            when given, the derived widths, depths and heads must match it.

    Returns:
        `ClapAudioConfig` with `hidden_size` equal to the width of the last stage.

    Raises:
        [`ConversionError`]: when a tensor needed to derive the configuration is missing or inconsistent, or the
            weights do not match `variant`.
    """

    def get(name: str) -> torch.Tensor:
        if prefix + name not in state_dict:
            raise ConversionError(f"The HTS-AT weights under {prefix!r} lack {prefix + name!r}.")
        return state_dict[prefix + name]

    problems: list[str] = []
    blocks: dict[int, set[int]] = {}
    for key in state_dict:
        match = re.fullmatch(re.escape(prefix) + r"layers\.(\d+)\.blocks\.(\d+)\..*", key)
        if match is not None:
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    num_stages = len(blocks)
    if num_stages == 0 or sorted(blocks) != list(range(num_stages)):
        raise ConversionError(f"The HTS-AT weights under {prefix!r} have stages {sorted(blocks)}; expected 0, 1, ...")
    depths = []
    for stage in range(num_stages):
        if sorted(blocks[stage]) != list(range(len(blocks[stage]))):
            problems.append(f"stage {stage} has blocks {sorted(blocks[stage])}, expected 0, 1, ...")
        depths.append(len(blocks[stage]))

    proj = get("patch_embed.proj.weight")
    width, in_channels, patch_size = proj.shape[0], proj.shape[1], proj.shape[2]
    if proj.ndim != 4 or proj.shape[2] != proj.shape[3]:
        problems.append(f"patch_embed.proj.weight has shape {tuple(proj.shape)}, expected (width, channels, k, k)")
    heads = [get(f"layers.{stage}.blocks.0.attn.relative_position_bias_table").shape[1] for stage in range(num_stages)]
    table_rows = get("layers.0.blocks.0.attn.relative_position_bias_table").shape[0]
    window_size = (math.isqrt(table_rows) + 1) // 2
    if (2 * window_size - 1) ** 2 != table_rows:
        problems.append(f"a relative-position bias table has {table_rows} rows, not (2 * window - 1) ** 2")
    mlp_ratio = get("layers.0.blocks.0.mlp.fc1.weight").shape[0] / width
    hidden_size = get("norm.weight").shape[0]
    if hidden_size != width * 2 ** (num_stages - 1):
        problems.append(f"final norm width {hidden_size} != patch width {width} * 2 ** {num_stages - 1}")
    fusion = prefix + "patch_embed.mel_conv2d.weight" in state_dict
    mask_key = prefix + "layers.0.blocks.1.attn_mask"
    if mask_key in state_dict:
        windows_per_side = LAION_HTSAT_SPEC_SIZE // LAION_HTSAT_PATCH_STRIDE // window_size
        if state_dict[mask_key].shape[0] != windows_per_side**2:
            problems.append(
                f"{mask_key} covers {state_dict[mask_key].shape[0]} windows; spec_size {LAION_HTSAT_SPEC_SIZE} and"
                f" patch stride {LAION_HTSAT_PATCH_STRIDE} give {windows_per_side**2}"
            )
    if variant is not None:
        if variant not in LAION_HTSAT_VARIANTS:
            problems.append(f"unknown HTS-AT variant {variant!r}; known: {sorted(LAION_HTSAT_VARIANTS)}")
        else:
            derived = {"patch_embeds_hidden_size": width, "depths": depths, "num_attention_heads": heads}
            for name, expected in LAION_HTSAT_VARIANTS[variant].items():
                if derived[name] != expected:
                    problems.append(f"{name} is {derived[name]} in the weights but {expected} for HTS-AT {variant!r}")
    if problems:
        raise ConversionError(f"HTS-AT weights under {prefix!r}: " + "; ".join(problems) + ".")
    return ClapAudioConfig(
        num_mel_bins=get("bn0.weight").shape[0],
        spec_size=LAION_HTSAT_SPEC_SIZE,
        patch_size=patch_size,
        patch_stride=[LAION_HTSAT_PATCH_STRIDE, LAION_HTSAT_PATCH_STRIDE],
        patch_embed_input_channels=in_channels,
        patch_embeds_hidden_size=width,
        enable_patch_layer_norm=prefix + "patch_embed.norm.weight" in state_dict,
        depths=depths,
        num_attention_heads=heads,
        window_size=window_size,
        mlp_ratio=mlp_ratio,
        qkv_bias=prefix + "layers.0.blocks.0.attn.qkv.bias" in state_dict,
        hidden_size=hidden_size,
        enable_fusion=fusion,
        fusion_type="aff_2d" if fusion else None,
        num_hidden_layers=num_stages,
    )


__all__ = [
    "HTSAT_NON_MODEL_KEYS",
    "LAION_HTSAT_VARIANTS",
    "convert_htsat_state_dict",
    "htsat_config_from_state_dict",
    "relative_position_index",
]
