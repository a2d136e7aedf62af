"""Evaluation of BLAP: the paper's caption metrics, benchmark readers and the evaluation loop."""

from pathlib import Path

from .benchmarks import (
    BENCHMARKS,
    Benchmark,
    BenchmarkClip,
    load_musiccaps,
    load_song_describer,
    load_yt8m_musictextclips,
)
from .fense import BertFluencyErrorDetector, FluencyErrorDetector, SentenceEncoder, SentenceTransformerEncoder
from .loop import (
    generate_predictions,
    prediction_fingerprint,
    read_prediction_records,
    read_predictions,
    run_evaluation,
    weights_sha256,
)
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
from .report import METRIC_DISPLAY_NAMES, PUBLISHED_TABLE1, TABLE1_SOURCE, format_table1
from .resources import SETUP_COMMAND, MissingMetricResourceError, default_cache_dir

# `evaluate.load(BLAP_CAPTION_METRIC_PATH)` gives the caption metrics as an `evaluate` module, offline.
BLAP_CAPTION_METRIC_PATH = str(Path(__file__).resolve().parent / "blap_caption_metric.py")

__all__ = [
    "ALL_METRICS",
    "BENCHMARKS",
    "BLAP_CAPTION_METRIC_PATH",
    "BLEU_METRICS",
    "NGRAM_METRICS",
    "PAPER_METRICS",
    "METRIC_DISPLAY_NAMES",
    "PUBLISHED_TABLE1",
    "SENTENCE_METRICS",
    "SETUP_COMMAND",
    "SPICE_METRICS",
    "TABLE1_SOURCE",
    "Benchmark",
    "BenchmarkClip",
    "BertFluencyErrorDetector",
    "CaptionScorer",
    "FluencyErrorDetector",
    "MissingMetricResourceError",
    "SentenceEncoder",
    "SentenceTransformerEncoder",
    "caption_metrics",
    "default_cache_dir",
    "format_table1",
    "generate_predictions",
    "load_musiccaps",
    "load_song_describer",
    "load_yt8m_musictextclips",
    "prediction_fingerprint",
    "read_prediction_records",
    "read_predictions",
    "run_evaluation",
    "weights_sha256",
]
