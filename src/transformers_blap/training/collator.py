"""
Batching for BLAP training and evaluation, one stack for both stages:

- `AudioCaptionPreparer`: decodes each example's audio, cuts one window (random while training, fixed in evaluation),
  picks one of the example's captions (random while training, the first in evaluation) and augments it.
- `BlapDataCollator`: the stage-2 collator, `AudioCaptionPreparer` followed by `BlapProcessor` (log-mel, prompt and
  caption tokens with padding set to -100, truncated to `processor.max_txt_len`). The stage-1 collator
  (`training.stage1.BlapStage1Collator`) is the same with the Q-Former's BERT tokenizer.
"""

import contextlib
import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature

from ..audio import load_audio

EVAL_WINDOWS = ("first", "center")
# A training row's seed for its random draws (window, caption, augmentation), set by `SeededExamples`.
EXAMPLE_SEED_KEY = "_blap_example_seed"


class SeededExamples(torch.utils.data.Dataset):
    """
    A training set whose rows carry their own seed, a function of the run's seed, the epoch and the row index: the
    collator draws each row's window, caption and augmentation from it instead of from torch's global generator. So
    the draws do not depend on which batches were collated before (the data loader collates one batch ahead, and a
    resumed run skips the finished batches without collating them), and the global generator, which a checkpoint
    saves, is left to the model: a run resumed from a checkpoint continues exactly as the uninterrupted run.

    Args:
        dataset: a map-style dataset of mappings.
        seed (`int`): the run's seed.
    """

    def __init__(self, dataset: Any, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the data loader at the start of each epoch, so each epoch draws anew."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        seed = np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(1)[0]
        return {**self.dataset[index], EXAMPLE_SEED_KEY: int(seed)}


def train_dataloader_with_seeded_examples(trainer: Any, make_loader: Callable[[], Any]) -> Any:
    """`Trainer.get_train_dataloader` (`make_loader`) over `trainer.train_dataset` wrapped in [`SeededExamples`]."""
    dataset = trainer.train_dataset
    if isinstance(dataset, SeededExamples) or not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        return make_loader()  # no training set, or an iterable one
    trainer.train_dataset = SeededExamples(dataset, trainer.args.seed)
    try:
        return make_loader()
    finally:
        trainer.train_dataset = dataset


@contextlib.contextmanager
def _seeded(seed: int | None):
    """
    Inside the block torch's global CPU generator starts from `seed`; afterwards it is as before (no-op for None).

    Only the CPU generator is touched: `torch.manual_seed` would also reseed (and `fork_rng(devices=[])` not restore)
    the accelerators' generators, and on CPU-only builds it records a stack trace per call for CUDA's lazy seeding,
    which made this block about half of a small model's training step.
    """
    if seed is None:
        yield
        return
    state = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)


@dataclass
class AudioCaptionBatch:
    """
    What `AudioCaptionPreparer` returns for a list of examples.

    Args:
        waveforms (`list[np.ndarray]`): one mono float32 waveform `(num_samples,)` per example, at most one window
            long (shorter clips stay as they are: the feature extractor repeat-pads them).
        captions (`list[str]`): the training target of each example (chosen and, while training, augmented).
        references (`list[list[str]]`): all captions of each example, as given.
    """

    waveforms: list[np.ndarray]
    captions: list[str]
    references: list[list[str]]


def as_caption_list(value: Any, where: str) -> list[str]:
    """
    One example's captions as a non-empty list of strings.

    Args:
        value: a caption (`str`) or a sequence of captions.
        where (`str`): names the example in error messages.

    Returns:
        `list[str]`.
    """
    if isinstance(value, str):
        captions = [value]
    elif isinstance(value, Sequence) and all(isinstance(caption, str) for caption in value):
        captions = list(value)
    else:
        raise TypeError(f"{where}: captions must be a string or a list of strings, got {type(value).__name__}.")
    captions = [caption for caption in captions if caption.strip()]
    if not captions:
        raise ValueError(f"{where}: no non-empty caption.")
    return captions


