#!/usr/bin/env python
"""
Captioning on an accelerator: captions per second, device memory and the fraction of memory bandwidth that decoding
reaches, for the model in `--dtype` and loaded in 8-bit / 4-bit through bitsandbytes (the `quantization` extra).

Each variant is loaded onto `--device`, warmed up, then timed (fastest of `--repeats` calls) twice: a full caption of
`--new-tokens` tokens and a one-token caption (audio encoder, Q-Former, T5 encoder and the first decoder step). Their
difference divided by the remaining steps is the time of one decoding step; what such a step must read from memory —
the decoder's and the `lm_head`'s weights, the cross-attention keys/values (once per clip) and the self-attention
cache at its mean length — divided by that time, against the copy bandwidth measured on the same device, is the
fraction of memory bandwidth reached. Device memory (peak and after loading) is read from CUDA's allocator; on
another device it is not reported (`scripts/benchmark.py` measures process memory on CPU).

Usage:

    PYTHONPATH=src python scripts/benchmark_gpu.py --dims xl --dtype bfloat16 --clips 8        # random XL weights
    PYTHONPATH=src python scripts/benchmark_gpu.py --checkpoint blap-converted --clips 8       # a saved BLAP
"""

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch
from transformers import BitsAndBytesConfig

from transformers_blap import BlapForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import DTYPES, PROMPT_LENGTH, QUANTIZATION, checkpoint, environment, weights_bytes  # noqa: E402

