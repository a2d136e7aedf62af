"""
Caption metrics of the BLAP paper, computed the way COCO caption evaluation computes them.

Every metric is computed by its reference implementation:

- `pycocoevalcap` (the Python 3 package of the COCO caption evaluation code): Stanford PTBTokenizer (lower-cased,
  punctuation removed), BLEU@1-4 (corpus level, "closest" reference length), METEOR 1.5 (its jar), ROUGE-L and CIDEr-D
  (the `Cider` scorer of coco-caption is CIDEr-D: clipped counts, Gaussian length penalty, x10, document frequencies
  taken from the references of the evaluated corpus), SPICE 1.0 (its jar plus Stanford CoreNLP 3.6.0);
- SPIDEr = (CIDEr-D + SPICE) / 2;
- Sentence-BERT similarity and FENSE as in the FENSE reference code (see `fense.py`).

All scores are corpus level and in [0, 1] (CIDEr-D in [0, 10]); the paper's tables show them x100. The n-gram metrics
and SPICE see the PTB-tokenized captions, Sentence-BERT and FENSE the captions as written (whitespace normalized).
"""

import json
import math
import os
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

try:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
except ImportError:  # the `eval` extra is not installed: `_require_pycocoevalcap` says so when a metric is asked for
    Bleu = Cider = Meteor = Rouge = PTBTokenizer = None

from .fense import BertFluencyErrorDetector, FluencyErrorDetector, SentenceEncoder, SentenceTransformerEncoder
from .fense import sentence_scores as _sentence_scores
from .resources import (
    SPICE_JAR,
    default_cache_dir,
    missing_fense_files,
    missing_sbert_files,
    missing_spice_files,
    raise_if_missing,
    require_java,
)

BLEU_METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4")
NGRAM_METRICS = (*BLEU_METRICS, "meteor", "rouge_l", "cider_d")
SPICE_METRICS = ("spice", "spider")
SENTENCE_METRICS = ("sbert_sim", "fluency_error_rate", "fense")
ALL_METRICS = NGRAM_METRICS + SPICE_METRICS + SENTENCE_METRICS
# The columns of the paper's Table 1, in its order.
PAPER_METRICS = ("bleu_1", "bleu_4", "fense", "spider", "spice")

_NEEDS_SPICE = {"spice", "spider"}
_NEEDS_ENCODER = {"sbert_sim", "fluency_error_rate", "fense"}
_NEEDS_DETECTOR = {"fluency_error_rate", "fense"}


def _normalize_space(text: str) -> str:
    # PTBTokenizer reads one caption per line: any line or paragraph separator inside a caption would shift the rest.
    return " ".join(text.split())


def check_captions(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]]
) -> tuple[list[str], list[list[str]]]:
    """
    Validates the inputs of the caption metrics and brings them into one shape.

    Args:
        predictions (`Sequence[str]`): one generated caption per clip.
        references (`Sequence[str | Sequence[str]]`): per clip, its reference caption or a non-empty list of them.

    Returns:
        `tuple[list[str], list[list[str]]]`: the predictions and the references, each caption with its whitespace
        collapsed to single spaces.
    """
    if isinstance(predictions, str) or not isinstance(predictions, Sequence):
        raise TypeError(f"`predictions` must be a sequence of strings, one per clip; got {type(predictions).__name__}")
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise TypeError(f"`references` must be a sequence with one entry per clip; got {type(references).__name__}")
    if len(predictions) == 0:
        raise ValueError("`predictions` is empty: there is nothing to evaluate")
    if len(predictions) != len(references):
        raise ValueError(
            f"`predictions` and `references` must have one entry per clip; got {len(predictions)} predictions and "
            f"{len(references)} reference entries"
        )
    clean_predictions = []
    for index, prediction in enumerate(predictions):
        if not isinstance(prediction, str):
            raise TypeError(f"`predictions[{index}]` must be a string; got {type(prediction).__name__}")
        clean_predictions.append(_normalize_space(prediction))
    clean_references = []
    for index, clip_references in enumerate(references):
        if isinstance(clip_references, str):
            clip_references = [clip_references]
        if not isinstance(clip_references, Sequence) or len(clip_references) == 0:
            raise ValueError(
                f"`references[{index}]` must be a caption or a non-empty list of captions; got {clip_references!r}"
            )
        for reference in clip_references:
            if not isinstance(reference, str) or not reference.strip():
                raise ValueError(f"`references[{index}]` must contain non-empty strings only; got {reference!r}")
        clean_references.append([_normalize_space(reference) for reference in clip_references])
    return clean_predictions, clean_references


