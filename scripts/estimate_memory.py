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
- logits gradients: when backward starts, the gradients of the float32 logits and of the compute-dtype logits
  (caption tokens x 32128 x (4 + 2 or 4) bytes per clip) exist on top of the saved activations.
- fixed: CUDA context, cuBLAS workspaces and allocator slack, taken as 2 GiB, plus 10 % of the total as margin.

- the HTS-AT forward runs without autograd before anything above is held; its transient (4096 patch tokens x 96-384
  channels, 64 x 64 window attention maps) is the peak of the live intermediate tensors of a no-grad forward pass
  (tracked per operator on the CPU, 2 clips minus 1). A clip needs the larger of the two.

Sequence lengths: 32 query tokens + the prompt (`--prompt_tokens`, 10 for the default prompt) in the T5 encoder and
`--caption_tokens` (max_txt_len, 64) in the decoder; every clip is one 10 s window.

    python scripts/estimate_memory.py            # prints the table in Markdown
"""

import argparse
import contextlib
import math
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import ClapAudioModel

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


class PeakLiveBytes(TorchDispatchMode):
    """
    Peak bytes of the tensors that operators create while the mode is active, each storage counted once and freed
    when the last tensor viewing it is garbage-collected. Exact for no-grad code (nothing is kept alive by autograd).

    Args:
        excluded (`set[int]`): storage addresses not to count (the model's weights and buffers).
    """

    def __init__(self, excluded: set[int]):
        super().__init__()
        self.excluded = excluded
        self.live = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}  # address -> [live tensors, bytes]

    def _release(self, address: int) -> None:
        entry = self._storages[address]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._storages[address]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(output)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            address = storage.data_ptr()
            if address == 0 or address in self.excluded:
                continue
            entry = self._storages.get(address)
            if entry is None:
                entry = self._storages[address] = [0, storage.nbytes()]
                self.live += entry[1]
                self.peak = max(self.peak, self.live)
            entry[0] += 1
            weakref.finalize(tensor, self._release, address)
        return output


def audio_encoder_transient_bytes(bf16: bool) -> float:
    """Per-clip peak of the intermediate tensors of a no-grad forward pass of the full HTS-AT (2 clips minus 1)."""
    audio_config = BlapConfig().audio_config
    model = ClapAudioModel(audio_config).eval()
    if bf16:
        model.to(torch.bfloat16)
    weights = {tensor.untyped_storage().data_ptr() for tensor in [*model.parameters(), *model.buffers()]}
    frames = min(1001, audio_config.spec_size * audio_config.spec_size // audio_config.num_mel_bins)
    peaks = []
    for batch_size in (1, 2):
        features = torch.randn(batch_size, 1, frames, audio_config.num_mel_bins, dtype=model.dtype)
        with torch.no_grad(), PeakLiveBytes(weights) as tracker:
            model(input_features=features)
        peaks.append(tracker.peak)
    return peaks[1] - peaks[0]


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
    header = "| setting | weights + optimizer (GiB) | per clip (MiB) | " + " | ".join(
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
        # When backward starts, the gradient of the float32 logits (the loss upcasts them) and of the logits in the
        # compute dtype exist on top of everything saved.
        per_clip += args.caption_tokens * config.text_config.vocab_size * (4 + (2 if bf16 else 4))
        audio = audio_encoder_transient_bytes(bf16)
        per_clip = max(per_clip, audio)
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
            f"{label}: saved activations per clip = {constant / 2**20:.1f} MiB + {layers[0]} x"
            f" {per_encoder / 2**20:.2f} MiB (encoder layer) + {layers[1]} x {per_decoder / 2**20:.2f} MiB (decoder"
            f" layer); HTS-AT forward transient {audio / 2**20:.1f} MiB; per clip {per_clip / 2**20:.1f} MiB"
        )
    print()
    print("\n".join(rows))


if __name__ == "__main__":
    main()
