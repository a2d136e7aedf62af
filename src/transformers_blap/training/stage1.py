"""
Stage-1 training of [`BlapForRepresentationLearning`]: the stage-2 collator with the Q-Former's BERT tokenizer,
SpecAugment, and `BlapStage1Trainer`, a `Trainer` that logs the three stage-1 losses.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import EvalLoopOutput

from ..hub import HubErrorsInTrainer
from ..processing_blap import BlapStage1Processor
from .collator import AudioCaptionBatch, BlapDataCollator, train_dataloader_with_seeded_examples
from .launch import OVERWRITE_OUTPUT_DIR_HELP
from .model_card import TrainingCardMixin

STAGE1_LOSSES = ("loss_atc", "loss_atm", "loss_lm")


# ----------------------------------------------------------------------------------------------------- data


class BlapStage1Collator(BlapDataCollator):
    """
    Stage-1 collator: the stage-2 batching ([`BlapDataCollator`]: decoded audio, one window, one caption per clip,
    random while training and fixed in evaluation, optional caption augmentation such as the release's
    [`FirstWordDropping`]) with the Q-Former's BERT tokenizer instead of the prompt and T5 targets.

    Args:
        processor ([`BlapStage1Processor`]): feature extractor and BERT tokenizer.
        training, window_s, eval_window, caption_augmentation, audio_column, caption_column: as for
            [`BlapDataCollator`].

    Returns (when called on dataset rows): `dict` with `input_features`, and the Q-Former's `input_ids` /
    `attention_mask` of one caption per clip.
    """

    def __init__(
        self,
        processor: BlapStage1Processor,
        training: bool = True,
        window_s: float | None = None,
        eval_window: str = "first",
        caption_augmentation: Callable[[str], str] | None = None,
        audio_column: str = "audio",
        caption_column: str = "captions",
    ):
        super().__init__(
            processor,
            training=training,
            window_s=window_s,
            eval_window=eval_window,
            caption_augmentation=caption_augmentation,
            audio_column=audio_column,
            caption_column=caption_column,
        )

    def encode(self, batch: AudioCaptionBatch) -> dict[str, torch.Tensor]:
        return dict(
            self.processor(audio=batch.waveforms, sampling_rate=self.preparer.sampling_rate, text=batch.captions)
        )


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
    overwrite_output_dir: bool = field(default=False, metadata={"help": OVERWRITE_OUTPUT_DIR_HELP})


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


class BlapStage1Trainer(TrainingCardMixin, HubErrorsInTrainer, Trainer):
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
    `create_model_card` writes the stage-1 card ([`TrainingCardMixin`]).
    """

    card_stage = "stage1"

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

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor, None, None]:
        """The stage-1 losses only (`Trainer.prediction_step` without logits): the similarity matrices change shape
        with the batch."""
        return super().prediction_step(model, inputs, prediction_loss_only=True, ignore_keys=ignore_keys)

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

    def get_train_dataloader(self) -> DataLoader:
        return train_dataloader_with_seeded_examples(self, super().get_train_dataloader)

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        collator = self.data_collator
        if isinstance(collator, BlapStage1Collator):
            self.data_collator = collator.for_evaluation()
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = collator


__all__ = ["BlapStage1Collator", "BlapStage1Trainer", "BlapStage1TrainingArguments", "spec_augment"]