def _require_pycocoevalcap() -> None:
    if PTBTokenizer is None:
        raise ImportError(
            "The caption metrics need pycocoevalcap, which is not installed: pip install 'transformers_blap[eval]'."
        )


def ptb_tokenize(captions: Sequence[Sequence[str]]) -> dict[int, list[str]]:
    """
    Tokenizes captions with pycocoevalcap's Stanford PTBTokenizer (lower case, punctuation tokens dropped).

    Args:
        captions (`Sequence[Sequence[str]]`): per clip, its captions (single-line strings).

    Returns:
        `dict[int, list[str]]`: clip index -> tokenized captions joined by spaces, the format pycocoevalcap's scorers
        take.
    """
    _require_pycocoevalcap()
    require_java()
    tokenized = PTBTokenizer().tokenize(
        {index: [{"caption": caption} for caption in clip] for index, clip in enumerate(captions)}
    )
    for index, clip in enumerate(captions):
        if len(tokenized.get(index, [])) != len(clip):
            raise RuntimeError(
                f"PTBTokenizer returned {len(tokenized.get(index, []))} captions for clip {index} instead of "
                f"{len(clip)}: a caption contains a character it treats as a line break"
            )
    return tokenized


def run_spice(
    references: dict[int, list[str]],
    predictions: dict[int, list[str]],
    command: Sequence[str] | None = None,
    max_heap: str = "8G",
) -> np.ndarray:
    """
    Per-clip SPICE F-scores from the SPICE 1.0 jar shipped with pycocoevalcap, fed and read the way pycocoevalcap's
    `Spice` scorer does, but run without SPICE's parse cache (the cache's serializer fails on Java 17) and with its
    temporary files outside the installed package.

    Args:
        references (`dict[int, list[str]]`): tokenized references per clip.
        predictions (`dict[int, list[str]]`): the tokenized candidate per clip (a one-element list).
        command (`Sequence[str]`, *optional*): the program to run in place of `java -jar spice-1.0.jar`; it is called
            with `INPUT.json -out OUTPUT.json -subset -silent` appended and must write SPICE's output format.
        max_heap (`str`, *optional*, defaults to `"8G"`): the JVM heap for the default command, as pycocoevalcap.

    Returns:
        `np.ndarray`: the SPICE F-score ("All") of each clip, in clip order (NaN where SPICE gives none).
    """
    if command is None:
        raise_if_missing(missing_spice_files())
        command = [require_java(), f"-Xmx{max_heap}", "-jar", str(SPICE_JAR)]
    clip_ids = sorted(references)
    spice_input = [
        {"image_id": clip_id, "test": predictions[clip_id][0], "refs": references[clip_id]} for clip_id in clip_ids
    ]
    with tempfile.TemporaryDirectory(prefix="blap-spice-") as work_dir:
        input_path = Path(work_dir) / "input.json"
        output_path = Path(work_dir) / "output.json"
        input_path.write_text(json.dumps(spice_input))
        completed = subprocess.run(
            [*command, str(input_path), "-out", str(output_path), "-subset", "-silent"],
            cwd=SPICE_JAR.parent,
            capture_output=True,
            text=True,
        )
        if completed.returncode != 0 or not output_path.is_file():
            raise RuntimeError(
                f"SPICE failed (exit status {completed.returncode}) running {' '.join(command)}:\n"
                f"{completed.stderr.strip()[-4000:]}"
            )
        results = json.loads(output_path.read_text())
    by_clip = {item["image_id"]: item["scores"]["All"]["f"] for item in results}
    if sorted(by_clip) != clip_ids:
        raise RuntimeError(f"SPICE returned scores for clips {sorted(by_clip)}, expected {clip_ids}")
    return np.array([_as_float(by_clip[clip_id]) for clip_id in clip_ids])


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _check_metric_names(metrics: Iterable[str]) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = [metrics]
    names = tuple(dict.fromkeys(metrics))
    unknown = [name for name in names if name not in ALL_METRICS]
    if unknown or not names:
        raise ValueError(f"`metrics` must be a non-empty selection of {ALL_METRICS}; got unknown names {unknown}")
    return names


