"""Evaluation of BLAP: the paper's caption metrics, benchmark readers and the evaluation loop."""

from .fense import BertFluencyErrorDetector, FluencyErrorDetector, SentenceEncoder, SentenceTransformerEncoder
from .metrics import (
    ALL_METRICS,
    BLEU_METRICS,
    NGRAM_METRICS,
    PAPER_METRICS,
    SENTENCE_METRICS,
    SPICE_METRICS,
    CaptionScorer,
    caption_metrics,
)
from .resources import SETUP_COMMAND, MissingMetricResourceError, default_cache_dir

__all__ = [
    "ALL_METRICS",
    "BLEU_METRICS",
    "NGRAM_METRICS",
    "PAPER_METRICS",
    "SENTENCE_METRICS",
    "SETUP_COMMAND",
    "SPICE_METRICS",
    "BertFluencyErrorDetector",
    "CaptionScorer",
    "FluencyErrorDetector",
    "MissingMetricResourceError",
    "SentenceEncoder",
    "SentenceTransformerEncoder",
    "caption_metrics",
    "default_cache_dir",
]