VARIANTS = ("full", *QUANTIZATION)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, num_bytes: int = 2**29, repeats: int = 5) -> float:
    """Bytes per second that a device-to-device copy moves (read + write) on `device`: the reference bandwidth."""
    source = torch.empty(num_bytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        target.copy_(source)
    synchronize(device)
    return 2 * num_bytes * repeats / (time.perf_counter() - start)


def random_inputs(model: BlapForConditionalGeneration, num_clips: int, device: torch.device) -> dict:
    """
    Noise log-mel of the longest window the model reads and a prompt of the release's length.

    Returns:
        `input_features` of shape `(num_clips, 1, num_frames, num_mel_bins)` and `input_ids` of shape
        `(num_clips, PROMPT_LENGTH)`, on `device`.
    """
    audio_config = model.config.audio_config
    max_frames = audio_config.spec_size * (audio_config.spec_size // audio_config.num_mel_bins)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(num_clips, 1, min(1001, max_frames), audio_config.num_mel_bins, generator=generator)
    vocab_size = model.config.text_config.vocab_size
    prompt = torch.randint(3, vocab_size, (num_clips, PROMPT_LENGTH - 1), generator=generator)
    eos = torch.full((num_clips, 1), model.config.text_config.eos_token_id)
    return {"input_features": features.to(device), "input_ids": torch.cat([prompt, eos], dim=1).to(device)}


def decode_step_bytes(model: BlapForConditionalGeneration, num_clips: int, num_beams: int, new_tokens: int) -> int:
    """
    What one decoding step reads: the T5 decoder's weights (embedding lookups aside), the `lm_head`, the
    cross-attention keys/values once per clip (encoder length: queries + prompt) and the self-attention cache of
    every beam at its mean length over the caption.
    """
    language_model = model.language_model
    decoder = language_model.decoder
    weights = weights_bytes(decoder) - weights_bytes(decoder.embed_tokens) + weights_bytes(language_model.lm_head)
    config = language_model.config
    per_position = (
        2 * config.num_decoder_layers * config.num_heads * config.d_kv * language_model.shared.weight.element_size()
    )
    encoder_length = model.config.num_query_tokens + PROMPT_LENGTH
    cross = num_clips * encoder_length * per_position
    self_attention = num_clips * num_beams * (new_tokens + 1) / 2 * per_position
    return int(weights + cross + self_attention)


def load(path: Path, variant: str, dtype: torch.dtype, device: torch.device) -> BlapForConditionalGeneration:
    quantization = None
    if variant != "full":
        quantization = BitsAndBytesConfig(**{**QUANTIZATION[variant], "bnb_4bit_compute_dtype": dtype})
    model = BlapForConditionalGeneration.from_pretrained(
        path, dtype=dtype, device_map={"": str(device)}, quantization_config=quantization
    )
    return model.eval()


def fastest_call(model: BlapForConditionalGeneration, inputs: dict, repeats: int, device: torch.device, **options):
    """Seconds of the fastest of `repeats` `generate` calls."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        model.generate(**inputs, **options)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def bench_variant(path: Path, variant: str, args: argparse.Namespace, bandwidth: float) -> dict:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    model = load(path, variant, dtype, device)
    load_s = time.perf_counter() - start
    loaded_bytes = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    inputs = random_inputs(model, args.clips, device)
    options = {"num_beams": args.beams}
    with torch.inference_mode():
        model.generate(**inputs, **options, max_new_tokens=2, min_new_tokens=2)  # warm-up: kernels, allocator
        full = fastest_call(
            model,
            inputs,
            args.repeats,
            device,
            **options,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
        )
        first = fastest_call(model, inputs, args.repeats, device, **options, max_new_tokens=1, min_new_tokens=1)
    # A step shorter than the timing noise (tiny models, few tokens) is not resolved: its figures are None.
    step_s = (full - first) / (args.new_tokens - 1) if full > first else None
    step_bytes = decode_step_bytes(model, args.clips, args.beams, args.new_tokens)
    row = {
        "variant": f"{args.dtype}" if variant == "full" else f"{variant} (bitsandbytes, {args.dtype} compute)",
        "load_s": load_s,
        "weights_gib": weights_bytes(model) / 2**30,
        "captions_per_s": args.clips / full,
        "decode_step_ms": None if step_s is None else 1000 * step_s,
        "decode_step_bytes": step_bytes,
        "decode_gb_per_s": None if step_s is None else step_bytes / step_s / 1e9,
        "bandwidth_fraction": None if step_s is None else step_bytes / step_s / bandwidth,
        "device_memory_after_load_gib": None if loaded_bytes is None else loaded_bytes / 2**30,
        "device_memory_peak_gib": None if device.type != "cuda" else torch.cuda.max_memory_allocated(device) / 2**30,
    }
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def format_table(rows: list[dict]) -> str:
    lines = [
        "| variant | captions/s | decode step ms | GB/s read | of copy bandwidth | weights GiB"
        " | device memory peak GiB | load s |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    for row in rows:
        cells = [
            cell(row["captions_per_s"], ".2f"),
            cell(row["decode_step_ms"], ".1f"),
            cell(row["decode_gb_per_s"], ".0f"),
            cell(row["bandwidth_fraction"], ".0%"),
            cell(row["weights_gib"], ".2f"),
            cell(row["device_memory_peak_gib"], ".2f"),
            cell(row["load_s"], ".1f"),
        ]
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--dims", default="xl", choices=["base", "xl"], help="random weights at these T5 dims")
    source.add_argument("--checkpoint", type=Path, default=None, help="a saved BLAP instead of random weights")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=list(DTYPES), help="weights (full) / compute dtype")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--clips", type=int, default=8, help="clips per generate call")
    parser.add_argument("--beams", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/blap-benchmark"), help="random checkpoints")
    parser.add_argument("--output", type=Path, default=None, help="JSON results (default: WORKDIR/results-gpu.json)")
    args = parser.parse_args(argv)
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2: a decoding step is timed as (full - one token) / (tokens - 1)")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.checkpoint or checkpoint(args.dims, args.dtype, args.workdir)
    device = torch.device(args.device)
    bandwidth = copy_bandwidth(device)
    rows = [bench_variant(path, variant, args, bandwidth) for variant in args.variants]
    results = {
        "environment": {
            **environment(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else args.device,
            "copy_bandwidth_gb_per_s": bandwidth / 1e9,
            "checkpoint": str(path),
            "clips": args.clips,
            "beams": args.beams,
            "new_tokens": args.new_tokens,
        },
        "rows": rows,
    }
    output = args.output or args.workdir / "results-gpu.json"
    output.write_text(json.dumps(results, indent=2))
    print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s on {results['environment']['device']}\n{format_table(rows)}")
    print(f"written to {output}")
    return results


if __name__ == "__main__":
    main()