class CaptionScorer:
    """
    Computes caption metrics for whole corpora and keeps its helpers (the METEOR jar process, the Sentence-BERT model,
    the FENSE detector) alive between calls. Use it as a context manager, or call `close()`.

    Args:
        metrics (`Iterable[str]`, *optional*, defaults to `ALL_METRICS`): which metrics to return, from
            `ALL_METRICS`.
        cache_dir (`str` or `os.PathLike`, *optional*): where the setup command stored the Sentence-BERT model and the
            FENSE detector; defaults to `default_cache_dir()`.
        sentence_encoder (`SentenceEncoder`, *optional*): used instead of the cached `paraphrase-TinyBERT-L6-v2`.
        error_detector (`FluencyErrorDetector`, *optional*): used instead of the cached FENSE detector.
        spice_command (`Sequence[str]`, *optional*): used instead of `java -jar spice-1.0.jar` (see `run_spice`).
        device (`str`, *optional*, defaults to `"cpu"`): torch device of the Sentence-BERT model and the detector.
        batch_size (`int`, *optional*, defaults to 32): sentences per forward pass of those models.

    Missing downloads (CoreNLP for SPICE, the Sentence-BERT model, the FENSE detector) raise
    `MissingMetricResourceError` here, naming each missing file and the setup command that fetches them.
    """

    def __init__(
        self,
        metrics: Iterable[str] = ALL_METRICS,
        *,
        cache_dir: str | os.PathLike | None = None,
        sentence_encoder: SentenceEncoder | None = None,
        error_detector: FluencyErrorDetector | None = None,
        spice_command: Sequence[str] | None = None,
        device: str = "cpu",
        batch_size: int = 32,
    ):
        self.metrics = _check_metric_names(metrics)
        requested = set(self.metrics)
        cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
        for name, value, protocol in (
            ("sentence_encoder", sentence_encoder, SentenceEncoder),
            ("error_detector", error_detector, FluencyErrorDetector),
        ):
            if value is not None and not isinstance(value, protocol):
                raise TypeError(f"`{name}` must implement {protocol.__name__}; got {type(value).__name__}")
        if requested & (set(NGRAM_METRICS) | _NEEDS_SPICE):
            require_java()
        missing = []
        if requested & _NEEDS_SPICE and spice_command is None:
            missing += missing_spice_files()
        if requested & _NEEDS_ENCODER and sentence_encoder is None:
            missing += missing_sbert_files(cache_dir)
        if requested & _NEEDS_DETECTOR and error_detector is None:
            missing += missing_fense_files(cache_dir)
        raise_if_missing(missing, cache_dir)

        if requested & _NEEDS_ENCODER and sentence_encoder is None:
            sentence_encoder = SentenceTransformerEncoder.from_cache(cache_dir, device=device, batch_size=batch_size)
        if requested & _NEEDS_DETECTOR and error_detector is None:
            error_detector = BertFluencyErrorDetector.from_cache(cache_dir, device=device, batch_size=batch_size)
        self.sentence_encoder = sentence_encoder
        self.error_detector = error_detector
        self.spice_command = None if spice_command is None else list(spice_command)
        self._meteor: Meteor | None = None

    def __enter__(self) -> "CaptionScorer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stops the METEOR process, if one was started."""
        if self._meteor is not None:
            with self._meteor.lock:
                self._meteor.meteor_p.stdin.close()
                self._meteor.meteor_p.kill()
                self._meteor.meteor_p.wait()
            self._meteor = None

    def _meteor_scorer(self) -> Meteor:
        if self._meteor is None:
            self._meteor = Meteor()
        return self._meteor

    def __call__(self, predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, float]:
        """
        Scores one corpus.

        Args:
            predictions (`Sequence[str]`): one generated caption per clip.
            references (`Sequence[str | Sequence[str]]`): per clip, its reference caption or list of captions.

        Returns:
            `dict[str, float]`: metric name -> corpus-level score, for the metrics this scorer was built for, in the
            order of `ALL_METRICS`.
        """
        predictions, references = check_captions(predictions, references)
        requested = set(self.metrics)
        scores: dict[str, float] = {}
        if requested & (set(NGRAM_METRICS) | _NEEDS_SPICE):
            tokenized_references = ptb_tokenize(references)
            tokenized_predictions = ptb_tokenize([[prediction] for prediction in predictions])
            if requested & set(BLEU_METRICS):
                bleu, _ = Bleu(4).compute_score(tokenized_references, tokenized_predictions, verbose=0)
                scores.update({f"bleu_{n}": float(bleu[n - 1]) for n in range(1, 5)})
            if "meteor" in requested:
                meteor, _ = self._meteor_scorer().compute_score(tokenized_references, tokenized_predictions)
                scores["meteor"] = float(meteor)
            if "rouge_l" in requested:
                rouge_l, _ = Rouge().compute_score(tokenized_references, tokenized_predictions)
                scores["rouge_l"] = float(rouge_l)
            if requested & {"cider_d", "spider"}:
                cider_d, _ = Cider().compute_score(tokenized_references, tokenized_predictions)
                scores["cider_d"] = float(cider_d)
            if requested & _NEEDS_SPICE:
                spice = run_spice(tokenized_references, tokenized_predictions, command=self.spice_command)
                scores["spice"] = float(np.mean(spice))
                scores["spider"] = (scores["cider_d"] + scores["spice"]) / 2.0
        if requested & _NEEDS_ENCODER:
            sentence = _sentence_scores(predictions, references, self.sentence_encoder, self.error_detector)
            scores["sbert_sim"] = float(np.mean(sentence["sbert_sim"]))
            if "fense" in sentence:
                scores["fluency_error_rate"] = float(np.mean(sentence["fluency_error"]))
                scores["fense"] = float(np.mean(sentence["fense"]))
        return {name: scores[name] for name in ALL_METRICS if name in requested}


