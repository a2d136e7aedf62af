"""Caption de-biasing augmentations of the original BLAP training code, as configurable callables."""

from collections.abc import Sequence

import torch

# Stage 2 of the release removes these phrases (each occurrence with probability 0.6): they dominate the training
# captions and say nothing about the music.
STAGE2_DROPPED_PHRASES = (
    "Upbeat",
    "upbeat",
    "Upbeat,",
    "upbeat,",
    "The low quality recording",
    "This is a low-quality",
)
STAGE2_PHRASE_DROP_PROBABILITY = 0.6
STAGE1_FIRST_WORD_DROP_PROBABILITY = 0.3


def _check_options(strings: Sequence[str], name: str, probability: float) -> None:
    """One readable error for a bad list of strings or a probability outside [0, 1]."""
    if isinstance(strings, str) or not all(isinstance(string, str) and string for string in strings):
        raise ValueError(f"`{name}` must be a sequence of non-empty strings, got {strings!r}.")
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"`probability` must be a probability in [0, 1], got {probability}.")


class PhraseDropping:
    r"""
    Stage-2 caption augmentation of the release: for each phrase in order, its occurrences are removed one at a time,
    each removal happening with probability `probability`; the first draw that fails stops the removal of that phrase
    (so a phrase occurring twice survives entirely with probability 1 - p, loses one occurrence with probability
    p (1 - p) and both with p^2). Runs of whitespace left behind are collapsed and the caption is stripped (the T5
    tokenizer ignores repeated spaces anyway).

    Draws use torch's global random generator, which `Trainer` seeds and which every `DataLoader` worker reseeds
    differently.

    Args:
        phrases (`Sequence[str]`, *optional*, defaults to `STAGE2_DROPPED_PHRASES`): the phrases to remove, in order.
        probability (`float`, *optional*, defaults to 0.6): chance of each removal.

    Example:

    ```python
    >>> drop = PhraseDropping(probability=1.0)
    >>> drop("The low quality recording features an upbeat song.")
    'features an song.'
    ```
    """

    def __init__(
        self,
        phrases: Sequence[str] = STAGE2_DROPPED_PHRASES,
        probability: float = STAGE2_PHRASE_DROP_PROBABILITY,
    ):
        _check_options(phrases, "phrases", probability)
        self.phrases = tuple(phrases)
        self.probability = probability

    def __call__(self, caption: str) -> str:
        """
        Args:
            caption (`str`): one caption.

        Returns:
            `str`: the caption with some or all of the phrases removed.
        """
        for phrase in self.phrases:
            while phrase in caption and torch.rand(()).item() < self.probability:
                caption = caption.replace(phrase, "", 1)
        return " ".join(caption.split())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(phrases={self.phrases!r}, probability={self.probability})"


class FirstWordDropping:
    r"""
    Stage-1 caption augmentation of the release: when a caption's first word (split on single spaces) is one of
    `words`, it is removed with probability `probability`.

    Args:
        words (`Sequence[str]`): the first words that may be dropped (the release passes its list per run).
        probability (`float`, *optional*, defaults to 0.3): chance of dropping a listed first word.
    """

    def __init__(self, words: Sequence[str], probability: float = STAGE1_FIRST_WORD_DROP_PROBABILITY):
        _check_options(words, "words", probability)
        self.words = frozenset(words)
        self.probability = probability

    def __call__(self, caption: str) -> str:
        """
        Args:
            caption (`str`): one caption.

        Returns:
            `str`: the caption, possibly without its first word.
        """
        first, _, rest = caption.partition(" ")
        if first in self.words and torch.rand(()).item() < self.probability:
            return rest
        return caption

    def __repr__(self) -> str:
        return f"{type(self).__name__}(words={sorted(self.words)!r}, probability={self.probability})"


__all__ = [
    "STAGE1_FIRST_WORD_DROP_PROBABILITY",
    "STAGE2_DROPPED_PHRASES",
    "STAGE2_PHRASE_DROP_PROBABILITY",
    "FirstWordDropping",
    "PhraseDropping",
]
