"""Helpers shared by the pipeline, CLI and Hub tests: a saved tiny BLAP and synthetic audio files."""

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from transformers_blap import (
    BlapForConditionalGeneration,
    BlapForRepresentationLearning,
    BlapProcessor,
    BlapStage1Processor,
    build_qformer_tokenizer,
)

from tiny import tiny_config, tiny_feature_extractor, tiny_processor, tiny_stage1_config

RATE = 16_000  # the tiny feature extractor's rate; its window is 1 s
# Short greedy captions (at least two tokens).
TEST_GENERATION = {"num_beams": 1, "max_new_tokens": 4, "min_length": 3}


def tiny_blap(tokenizer_dir: Path) -> tuple[BlapForConditionalGeneration, BlapProcessor]:
    """
    A tiny BLAP whose captions depend on the audio: the Q-Former, projection and T5 matrices are drawn with a wide
    spread (at the default initialisation every input gets the same caption), and special tokens other than `</s>`
    are suppressed so that captions are made of word pieces.
    """
    torch.manual_seed(0)
    model = BlapForConditionalGeneration(tiny_config()).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim >= 2 and not name.startswith("audio_encoder."):
                parameter.normal_(0.0, 0.3)
    processor = tiny_processor(tokenizer_dir)
    tokenizer = processor.tokenizer
    model.generation_config.update(
        **TEST_GENERATION,
        suppress_tokens=[i for i in tokenizer.all_special_ids if i != tokenizer.eos_token_id],
    )
    return model, processor


def save_tiny_blap(folder: Path, tokenizer_dir: Path) -> Path:
    """[`tiny_blap`] saved in `folder` (model and processor)."""
    model, processor = tiny_blap(tokenizer_dir)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_stage1(folder: Path, fixture_dir: Path) -> Path:
    """A tiny stage-1 model (1 s windows at 16 kHz, 4 query tokens of width 8) with spread-out weights and its
    processor, saved in `folder`."""
    torch.manual_seed(0)
    model = BlapForRepresentationLearning(tiny_stage1_config()).eval()
    with torch.no_grad():  # at initialisation the embeddings nearly coincide
        for name, param in model.named_parameters():
            if name != "temperature":
                param.add_(0.3 * torch.randn_like(param))
    processor = BlapStage1Processor(
        tiny_feature_extractor(), build_qformer_tokenizer(fixture_dir / "bert-base-uncased"), max_txt_len=8
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def tone(seconds: float, rate: int = RATE, channels: int = 1, frequency: float = 440.0, seed: int = 0) -> np.ndarray:
    """A noisy tone, `(num_samples,)` for mono or `(num_samples, channels)`, float32 in [-1, 1]."""
    t = np.arange(int(round(seconds * rate))) / rate
    rng = np.random.default_rng(seed)
    mono = 0.4 * np.sin(2 * np.pi * frequency * t) + 0.05 * rng.standard_normal(t.shape[0])
    samples = mono.astype(np.float32)
    return samples if channels == 1 else np.stack([samples * (0.5 + 0.5 * c) for c in range(channels)], axis=1)


def write_audio(path: Path, samples: np.ndarray, rate: int = RATE, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, rate, **kwargs)
    return path
