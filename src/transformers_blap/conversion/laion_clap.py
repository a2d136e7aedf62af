"""
A raw LAION CLAP checkpoint (`.pt`, as `laion_clap`'s `load_ckpt` reads, e.g. `music_audioset_epoch_15_esc_90.14.pt`,
the music-tuned HTS-AT-base) -> a `transformers.ClapAudioModel` folder, the audio encoder that
`conversion.parts.stage1_from_pretrained_parts` takes.

    blap convert-laion-clap music_audioset_epoch_15_esc_90.14.pt clap-audio-music \\
        --variant base

The checkpoint's text tower, projections and logit scales are dropped: BLAP uses the audio tower only. The HTS-AT key
mapping and the configuration derivation are `conversion.htsat`'s; this module reads the file, finds the audio tower
(`module.` prefixes of distributed training and a top-level `state_dict` are handled, as `laion_clap` does) and loads
the result strictly. Also reads BLAP's own pretrained-audio-encoder files (`audio_branch.*` + `audio_projection.*`).
"""

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import torch
from transformers import ClapAudioModel

from .htsat import convert_htsat_state_dict, htsat_config_from_state_dict
from .validation import ConversionError

AUDIO_PREFIX = "audio_branch."


def load_laion_clap_state_dict(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """
    The state dict of a LAION CLAP checkpoint, without the `module.` prefix of distributed training.

    Args:
        path (`str` or `os.PathLike`): a `.pt` file: `{"state_dict": ..., "epoch": ..., ...}` or a bare state dict.
        allow_pickle (`bool`, *optional*, defaults to `False`): read with `torch.load(weights_only=False)`, which
            runs arbitrary code from the file; only for a file you trust that `weights_only` loading refuses.

    Returns:
        `dict[str, torch.Tensor]`.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as error:  # torch raises several types for a file that is not a (safe) checkpoint
        hint = "" if allow_pickle else " If it is a trusted file that weights-only loading refuses, pass allow_pickle."
        raise ConversionError(f"Cannot read the LAION CLAP checkpoint {os.fspath(path)!r}: {error}.{hint}") from error
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ConversionError(f"{os.fspath(path)!r} holds no state dict of tensors.")
    return {(key[len("module.") :] if key.startswith("module.") else key): value for key, value in state_dict.items()}


def convert_laion_clap_checkpoint(
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor], variant: str | None = None, allow_pickle: bool = False
) -> ClapAudioModel:
    """
    The audio tower of a LAION CLAP checkpoint as a `ClapAudioModel` (HTS-AT without feature fusion).

    Args:
        checkpoint (`str`, `os.PathLike` or a state dict): the `.pt` file or its (prefix-stripped) state dict.
        variant (`str`, *optional*): `"tiny"`, `"base"` or `"large"`: cross-checks the weights against that HTS-AT.
        allow_pickle (`bool`, *optional*, defaults to `False`): see [`load_laion_clap_state_dict`].

    Returns:
        `ClapAudioModel` in eval mode, float32, every weight loaded.

    Raises:
        [`ConversionError`]: no audio tower, unknown / missing / mis-shaped keys, feature fusion.
    """
    if isinstance(checkpoint, Mapping):
        state_dict = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in checkpoint.items()}
    else:
        state_dict = load_laion_clap_state_dict(checkpoint, allow_pickle=allow_pickle)
    config = htsat_config_from_state_dict(state_dict, AUDIO_PREFIX, variant)
    if config.enable_fusion:
        raise ConversionError("The checkpoint's HTS-AT uses feature fusion; BLAP's audio encoder does not.")
    weights = convert_htsat_state_dict(state_dict, AUDIO_PREFIX)
    model = ClapAudioModel(config)
    result = model.load_state_dict({key: value.float() for key, value in weights.items()}, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConversionError(
            f"The converted HTS-AT does not fit ClapAudioModel: missing {sorted(result.missing_keys)},"
            f" unexpected {sorted(result.unexpected_keys)}."
        )
    return model.eval()


def run(args: argparse.Namespace) -> int:
    """Convert from parsed arguments; a [`ConversionError`] becomes an error message and exit status 2."""
    try:
        model = convert_laion_clap_checkpoint(args.checkpoint, variant=args.variant, allow_pickle=args.allow_pickle)
    except ConversionError as error:
        print(f"blap convert-laion-clap: error: {error}", file=sys.stderr)
        return 2
    model.save_pretrained(args.output_dir)
    num_parameters = sum(param.numel() for param in model.parameters())
    print(f"HTS-AT audio encoder ({num_parameters:,} parameters) written to {args.output_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m transformers_blap.conversion.laion_clap ...`, the same as `blap convert-laion-clap ...`."""
    from blap_cli import main as blap_main

    return blap_main(["convert-laion-clap", *(sys.argv[1:] if argv is None else argv)])


__all__ = [
    "convert_laion_clap_checkpoint",
    "load_laion_clap_state_dict",
    "main",
    "run",
]

if __name__ == "__main__":
    sys.exit(main())
