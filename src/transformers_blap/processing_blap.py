"""BlapProcessor: BLAP's feature extractor and the language model's tokenizer behind one call; BlapStage1Processor:
the feature extractor and the Q-Former's BERT tokenizer (stage 1: embeddings, retrieval, zero-shot tagging)."""

import os

import numpy as np
import torch
from transformers import BertTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .configuration_blap import DEFAULT_PROMPT, OriginalReleaseError, is_original_release


class BlapProcessor(ProcessorMixin):
    r"""
    Wraps a [`BlapFeatureExtractor`] and the T5 tokenizer of the language model.

    `processor(audio=..., sampling_rate=...)` returns everything `BlapForConditionalGeneration.generate` needs:
    `input_features` and the tokenized prompt (`input_ids`, `attention_mask`). The prompt is `self.prompt` (saved
    with the processor) unless `text=` gives one prompt or one prompt per clip. With `captions=`, it also returns
    `labels` (padding set to -100) and `decoder_attention_mask` for teacher forcing / training.

    Args:
        feature_extractor ([`BlapFeatureExtractor`]): the log-mel front end.
        tokenizer ([`T5Tokenizer`] or [`T5TokenizerFast`]): the language model's tokenizer.
        prompt (`str`, *optional*): the default instruction, `"Generate an objective music description."`.
        max_txt_len (`int`, *optional*, defaults to 64): captions are truncated to this many tokens.
    """

    def __init__(self, feature_extractor, tokenizer, prompt: str = DEFAULT_PROMPT, max_txt_len: int = 64):
        self.prompt = prompt
        self.max_txt_len = max_txt_len
        super().__init__(feature_extractor, tokenizer)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "BlapProcessor":
        """
        `ProcessorMixin.from_pretrained`; where it fails on the authors' original release (which has no processor
        files), the error says so in one line and names the call that converts it (`OriginalReleaseError`).
        """
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except OSError as error:
            if is_original_release(pretrained_model_name_or_path, kwargs):
                raise OriginalReleaseError(pretrained_model_name_or_path) from error
            raise

    def __call__(
        self,
        audio: np.ndarray | torch.Tensor | list[np.ndarray] | list[torch.Tensor] | None = None,
        sampling_rate: int | None = None,
        text: str | list[str] | None = None,
        captions: str | list[str] | None = None,
        return_tensors: str | None = "pt",
        device: str | torch.device | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Prepare model inputs.

        Args:
            audio: one mono waveform `(num_samples,)`, a batch `(batch_size, num_samples)` or a list of waveforms,
                at `sampling_rate` (`transformers_blap.audio.load_audio` decodes, downmixes and resamples files).
            sampling_rate (`int`, *optional*): the rate of `audio`; audio at another rate than the feature
                extractor's (48 kHz) is resampled. Pass it: without it the feature extractor's rate is assumed.
            text (`str` or `list[str]`, *optional*): the prompt; one for all clips or one per clip.
            captions (`str` or `list[str]`, *optional*): target captions, one per clip.
            return_tensors (`str`, *optional*, defaults to `"pt"`).
            device (*optional*): where the feature extractor computes the log-mel.

        Returns:
            [`BatchFeature`] with `input_features` `(batch_size, 1, num_frames, num_mel_bins)`, `input_ids` and
            `attention_mask` `(batch_size, prompt_length)`, and with `captions`: `labels` and
            `decoder_attention_mask` `(batch_size, caption_length)`.
        """
        if audio is None and text is None and captions is None:
            raise ValueError("BlapProcessor needs `audio`, `text` or `captions`; got none of them.")
        data: dict = {}
        batch_size = None
        if audio is not None:
            features = self.feature_extractor(
                audio, sampling_rate=sampling_rate, return_tensors=return_tensors, device=device
            )
            data.update(features)
            batch_size = features["input_features"].shape[0]

        prompts = self._as_text_batch(text if text is not None else self.prompt, batch_size, "text")
        data.update(self.tokenizer(prompts, padding=True, return_tensors=return_tensors, **kwargs))

        if captions is not None:
            targets = self._as_text_batch(captions, len(prompts), "captions", broadcast=False)
            tokens = self.tokenizer(
                targets, padding=True, truncation=True, max_length=self.max_txt_len, return_tensors=return_tensors
            )
            labels = tokens["input_ids"]
            mask = tokens["attention_mask"]
            if return_tensors == "pt":
                labels = labels.masked_fill(mask == 0, -100)
            else:
                labels = np.where(np.asarray(mask) == 0, -100, labels)
            data["labels"] = labels
            data["decoder_attention_mask"] = mask
        return BatchFeature(data)

    @staticmethod
    def _as_text_batch(text: str | list[str], batch_size: int | None, name: str, broadcast: bool = True) -> list[str]:
        """One string per clip: broadcast a single prompt, check a list's length against the audio batch."""
        if isinstance(text, str):
            if broadcast or batch_size in (None, 1):
                return [text] * (batch_size or 1)
            raise ValueError(f"`{name}` is one string but the batch has {batch_size} clips: pass one per clip.")
        if not isinstance(text, (list, tuple)) or not all(isinstance(t, str) for t in text):
            raise TypeError(f"`{name}` must be a string or a list of strings, got {type(text).__name__}.")
        if batch_size is not None and len(text) != batch_size:
            raise ValueError(f"`{name}` has {len(text)} entries but the audio batch has {batch_size} clips.")
        return list(text)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_features", "input_ids", "attention_mask"]


QFORMER_DEC_TOKEN = "[DEC]"


def build_qformer_tokenizer(name_or_path: str | os.PathLike = "bert-base-uncased", **kwargs) -> BertTokenizer:
    """
    The Q-Former's tokenizer for stage 1: a BERT tokenizer (bert-base-uncased in BLAP) with `[DEC]` added as its
    bos token, the token that replaces `[CLS]` when the Q-Former decodes a caption. With bert-base-uncased, `[DEC]`
    gets id 30522, `BlapConfig.qformer_dec_token_id`'s default. It returns `input_ids` and `attention_mask` only (no
    `token_type_ids`: the Q-Former has no segment embeddings).

    Args:
        name_or_path (`str` or `os.PathLike`, *optional*, defaults to `"bert-base-uncased"`): a BERT tokenizer.
        kwargs: passed to `BertTokenizer.from_pretrained`.
    """
    kwargs.setdefault("model_input_names", ["input_ids", "attention_mask"])
    tokenizer = BertTokenizer.from_pretrained(name_or_path, truncation_side="right", **kwargs)
    if tokenizer.bos_token != QFORMER_DEC_TOKEN:
        tokenizer.add_special_tokens({"bos_token": QFORMER_DEC_TOKEN})
    return tokenizer


class BlapStage1Processor(ProcessorMixin):
    r"""
    Wraps a [`BlapFeatureExtractor`] and the Q-Former's BERT tokenizer (with `[DEC]`, see [`build_qformer_tokenizer`])
    for [`BlapForRepresentationLearning`]: training captions, text queries for retrieval, tag prompts.

    Saved with a stage-1 checkpoint, the tokenizer sits at the top of the folder, so that `AutoTokenizer` and the
    `zero-shot-audio-classification` pipeline find it.

    Args:
        feature_extractor ([`BlapFeatureExtractor`]): the log-mel front end.
        tokenizer ([`BertTokenizer`]): the Q-Former's tokenizer, with `[DEC]` as its bos token.
        max_txt_len (`int`, *optional*, defaults to 64): texts are truncated to this many tokens.
    """

    def __init__(self, feature_extractor, tokenizer, max_txt_len: int = 64):
        if tokenizer.bos_token != QFORMER_DEC_TOKEN:
            raise ValueError(
                f"The stage-1 tokenizer needs {QFORMER_DEC_TOKEN!r} as its bos token, got {tokenizer.bos_token!r}:"
                " build it with `build_qformer_tokenizer`."
            )
        self.max_txt_len = max_txt_len
        super().__init__(feature_extractor, tokenizer)

    def __call__(
        self,
        audio: np.ndarray | torch.Tensor | list[np.ndarray] | list[torch.Tensor] | None = None,
        sampling_rate: int | None = None,
        text: str | list[str] | None = None,
        return_tensors: str | None = "pt",
        device: str | torch.device | None = None,
    ) -> BatchFeature:
        """
        Prepare model inputs: log-mel for `audio`, BERT tokens for `text` (any number of each).

        Args:
            audio: one mono waveform `(num_samples,)`, a batch `(batch_size, num_samples)` or a list of waveforms at
                `sampling_rate` (the feature extractor's rate).
            sampling_rate (`int`, *optional*): the rate of `audio`; a mismatch is an error.
            text (`str` or `list[str]`, *optional*): captions, search queries or tag prompts.
            return_tensors (`str`, *optional*, defaults to `"pt"`).
            device (*optional*): where the feature extractor computes the log-mel.

        Returns:
            [`BatchFeature`] with `input_features` `(num_audio, 1, num_frames, num_mel_bins)` and/or `input_ids`,
            `attention_mask` `(num_text, text_length)`, padded to the longest text, at most `max_txt_len` tokens.
        """
        if audio is None and text is None:
            raise ValueError("BlapStage1Processor needs `audio`, `text` or both; got neither.")
        data: dict = {}
        if audio is not None:
            features = self.feature_extractor(
                audio, sampling_rate=sampling_rate, return_tensors=return_tensors, device=device
            )
            data.update(features)
        if text is not None:
            texts = BlapProcessor._as_text_batch(text, None, "text")
            data.update(
                self.tokenizer(
                    texts, padding=True, truncation=True, max_length=self.max_txt_len, return_tensors=return_tensors
                )
            )
        return BatchFeature(data)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_features", "input_ids", "attention_mask"]


# Its `save_pretrained` writes `auto_map` and copies its module files, for `trust_remote_code=True` (transformers'
# own mechanism for custom classes).
BlapProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["BlapProcessor", "BlapStage1Processor", "build_qformer_tokenizer"]
