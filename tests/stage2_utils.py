"""Helpers shared by the stage-2 tests and their two-process worker: deterministic tiny model, clips, arguments."""

from pathlib import Path

import datasets
import numpy as np
import soundfile as sf
import torch

from transformers_blap import BlapForConditionalGeneration
from transformers_blap.training import BlapStage2TrainingArguments

from tiny import TINY_QFORMER, TINY_TEXT, tiny_config

RATE = 16_000
# Captions of different lengths, so micro-batches hold different numbers of caption tokens.
CAPTIONS = [
    "calm piano",
    "jazz",
    "a loud rock song with heavy drums and distorted guitars",
    "an upbeat pop tune with a female singer and synthesizers",
    "slow ambient pads",
    "solo violin",
    "a marching band playing a fast march with brass and snare drums",
    "electronic dance music with a driving kick drum",
]


def deterministic_config():
    """The tiny BLAP with every dropout off, so two runs on the same batch compute the same numbers."""
    return tiny_config(
        qformer_config=dict(TINY_QFORMER, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        text_config=dict(TINY_TEXT, dropout_rate=0.0),
    )


def deterministic_model(seed: int = 0) -> BlapForConditionalGeneration:
    torch.manual_seed(seed)
    model = BlapForConditionalGeneration(deterministic_config())
    model.generation_config.num_beams = 2
    model.generation_config.max_new_tokens = 6
    model.generation_config.min_length = 1
    return model


def write_clip_dataset(directory: Path, num_clips: int = 8, seconds: float = 1.0) -> datasets.Dataset:
    """`num_clips` noise clips of exactly `seconds` (one 1 s window: no random crop) with one caption each."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    audio, captions = [], []
    for index in range(num_clips):
        path = directory / f"clip{index}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(seconds * RATE))).astype(np.float32), RATE, subtype="FLOAT")
        audio.append(str(path))
        captions.append([CAPTIONS[index % len(CAPTIONS)]])
    return datasets.Dataset.from_dict({"audio": audio, "captions": captions})


def sgd_args(output_dir: Path, **overrides) -> BlapStage2TrainingArguments:
    """Plain SGD, constant learning rate, no clipping or weight decay: an update is exactly -lr * gradient."""
    kwargs = {
        "output_dir": str(output_dir),
        "optim": "sgd",
        "learning_rate": 1.0,
        "lr_scheduler_type": "constant",
        "max_grad_norm": 0.0,
        "weight_decay": 0.0,
        "max_steps": 1,
        "per_device_train_batch_size": 4,
        "train_sampling_strategy": "sequential",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
    }
    kwargs.update(overrides)
    return BlapStage2TrainingArguments(**kwargs)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}