def caption_metrics(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    metrics: Iterable[str] = ALL_METRICS,
    **scorer_kwargs,
) -> dict[str, float]:
    """
    Corpus-level caption metrics of the BLAP paper: BLEU@1-4, METEOR, ROUGE-L, CIDEr-D, SPICE, SPIDEr, Sentence-BERT
    similarity, fluency-error rate and FENSE.

    Args:
        predictions (`Sequence[str]`): one generated caption per clip.
        references (`Sequence[str | Sequence[str]]`): per clip, its reference caption or a list of them.
        metrics (`Iterable[str]`, *optional*, defaults to `ALL_METRICS`): which metrics to compute;
            `NGRAM_METRICS` needs nothing but Java and pycocoevalcap.
        **scorer_kwargs: passed to `CaptionScorer` (`cache_dir`, `sentence_encoder`, `error_detector`,
            `spice_command`, `device`, `batch_size`).

    Returns:
        `dict[str, float]`: metric name -> score (fractions, CIDEr-D up to 10; x100 gives the paper's numbers).

    Example:

    ```python
    >>> from transformers_blap.evaluation import NGRAM_METRICS, caption_metrics
    >>> caption_metrics(["a calm piano melody"], [["a soft piano piece", "calm solo piano"]], metrics=NGRAM_METRICS)
    ```
    """
    with CaptionScorer(metrics, **scorer_kwargs) as scorer:
        return scorer(predictions, references)


__all__ = [
    "ALL_METRICS",
    "BLEU_METRICS",
    "NGRAM_METRICS",
    "PAPER_METRICS",
    "SENTENCE_METRICS",
    "SPICE_METRICS",
    "CaptionScorer",
    "caption_metrics",
    "check_captions",
    "ptb_tokenize",
    "run_spice",
]