class AudioCaptionPreparer:
    r"""
    Turns dataset examples into waveforms and caption targets.

    Each example is a mapping with an audio entry (anything `transformers_blap.audio.load_audio` reads: a path, encoded
    bytes, a file object, a `datasets` Audio value such as `{"bytes", "path"}` from `Audio(decode=False)` or
    `{"array", "sampling_rate"}`; a bare array, tensor or list of samples is taken to be at `sampling_rate`) and a
    caption entry (one string or a list of strings).

    In training mode the window of a long clip starts at a uniformly random sample and the caption is drawn uniformly
    from the example's captions, then `caption_augmentation` is applied. In evaluation mode the window is fixed
    (`eval_window`: the first `window_s` seconds, or the centred ones) and the first caption is the target, unchanged.
    Random draws use the row's own seed when it has one ([`SeededExamples`], which the BLAP trainers wrap their
    training sets in), else torch's global generator.

    Args:
        sampling_rate (`int`): the rate waveforms are decoded to (the feature extractor's).
        window_s (`float`, *optional*, defaults to 10.0): the model's window in seconds.
        training (`bool`, *optional*, defaults to `True`): random window and caption, augmentation on.
        eval_window (`str`, *optional*, defaults to `"first"`): `"first"` or `"center"`.
        caption_augmentation (`Callable[[str], str]`, *optional*): applied to training captions, e.g.
            [`PhraseDropping`].
        audio_column (`str`, *optional*, defaults to `"audio"`).
        caption_column (`str`, *optional*, defaults to `"captions"`).
    """

    def __init__(
        self,
        sampling_rate: int,
        window_s: float = 10.0,
        training: bool = True,
        eval_window: str = "first",
        caption_augmentation: Callable[[str], str] | None = None,
        audio_column: str = "audio",
        caption_column: str = "captions",
    ):
        if not isinstance(sampling_rate, int) or sampling_rate <= 0:
            raise ValueError(f"`sampling_rate` must be a positive integer, got {sampling_rate!r}.")
        if not window_s > 0:
            raise ValueError(f"`window_s` must be positive, got {window_s!r}.")
        if eval_window not in EVAL_WINDOWS:
            raise ValueError(f"`eval_window` must be one of {EVAL_WINDOWS}, got {eval_window!r}.")
        if caption_augmentation is not None and not callable(caption_augmentation):
            raise TypeError(f"`caption_augmentation` must be callable, got {type(caption_augmentation).__name__}.")
        self.sampling_rate = sampling_rate
        self.window_s = window_s
        self.training = training
        self.eval_window = eval_window
        self.caption_augmentation = caption_augmentation
        self.audio_column = audio_column
        self.caption_column = caption_column

    @property
    def window_samples(self) -> int:
        """Samples in one window."""
        return int(round(self.window_s * self.sampling_rate))

    def for_evaluation(self) -> "AudioCaptionPreparer":
        """A copy in evaluation mode (fixed window, first caption, no augmentation)."""
        evaluation = copy.copy(self)
        evaluation.training = False
        return evaluation

    def cut_window(self, waveform: np.ndarray) -> np.ndarray:
        """
        One window of a waveform.

        Args:
            waveform (`np.ndarray` of shape `(num_samples,)`).

        Returns:
            `np.ndarray` of shape `(min(num_samples, window_samples),)`.
        """
        length, window = waveform.shape[-1], self.window_samples
        if length <= window:
            return waveform
        if self.training:
            start = int(torch.randint(0, length - window + 1, ()).item())
        elif self.eval_window == "center":
            start = (length - window) // 2
        else:
            start = 0
        return waveform[start : start + window]

    def pick_caption(self, captions: list[str]) -> str:
        """The target caption: a random one, augmented, while training; the first one in evaluation."""
        if not self.training:
            return captions[0]
        caption = captions[int(torch.randint(0, len(captions), ()).item())] if len(captions) > 1 else captions[0]
        if self.caption_augmentation is not None:
            caption = self.caption_augmentation(caption)
        return caption

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> AudioCaptionBatch:
        """
        Args:
            examples (`Sequence[Mapping]`): dataset rows with `audio_column` and `caption_column`.

        Returns:
            [`AudioCaptionBatch`].
        """
        if len(examples) == 0:
            raise ValueError("`examples` is empty: a batch needs at least one example.")
        waveforms, captions, references = [], [], []
        for index, example in enumerate(examples):
            where = f"example {index} of the batch"
            for column in (self.audio_column, self.caption_column):
                if column not in example:
                    raise KeyError(
                        f"{where} has no {column!r} entry; it has {sorted(example)}. With `Trainer`, set"
                        " `remove_unused_columns=False` (the BLAP training arguments do)."
                    )
            audio = example[self.audio_column]
            if isinstance(audio, list):
                audio = np.asarray(audio, dtype=np.float32)
            # Bare samples carry no rate: they are taken to be at the feature extractor's.
            array_rate = self.sampling_rate if isinstance(audio, (np.ndarray, torch.Tensor)) else None
            waveform = load_audio(audio, self.sampling_rate, source_sampling_rate=array_rate)
            example_captions = as_caption_list(example[self.caption_column], where)
            references.append(example_captions)
            with _seeded(example.get(EXAMPLE_SEED_KEY) if self.training else None):
                waveforms.append(self.cut_window(waveform))
                captions.append(self.pick_caption(example_captions))
        return AudioCaptionBatch(waveforms=waveforms, captions=captions, references=references)


