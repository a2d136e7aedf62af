"""
Stage-1 training of [`BlapForRepresentationLearning`]: a collator that decodes audio and tokenizes one caption per
clip with the Q-Former's BERT tokenizer, SpecAugment, the first-word caption dropping of the original release, and
`BlapStage1Trainer`, a `Trainer` that logs the three stage-1 losses.
"""

import dataclasses
import os
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import EvalLoopOutput

from ..audio import load_audio
from ..hub import HubErrorsInTrainer
from ..processing_blap import BlapStage1Processor
from .model_card import write_model_card

STAGE1_LOSSES = ("loss_atc", "loss_atm", "loss_lm")


# ----------------------------------------------------------------------------------------------------- data


AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aiff", ".aif")


def read_audio_captions(
    path: str | os.PathLike, audio_column: str = "audio", caption_column: str = "caption"
) -> list[dict[str, Any]]:
    """
    Read audio paths and their captions from a CSV file, a JSON Lines file or a folder.

    - CSV / JSONL: one row per (audio, caption) pair or per clip; `caption_column` holds a string (or, in JSONL, a
      list of strings). Rows naming the same audio are merged into one clip with several captions. Relative audio
      paths are relative to the file's folder.
    - Folder: its `metadata.jsonl` / `metadata.csv` (read as above; `file_name` is accepted as the audio column, as
      in `datasets`' audiofolder), or else every audio file with a sidecar `.txt` of one caption per line.

    Returns:
        `list[dict]`: `{audio_column: absolute path, caption_column: list[str]}` per clip, in first-seen order.
    """
    import csv
    import json
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        for name in ("metadata.jsonl", "metadata.csv"):
            if (path / name).is_file():
                return read_audio_captions(path / name, audio_column, caption_column)
        clips = []
        for audio in sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS):
            sidecar = audio.with_suffix(".txt")
            if not sidecar.is_file():
                raise FileNotFoundError(f"{audio} has no caption file {sidecar.name} beside it.")
            captions = [line.strip() for line in sidecar.read_text(encoding="utf-8").splitlines() if line.strip()]
            if not captions:
                raise ValueError(f"{sidecar} holds no caption.")
            clips.append({audio_column: str(audio), caption_column: captions})
        if not clips:
            raise ValueError(
                f"{path} has no metadata.jsonl, metadata.csv or audio files ({', '.join(AUDIO_EXTENSIONS)})."
            )
        return clips
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
    elif path.suffix in (".jsonl", ".json"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raise ValueError(f"{path}: expected a folder, a .csv or a .jsonl file.")
    grouped: dict[str, list[str]] = {}
    for number, row in enumerate(rows, start=1):
        audio = row.get(audio_column, row.get("file_name"))
        caption = row.get(caption_column)
        if not audio or caption is None:
            raise ValueError(
                f"{path}, row {number}: needs {audio_column!r} and {caption_column!r}, got {sorted(row)}."
            )
        captions = [caption] if isinstance(caption, str) else list(caption)
        if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
            raise ValueError(f"{path}, row {number}: {caption_column!r} must be a non-empty string or list of them.")
        audio_path = Path(audio) if Path(audio).is_absolute() else path.parent / audio
        grouped.setdefault(str(audio_path), []).extend(c.strip() for c in captions)
    return [{audio_column: audio, caption_column: captions} for audio, captions in grouped.items()]


def drop_first_word(caption: str, words: Sequence[str], probability: float, rng: random.Random = random) -> str:
    """
    The original release's stage-1 caption de-biasing: if the caption's first word (split on spaces) is one of
    `words`, remove it with probability `probability`.
    """
    first, _, rest = caption.partition(" ")
    if first in words and rng.random() < probability:
        return rest
    return caption


@dataclass
class BlapStage1Collator:
    """
    Turns dataset rows `{audio_column: audio, caption_column: caption or list of captions}` into a stage-1 batch:
    `input_features`, and the Q-Former's `input_ids` / `attention_mask` for one caption per clip.

    In training, a clip with several captions gets one drawn at random each time it is seen, and the first-word
    dropping applies; [`~BlapStage1Collator.for_evaluation`] gives the deterministic copy (first caption, no
    dropping) that `BlapStage1Trainer` uses for evaluation.

    Args:
        processor ([`BlapStage1Processor`]): feature extractor and BERT tokenizer.
        audio_column (`str`, *optional*, defaults to `"audio"`): a path, encoded bytes, a `datasets` Audio value or
            a waveform at the feature extractor's rate (see `transformers_blap.audio.load_audio`).
        caption_column (`str`, *optional*, defaults to `"caption"`).
        first_word_drop (`Sequence[str]`, *optional*): first words to drop (the release's list is its own; none by
            default).
        first_word_drop_probability (`float`, *optional*, defaults to 0.3).
        random_caption (`bool`, *optional*, defaults to `True`): draw among several captions (else take the first).
    """

    processor: BlapStage1Processor
    audio_column: str = "audio"
    caption_column: str = "caption"
    first_word_drop: Sequence[str] = ()
    first_word_drop_probability: float = 0.3
    random_caption: bool = True

    def for_evaluation(self) -> "BlapStage1Collator":
        """This collator without randomness: the first caption, no first-word dropping."""
        return dataclasses.replace(self, first_word_drop=(), random_caption=False)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sampling_rate = self.processor.feature_extractor.sampling_rate
        waveforms, captions = [], []
        for index, example in enumerate(examples):
            for column in (self.audio_column, self.caption_column):
                if column not in example:
                    raise KeyError(
                        f"Example {index} has no {column!r} column (it has {sorted(example)}). With `Trainer`, set"
                        " `remove_unused_columns=False` (BlapStage1TrainingArguments does)."
                    )
            audio = example[self.audio_column]
            if isinstance(audio, list):
                audio = np.asarray(audio, dtype=np.float32)
            # Arrays carry no rate: they are taken to be at the feature extractor's.
            array_rate = sampling_rate if isinstance(audio, (np.ndarray, torch.Tensor)) else None
            waveforms.append(load_audio(audio, sampling_rate, source_sampling_rate=array_rate))
            captions.append(self._caption(example[self.caption_column], index))
        batch = self.processor(audio=waveforms, sampling_rate=sampling_rate, text=captions)
        return dict(batch)

    def _caption(self, value: str | Sequence[str], index: int) -> str:
        if isinstance(value, str):
            caption = value
        elif isinstance(value, Sequence) and value and all(isinstance(item, str) for item in value):
            caption = random.choice(value) if self.random_caption else value[0]
        else:
            raise ValueError(
                f"Example {index}: a caption must be a string or a non-empty list of strings, got {value!r}."
            )
        if self.first_word_drop:
            caption = drop_first_word(caption, self.first_word_drop, self.first_word_drop_probability)
        return caption


def spec_augment(
    log_mel: torch.Tensor,
    time_stripes: int = 2,
    time_width: int = 64,
    freq_stripes: int = 2,
    freq_width: int = 8,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """
    SpecAugment as in LAION CLAP's HTS-AT training: per clip, `time_stripes` bands of `[0, time_width)` frames and
    `freq_stripes` bands of `[0, freq_width)` mel bins set to zero, at uniformly drawn positions.

    Args:
        log_mel (`torch.FloatTensor` of shape `(batch_size, channels, num_frames, num_mel_bins)`).

    Returns:
        `torch.FloatTensor`, same shape, a masked copy.
    """
    masked = log_mel.clone()
    batch_size, _, num_frames, num_bins = log_mel.shape

    def draw(high: int) -> int:
        return int(torch.randint(0, max(high, 1), (1,), generator=generator))

    for index in range(batch_size):
        for stripes, width, total, dim in (
            (time_stripes, time_width, num_frames, 1),
            (freq_stripes, freq_width, num_bins, 2),
        ):
            for _ in range(stripes):
                length = draw(min(width, total + 1))
                start = draw(total - length + 1)
                masked[index].narrow(dim, start, length).zero_()
    return masked


# ----------------------------------------------------------------------------------------------------- trainer


@dataclass
class BlapStage1TrainingArguments(TrainingArguments):
    """
    `TrainingArguments` plus the stage-1 options. `remove_unused_columns` defaults to `False`: the collator reads
    the raw audio and caption columns.
    """

    train_audio_encoder: bool = field(
        default=True, metadata={"help": "Fine-tune the HTS-AT audio encoder (the paper does; the release froze it)."}
    )
    spec_augment: bool = field(
        default=False, metadata={"help": "SpecAugment on the (BatchNorm-normalised) log-mel during training."}
    )
    spec_augment_time_stripes: int = field(default=2, metadata={"help": "Time bands masked per clip."})
    spec_augment_time_width: int = field(default=64, metadata={"help": "Maximum width of a time band, in frames."})
    spec_augment_freq_stripes: int = field(default=2, metadata={"help": "Mel bands masked per clip."})
    spec_augment_freq_width: int = field(default=8, metadata={"help": "Maximum width of a mel band, in bins."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep the dataset's columns: the stage-1 collator needs audio and captions."}
    )


class _KeepLanguageModelSpecialTokens(TrainerCallback):
    """Puts a text config's pad/bos/eos ids back, or removes them if it had none, at the start of training."""

    NAMES = ("pad_token_id", "bos_token_id", "eos_token_id")

    def __init__(self, text_config):
        self.text_config = text_config
        self.ids = {name: getattr(text_config, name) for name in self.NAMES if hasattr(text_config, name)}

    def on_train_begin(self, args, state, control, **kwargs):
        for name in self.NAMES:
            if name in self.ids:
                setattr(self.text_config, name, self.ids[name])
            elif hasattr(self.text_config, name):
                delattr(self.text_config, name)


class BlapStage1Trainer(HubErrorsInTrainer, Trainer):
    """
    `Trainer` for [`BlapForRepresentationLearning`].

    - Calls the model with `return_loss=True` and logs `loss_atc`, `loss_atm`, `loss_lm` beside `loss` (averaged
      over the steps since the last log and over processes), and `eval_loss_atc`, ... when evaluating.
    - Trains the audio encoder unless `args.train_audio_encoder` is `False` (then it is frozen and held in eval mode).
    - With `args.spec_augment`, masks stripes of the log-mel after the audio encoder's input BatchNorm in training
      (where LAION CLAP's HTS-AT applies it).
    - Evaluates with the collator's deterministic copy (`BlapStage1Collator.for_evaluation`).
    - Keeps the language model's special token ids: `Trainer.train` copies the tokenizer's pad/bos/eos ids into
      `config.get_text_config()`, which is the T5 config that stage 2 will use, but the stage-1 tokenizer is the
      Q-Former's BERT tokenizer (its bos is `[DEC]`). They are put back before the first step.

    The model's `forward` takes no `**kwargs`, so `Trainer` divides each micro-batch's loss by the number of
    gradient-accumulation steps. With plain `TrainingArguments`, the stage-1 options take their defaults.
    """

    def __init__(self, model: nn.Module | None = None, args: TrainingArguments | None = None, *pargs, **kwargs):
        if model is None or not hasattr(model, "set_stage1_trainable"):
            raise TypeError(f"BlapStage1Trainer trains a BlapForRepresentationLearning, got {type(model).__name__}.")
        super().__init__(model, args, *pargs, **kwargs)
        self.add_callback(_KeepLanguageModelSpecialTokens(model.config.text_config))
        self.can_return_loss = True
        model.set_stage1_trainable(train_audio_encoder=self._option("train_audio_encoder"))
        self._loss_sums: dict[str, torch.Tensor] = {}
        self._loss_counts: dict[str, int] = {}

    def _option(self, name: str) -> Any:
        """A stage-1 option from `self.args`, or its `BlapStage1TrainingArguments` default."""
        return getattr(self.args, name, BlapStage1TrainingArguments.__dataclass_fields__[name].default)

    @contextmanager
    def _spec_augment(self, model: nn.Module) -> Iterator[None]:
        if not (model.training and self._option("spec_augment")):
            yield
            return
        batch_norm = self.accelerator.unwrap_model(model).audio_encoder.audio_encoder.batch_norm
        options = {
            key: self._option(f"spec_augment_{key}")
            for key in ("time_stripes", "time_width", "freq_stripes", "freq_width")
        }

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            # ClapAudioEncoder normalises (batch, mel, frames, 1); masked as (batch, 1, frames, mel).
            return spec_augment(output.transpose(1, 3), **options).transpose(1, 3)

        handle = batch_norm.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        with self._spec_augment(model):
            outputs = model(**inputs, return_loss=True)
        split = "train" if model.training else "eval"
        values = torch.stack([outputs[name].detach().float() for name in STAGE1_LOSSES])
        self._loss_sums[split] = self._loss_sums.get(split, 0) + values
        self._loss_counts[split] = self._loss_counts.get(split, 0) + 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _pop_mean_losses(self, split: str) -> dict[str, float]:
        """The mean of each stage-1 loss since the last call, over micro-batches and processes."""
        count = self._loss_counts.pop(split, 0)
        sums = self._loss_sums.pop(split, None)
        if not count:
            return {}
        means = self.accelerator.reduce(sums / count, reduction="mean")
        return {name: round(value, 4) for name, value in zip(STAGE1_LOSSES, means.tolist())}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs.update(self._pop_mean_losses("train"))
        super().log(logs, start_time)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`; the final save (not a checkpoint) also writes the model card (`create_model_card`)."""
        super().save_model(output_dir, _internal_call)
        if not _internal_call:
            write_model_card(self, output_dir)

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str | None] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        """Writes `output_dir/README.md`: the stage-1 card ([`write_model_card`]); `tasks`, `dataset_args` unused."""
        write_model_card(self, None, language, license, tags, model_name, finetuned_from, dataset_tags, dataset)

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor, None, None]:
        """The stage-1 losses only: the similarity matrices change shape with the batch."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluation_loop(
        self,
        dataloader: DataLoader,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        self._pop_mean_losses("eval")
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        for name, value in self._pop_mean_losses("eval").items():
            output.metrics[f"{metric_key_prefix}_{name}"] = value
        return output

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        collator = self.data_collator
        if isinstance(collator, BlapStage1Collator):
            self.data_collator = collator.for_evaluation()
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = collator


__all__ = [
    "BlapStage1Collator",
    "BlapStage1Trainer",
    "BlapStage1TrainingArguments",
    "drop_first_word",
    "read_audio_captions",
    "spec_augment",
]
