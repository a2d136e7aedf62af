"""
Zero-shot tags for `blap caption --tags`: a stage-1 model ([`BlapForRepresentationLearning`]) scores every window of a
track against a fixed list of labels, and the track keeps the best labels.

A label's score is the model's audio-text similarity (`BlapForRepresentationLearning.similarity`: the cosine of the
best-matching query token with the text "This is a {label} song."), averaged over the track's windows, in [-1, 1].
Labels are embedded once, when the tagger is built; each window costs one audio pass of the stage-1 model.
"""

import os
from collections.abc import Sequence
from typing import Any

DEFAULT_TAG_TEMPLATE = "This is a {} song."
"""The text a label is embedded as (as in CLAP-style zero-shot tagging and the Space)."""
DEFAULT_TAG_TOP_K = 5
"""Tags kept per track when neither `top_k` nor `threshold` is given."""


def read_labels(path: str | os.PathLike) -> list[str]:
    """Labels from a file: one per line; blank lines and lines starting with `#` are skipped, repeats dropped."""
    with open(path, encoding="utf-8") as handle:
        labels = [line.strip() for line in handle]
    labels = list(dict.fromkeys(label for label in labels if label and not label.startswith("#")))
    if not labels:
        raise ValueError(f"{os.fspath(path)} holds no labels: expected one label per line.")
    return labels


class ZeroShotTagger:
    """
    Scores audio windows against a fixed set of labels with a stage-1 BLAP and picks a track's tags.

    Args:
        model ([`BlapForRepresentationLearning`]): the stage-1 model (on the device to compute on).
        processor ([`BlapStage1Processor`]): its processor (feature extractor and Q-Former tokenizer).
        labels (`Sequence[str]`): the candidate labels.
        top_k (`int`, *optional*): keep the `top_k` best labels (5 when `threshold` is not given either).
        threshold (`float`, *optional*): keep every label whose score is at least `threshold` instead.
        template (`str`, *optional*, defaults to `"This is a {} song."`): the text each label is embedded as.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        labels: Sequence[str],
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        template: str = DEFAULT_TAG_TEMPLATE,
    ):
        import torch

        if top_k is not None and threshold is not None:
            raise ValueError("give `top_k` or `threshold`, not both.")
        if top_k is not None and top_k < 1:
            raise ValueError(f"`top_k` must be at least 1, got {top_k}.")
        if not labels:
            raise ValueError("`labels` is empty: give at least one label.")
        if "{}" not in template:
            raise ValueError(f"the tag template must contain '{{}}' where the label goes, got {template!r}.")
        self.model = model.eval()
        self.processor = processor
        self.labels = list(labels)
        self.top_k = DEFAULT_TAG_TOP_K if top_k is None and threshold is None else top_k
        self.threshold = threshold
        text = processor(text=[template.format(label) for label in self.labels])
        with torch.inference_mode():
            self.label_embeds = model.get_text_embeddings(
                text["input_ids"].to(model.device), text["attention_mask"].to(model.device)
            )

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | os.PathLike,
        labels: Sequence[str],
        *,
        device: str | None = None,
        dtype: str = "auto",
        **kwargs,
    ) -> "ZeroShotTagger":
        """
        Load a saved stage-1 model and its processor (a folder or Hub id) and embed `labels`.

        Args:
            model_name_or_path (`str` or `os.PathLike`): a folder or Hub repository with a
                `BlapForRepresentationLearning` and a `BlapStage1Processor`.
            labels (`Sequence[str]`): the candidate labels.
            device (`str`, *optional*): where to run the model (CPU by default).
            dtype (`str`, *optional*, defaults to `"auto"`): the weights' dtype.
            kwargs: `top_k`, `threshold`, `template` (see the class).
        """
        from .modeling_blap import BlapForRepresentationLearning
        from .processing_blap import BlapStage1Processor

        model = BlapForRepresentationLearning.from_pretrained(model_name_or_path, dtype=dtype)
        processor = BlapStage1Processor.from_pretrained(model_name_or_path)
        return cls(model.to(device or "cpu"), processor, labels, **kwargs)

    def window_scores(self, audio: Any, sampling_rate: int) -> Any:
        """
        The similarity of every window with every label.

        Args:
            audio (`torch.FloatTensor` of shape `(num_windows, num_samples)`): mono windows.
            sampling_rate (`int`): their rate (resampled to the model's when it differs).

        Returns:
            `torch.FloatTensor` of shape `(num_windows, num_labels)`, on the CPU.
        """
        import torch

        features = self.processor.feature_extractor(audio, sampling_rate=sampling_rate, device=self.model.device)
        with torch.inference_mode():
            audio_embeds = self.model.get_audio_embeddings(
                input_features=features["input_features"].to(self.model.dtype)
            )
            return self.model.similarity(audio_embeds, self.label_embeds).float().cpu()

    def track_tags(self, window_scores: Sequence[Any]) -> list[dict[str, Any]]:
        """
        A track's tags: the label scores averaged over its windows, best first, the `top_k` best or those at or above
        `threshold`.

        Args:
            window_scores (`Sequence[torch.FloatTensor]`): the track's [`window_scores`], in pieces of shape
                `(num_windows, num_labels)`.

        Returns:
            `list[dict]`: `{"label": str, "score": float}` by decreasing score.
        """
        import torch

        scores = torch.cat(list(window_scores)).mean(dim=0).tolist()
        ranked = sorted(zip(self.labels, scores), key=lambda pair: -pair[1])
        if self.threshold is not None:
            ranked = [pair for pair in ranked if pair[1] >= self.threshold]
        else:
            ranked = ranked[: self.top_k]
        return [{"label": label, "score": round(score, 6)} for label, score in ranked]


__all__ = ["DEFAULT_TAG_TEMPLATE", "DEFAULT_TAG_TOP_K", "ZeroShotTagger", "read_labels"]