class BlapDataCollator:
    r"""
    Stage-2 data collator: decodes audio, cuts windows, picks captions ([`AudioCaptionPreparer`]) and runs the
    [`BlapProcessor`], giving every input of `BlapForConditionalGeneration.forward`.

    Args:
        processor ([`BlapProcessor`]): its feature extractor sets the sampling rate and (by default) the window; its
            tokenizer, prompt and `max_txt_len` make `input_ids`, `attention_mask`, `labels` (padding -100) and
            `decoder_attention_mask`.
        training (`bool`, *optional*, defaults to `True`): see [`AudioCaptionPreparer`]; `for_evaluation()` gives
            the evaluation twin.
        window_s (`float`, *optional*): defaults to the feature extractor's `max_length_s`.
        eval_window (`str`, *optional*, defaults to `"first"`): `"first"` or `"center"`.
        caption_augmentation (`Callable[[str], str]`, *optional*): e.g. [`PhraseDropping`] (the release's stage 2).
        prompt (`str`, *optional*): defaults to `processor.prompt`.
        audio_column (`str`, *optional*, defaults to `"audio"`).
        caption_column (`str`, *optional*, defaults to `"captions"`).

    Example:

    ```python
    >>> collator = BlapDataCollator(processor, caption_augmentation=PhraseDropping())
    >>> batch = collator([{"audio": "song.wav", "captions": ["calm piano", "a soft piano solo"]}])
    >>> sorted(batch)
    ['attention_mask', 'decoder_attention_mask', 'input_features', 'input_ids', 'labels']
    ```
    """

    def __init__(
        self,
        processor,
        training: bool = True,
        window_s: float | None = None,
        eval_window: str = "first",
        caption_augmentation: Callable[[str], str] | None = None,
        prompt: str | None = None,
        audio_column: str = "audio",
        caption_column: str = "captions",
    ):
        feature_extractor = processor.feature_extractor
        self.processor = processor
        self.prompt = prompt
        self.preparer = AudioCaptionPreparer(
            sampling_rate=feature_extractor.sampling_rate,
            window_s=window_s if window_s is not None else feature_extractor.max_length_s,
            training=training,
            eval_window=eval_window,
            caption_augmentation=caption_augmentation,
            audio_column=audio_column,
            caption_column=caption_column,
        )

    @property
    def training(self) -> bool:
        return self.preparer.training

    @property
    def caption_column(self) -> str:
        return self.preparer.caption_column

    def for_evaluation(self) -> "BlapDataCollator":
        """A copy in evaluation mode (fixed window, first caption as the target, no augmentation)."""
        evaluation = copy.copy(self)
        evaluation.preparer = self.preparer.for_evaluation()
        return evaluation

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> BatchFeature:
        """
        Args:
            examples (`Sequence[Mapping]`): dataset rows with an audio and a caption entry.

        Returns:
            [`BatchFeature`] with `input_features` `(batch_size, 1, num_frames, num_mel_bins)`, `input_ids` and
            `attention_mask` `(batch_size, prompt_length)`, `labels` and `decoder_attention_mask`
            `(batch_size, caption_length)`.
        """
        return self.encode(self.preparer(examples))

    def encode(self, batch: AudioCaptionBatch) -> BatchFeature:
        """The model inputs of a prepared batch: log-mel, prompt and caption tokens."""
        return self.processor(
            audio=batch.waveforms,
            sampling_rate=self.preparer.sampling_rate,
            text=self.prompt,
            captions=batch.captions,
        )


__all__ = [
    "EVAL_WINDOWS",
    "EXAMPLE_SEED_KEY",
    "AudioCaptionBatch",
    "AudioCaptionPreparer",
    "BlapDataCollator",
    "SeededExamples",
    "as_caption_list",
    "train_dataloader_with_seeded_examples",
]
