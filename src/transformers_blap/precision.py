"""
Which dtype to run BLAP in on a device: bf16 where the hardware computes it natively, float32 elsewhere.

bf16 weights halve the memory and, on hardware with bf16 arithmetic, speed captioning up (x1.7-1.9 over float32 at
batch 1-4 on AVX-512 BF16 CPUs); elsewhere bf16 is emulated and slower than float32. Token ids differ from float32's
either way. The Q-Former and its query tokens stay float32 whatever is chosen (`_keep_in_fp32_modules_strict`).
"""

from pathlib import Path

import torch

# The dtype choices of `blap caption --dtype` (and of [`resolve_dtype`]): "auto" picks by hardware, "checkpoint"
# keeps the dtype the weights were saved in (transformers' own `dtype="auto"`).
DTYPE_CHOICES = ("auto", "checkpoint", "float32", "float16", "bfloat16")

# /proc/cpuinfo flags of CPUs that compute bf16 dot products natively (AVX-512 BF16; AMX tiles).
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this machine's CPU, from `/proc/cpuinfo` (empty where there is none)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    return frozenset(line.partition(":")[2].split())


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively: AVX-512 BF16 or AMX, read from `/proc/cpuinfo` (Linux), else from
    torch's own CPU feature probe."""
    flags = cpu_flags()
    if flags:
        return bool(flags & NATIVE_BF16_CPU_FLAGS)
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(probe() for probe in probes if probe is not None)


def has_native_bf16(device: str | int | torch.device) -> bool:
    """
    Whether `device` computes bf16 natively: a CUDA GPU that supports it without emulation (Ampere or newer), or a
    CPU with AVX-512 BF16 / AMX. Other devices answer `False`.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_dtype(dtype: str | torch.dtype | None, device: str | int | torch.device = "cpu") -> torch.dtype | str:
    """
    The `dtype` to load a BLAP model with for `device` (for `from_pretrained(dtype=...)` and `pipeline(dtype=...)`).

    Args:
        dtype (`str` or `torch.dtype`): `"auto"`: `torch.bfloat16` where `device` computes bf16 natively
            ([`has_native_bf16`]), `torch.float32` elsewhere; `"checkpoint"` or `None`: the dtype the weights were
            saved in (returned as transformers' `"auto"`); `"float32"`, `"float16"`, `"bfloat16"` or a
            `torch.dtype`: that dtype.
        device (`str`, `int` or `torch.device`, *optional*, defaults to `"cpu"`): where the model will run.

    Returns:
        `torch.dtype`, or `"auto"` for the checkpoint's own dtype.

    Example:

    ```python
    >>> from transformers import pipeline
    >>> from transformers_blap import resolve_dtype
    >>> captioner = pipeline("audio-to-text", model="path/to/blap", device="cpu", dtype=resolve_dtype("auto", "cpu"))
    ```
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "checkpoint":
        return "auto"
    if dtype == "auto":
        return torch.bfloat16 if has_native_bf16(device) else torch.float32
    if dtype in DTYPE_CHOICES:
        return getattr(torch, dtype)
    raise ValueError(f"dtype must be a torch.dtype or one of {', '.join(DTYPE_CHOICES)}; got {dtype!r}.")


__all__ = ["DTYPE_CHOICES", "cpu_has_native_bf16", "has_native_bf16", "resolve_dtype"]
