#!/usr/bin/env python
"""
Per-device GPU memory of BLAP stage-2 training (full model: HTS-AT tiny, BERT-base Q-Former, Flan-T5-XL), computed
from a memory model, not measured on a GPU:

    memory = fixed + weights + trainable x (gradient 4 B + DDP bucket 4 B + Adam 8 B) + batch x activations

- weights: parameter counts of the full-size model (built on the meta device, no download) x bytes per weight; the
  trained weights (Q-Former, query tokens, audio LayerNorm, projection) are float32 in every setting, the frozen ones
  (HTS-AT, Flan-T5) float32 or bfloat16 (`--model_dtype bfloat16`).
- activations: the bytes autograd keeps for the backward pass, per clip. Measured on the CPU by running a forward pass
  of the real architecture with the full HTS-AT and Q-Former and a Flan-T5-XL cut to 1-2 encoder/decoder layers,
  recording every tensor saved for backward (deduplicated by storage, parameters excluded), and extrapolating
  linearly to 24 + 24 layers. With gradient checkpointing only each T5 block's input is kept (plus one block's
  activations while it is recomputed, taken from the bf16 run without checkpointing).
- fixed: CUDA context, cuBLAS workspaces and allocator slack, taken as 2 GiB, plus 10 % of the total as margin.

Sequence lengths: 32 query tokens + the prompt (`--prompt_tokens`, 10 for the default prompt) in the T5 encoder and
`--caption_tokens` (max_txt_len, 64) in the decoder; every clip is one 10 s window.

    python scripts/estimate_memory.py            # prints the table in Markdown
"""

import argparse
import contextlib
import math

import torch

from transformers_blap import BlapConfig, BlapForConditionalGeneration
from transformers_blap.training import configure_stage2_trainable

GIB = 1024**3
FIXED_BYTES = 2 * GIB
MARGIN = 0.10
# Per trained weight: gradient (4 B), DDP gradient bucket (4 B), Adam first and second moments (8 B).
TRAINABLE_STATE_BYTES = 4 + 4 + 8


def parameter_counts(config: BlapConfig) -> dict[str, int]:
    """Parameters of the full model per part: `trainable` (stage 2), `audio_encoder`, `language_model`."""
    with torch.device("meta"):
        model = BlapForConditionalGeneration(config)
    counts = {"trainable": 0, "audio_encoder": 0, "language_model": 0}
    for name, param in model.named_parameters():
        part = name.split(".", 1)[0]
        counts[part if part in counts else "trainable"] += param.numel()
    return counts


def saved_activation_bytes(
    config: BlapConfig, batch_size: int, prompt_tokens: int, caption_tokens: int, bf16: bool, checkpointing: bool
) -> int:
    """Bytes of the tensors autograd saves in one stage-2 forward pass (storages counted once, parameters excluded)."""
    torch.manual_seed(0)
    model = BlapForConditionalGeneration(config)
    if bf16:
        # As `load_stage2_model(dtype=torch.bfloat16)`: frozen weights in bfloat16, so autocast uses them as they are
        # instead of saving bfloat16 copies of float32 weights for the backward pass.
        model.to(torch.bfloat16)
    configure_stage2_trainable(model)  # trained weights back to float32
    model.train()
    if checkpointing:
        # Reentrant checkpointing saves each block's inputs through autograd, where the hook below sees them.
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    parameter_storages = {param.untyped_storage().data_ptr() for param in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    frames = config.audio_config.spec_size * config.audio_config.spec_size // config.audio_config.num_mel_bins
    inputs = {
        "input_features": torch.randn(batch_size, 1, min(1001, frames), config.audio_config.num_mel_bins),
        "input_ids": torch.randint(2, 100, (batch_size, prompt_tokens)),
        "labels": torch.randint(2, 100, (batch_size, caption_tokens)),
    }
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
        loss = model(**inputs).loss
    del loss
    return sum(seen.values())


def activation_model(args: argparse.Namespace, bf16: bool, checkpointing: bool) -> tuple[float, float, float]:
    """Per-clip activation bytes: (constant part, per encoder layer, per decoder layer), from three cut models."""
    measurements = {}
    for encoder_layers, decoder_layers in ((1, 1), (2, 1), (1, 2)):
        config = BlapConfig()
        config.text_config.num_layers = encoder_layers
        config.text_config.num_decoder_layers = decoder_layers
        total = saved_activation_bytes(
            config, args.measure_batch_size, args.prompt_tokens, args.caption_tokens, bf16, checkpointing
        )
        measurements[(encoder_layers, decoder_layers)] = total / args.measure_batch_size
    per_encoder = measurements[(2, 1)] - measurements[(1, 1)]
    per_decoder = measurements[(1, 2)] - measurements[(1, 1)]
    constant = measurements[(1, 1)] - per_encoder - per_decoder
    return constant, per_encoder, per_decoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt_tokens", type=int, default=10)
    parser.add_argument("--caption_tokens", type=int, default=64)
    parser.add_argument("--measure_batch_size", type=int, default=2)
    parser.add_argument("--gpus_gib", type=int, nargs="+", default=[24, 40, 80])
    args = parser.parse_args()

    config = BlapConfig()
    counts = parameter_counts(config)
    layers = (config.text_config.num_layers, config.text_config.num_decoder_layers)
    print(
        f"Parameters: trained {counts['trainable'] / 1e6:.1f} M, HTS-AT {counts['audio_encoder'] / 1e6:.1f} M,"
        f" Flan-T5-XL {counts['language_model'] / 1e6:.1f} M"
    )
    settings = [
        ("fp32 weights, fp32", 4, False, False),
        ("bf16 frozen weights, bf16 autocast", 2, True, False),
        ("bf16 frozen weights, bf16 autocast, gradient checkpointing", 2, True, True),
    ]
    header = "| setting | weights + optimizer (GiB) | activations per clip (MiB) | " + " | ".join(
        f"max batch {gib} GB" for gib in args.gpus_gib
    )
    rows = [header + " |", "|" + "---|" * (3 + len(args.gpus_gib))]
    largest_layer = 0.0
    for label, frozen_bytes, bf16, checkpointing in settings:
        constant, per_encoder, per_decoder = activation_model(args, bf16, checkpointing)
        per_clip = constant + layers[0] * per_encoder + layers[1] * per_decoder
        if checkpointing:
            per_clip += largest_layer  # one block's activations exist again while it is recomputed
        else:
            largest_layer = max(per_encoder, per_decoder)
        static = (
            counts["trainable"] * (4 + TRAINABLE_STATE_BYTES)
            + (counts["audio_encoder"] + counts["language_model"]) * frozen_bytes
        )
        batches = []
        for gib in args.gpus_gib:
            budget = gib * GIB * (1 - MARGIN) - FIXED_BYTES - static
            batches.append(str(max(0, math.floor(budget / per_clip))))
        rows.append(f"| {label} | {static / GIB:.1f} | {per_clip / 2**20:.0f} | " + " | ".join(batches) + " |")
        print(
            f"{label}: activations per clip = {constant / 2**20:.1f} MiB + {layers[0]} x {per_encoder / 2**20:.2f}"
            f" MiB (encoder layer) + {layers[1]} x {per_decoder / 2**20:.2f} MiB (decoder layer)"
        )
    print()
    print("\n".join(rows))


if __name__ == "__main__":
    main()
