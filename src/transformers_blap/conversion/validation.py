"""The error type of the conversion code and the strict comparison of a converted state dict with its target."""

from collections.abc import Mapping

import torch


class ConversionError(ValueError):
    """
    A checkpoint or configuration cannot be converted: unknown, missing or mis-shaped keys, an unsupported
    configuration, or a file that is not what it claims to be. The message names the input and lists every problem.
    """


def format_key_problems(
    source: str,
    unknown: list[str] | None = None,
    missing: list[str] | None = None,
    mis_shaped: list[str] | None = None,
    limit: int = 50,
) -> str:
    """
    Build one readable message listing every unknown, missing and mis-shaped key of `source`.

    Args:
        source (`str`): what was being converted (a file name and the part of it).
        unknown (`list[str]`, *optional*): keys the converter does not know.
        missing (`list[str]`, *optional*): keys the converter needs and did not find.
        mis_shaped (`list[str]`, *optional*): `"key: got (..), expected (..)"` descriptions.
        limit (`int`, *optional*, defaults to 50): at most this many keys are listed per kind.

    Returns:
        `str`: the message (empty when there is no problem).
    """
    sections = []
    for title, keys in (("unknown", unknown), ("missing", missing), ("mis-shaped", mis_shaped)):
        if not keys:
            continue
        listed = "\n".join(f"    {key}" for key in sorted(keys)[:limit])
        more = f"\n    ... and {len(keys) - limit} more" if len(keys) > limit else ""
        sections.append(f"  {len(keys)} {title} key(s):\n{listed}{more}")
    if not sections:
        return ""
    return f"{source} cannot be converted:\n" + "\n".join(sections)


def check_state_dict_matches(
    state_dict: Mapping[str, torch.Tensor], expected_shapes: Mapping[str, torch.Size], source: str
) -> None:
    """
    Raise a [`ConversionError`] listing every difference between a converted state dict and the state dict a model
    expects: keys only in `state_dict` (unknown), keys only in `expected_shapes` (missing) and shape mismatches.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): the converted weights.
        expected_shapes (`Mapping[str, torch.Size]`): name -> shape of every tensor the target model holds, e.g.
            `{k: v.shape for k, v in model.state_dict().items()}` of a model built on the meta device.
        source (`str`): what was converted, for the message.
    """
    unknown = [key for key in state_dict if key not in expected_shapes]
    missing = [key for key in expected_shapes if key not in state_dict]
    mis_shaped = [
        f"{key}: got {tuple(tensor.shape)}, expected {tuple(expected_shapes[key])}"
        for key, tensor in state_dict.items()
        if key in expected_shapes and tuple(tensor.shape) != tuple(expected_shapes[key])
    ]
    message = format_key_problems(source, unknown=unknown, missing=missing, mis_shaped=mis_shaped)
    if message:
        raise ConversionError(message)


__all__ = ["ConversionError", "check_state_dict_matches", "format_key_problems"]
