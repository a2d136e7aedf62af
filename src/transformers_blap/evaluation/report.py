"""
The names of the caption metrics, the published rows of the BLAP paper's Table 1 (read from `table1.json`), and a
run's scores printed beside them in the paper's layout.
"""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .metrics import ALL_METRICS, PAPER_METRICS

# How the metrics are written for people: tables, cards, printouts (one scheme everywhere).
METRIC_DISPLAY_NAMES = {
    "bleu_1": "BLEU@1",
    "bleu_2": "BLEU@2",
    "bleu_3": "BLEU@3",
    "bleu_4": "BLEU@4",
    "meteor": "METEOR",
    "rouge_l": "ROUGE-L",
    "cider_d": "CIDEr-D",
    "spice": "SPICE",
    "spider": "SPIDEr",
    "sbert_sim": "Sentence-BERT",
    "fluency_error_rate": "Fluency errors",
    "fense": "FENSE",
}
# The metric `type` of a Hub `model-index` entry: the Hub's metric ids where they exist (bleu, meteor, rouge, cider,
# spice), the metric's own name otherwise. The display name tells BLEU@1 from BLEU@4.
HUB_METRIC_TYPES = {
    "bleu_1": "bleu",
    "bleu_2": "bleu",
    "bleu_3": "bleu",
    "bleu_4": "bleu",
    "meteor": "meteor",
    "rouge_l": "rouge",
    "cider_d": "cider",
    "spice": "spice",
    "spider": "spider",
    "sbert_sim": "sbert_sim",
    "fluency_error_rate": "fluency_error_rate",
    "fense": "fense",
}
TABLE1_COLUMNS = {name: METRIC_DISPLAY_NAMES[name] for name in PAPER_METRICS}

TABLE1_FILE = Path(__file__).with_name("table1.json")
with open(TABLE1_FILE, encoding="utf-8") as _handle:
    _TABLE1 = json.load(_handle)
# Where the published rows come from (the paper, named in `table1.json`).
TABLE1_SOURCE: str = _TABLE1["source"]
TABLE1_SOURCE_URL: str = _TABLE1["source_url"]
# benchmark -> system -> metric -> score x100, exactly as printed in Table 1 of the paper.
PUBLISHED_TABLE1: dict[str, dict[str, dict[str, float]]] = _TABLE1["benchmarks"]

BENCHMARK_TITLES = {
    "musiccaps": "MusicCaps",
    "song_describer": "Song Describer",
    "yt8m_musictextclips": "YouTube8M-MusicTextClips",
}


def metric_display_name(metric: str) -> str:
    """`"bleu_1"` -> `"BLEU@1"`; a name without a display form (e.g. `"loss"`, `"gen_len"`) is returned as is."""
    return METRIC_DISPLAY_NAMES.get(metric, metric)


def published_rows(benchmark: str) -> dict[str, Any]:
    """
    The published Table 1 rows of one benchmark, as the JSON report carries them.

    Returns:
        `dict`: `{"source", "source_url", "scale": "x100", "rows": {system: {metric: score}}}` (no rows for a
        benchmark the paper does not report).
    """
    return {
        "source": TABLE1_SOURCE,
        "source_url": TABLE1_SOURCE_URL,
        "scale": "x100",
        "rows": PUBLISHED_TABLE1.get(benchmark, {}),
    }


def format_table1(benchmark: str, scores: Mapping[str, float], label: str = "this run", note: str = "") -> str:
    """
    A run's scores beside every published row of Table 1 for the same benchmark (Pengi, Qwen-Audio, Salmonn,
    LP-MusicCaps, BLAP), x100, in the paper's column order (BLEU@1, BLEU@4, FENSE, SPIDEr, SPICE); then the run's
    other computed metrics (BLEU@2/3, METEOR, ROUGE-L, CIDEr-D, ...) on one line, and the paper named as source.

    Args:
        benchmark (`str`): a key of `PUBLISHED_TABLE1` (`"musiccaps"`, `"song_describer"`, `"yt8m_musictextclips"`);
            another name prints the run alone.
        scores (`Mapping[str, float]`): the run's metrics as fractions (what `caption_metrics` returns); Table 1
            metrics it lacks are shown as "-".
        label (`str`, *optional*, defaults to `"this run"`): the name of the run's row.
        note (`str`, *optional*): appended to the title line (e.g. how many clips were scored).

    Returns:
        `str`: the table, one row per line.
    """
    published = PUBLISHED_TABLE1.get(benchmark, {})
    rows = [(f"{name} (published)", values) for name, values in published.items()]
    rows.append((label, {name: 100.0 * value for name, value in scores.items()}))
    width = max(len(name) for name, _ in rows) + 2
    title = BENCHMARK_TITLES.get(benchmark, benchmark) + (f" - {note}" if note else "") + " (x100)"
    lines = [title, "Model".ljust(width) + "".join(TABLE1_COLUMNS[name].rjust(8) for name in PAPER_METRICS)]
    for name, values in rows:
        cells = [f"{values[metric]:.1f}" if metric in values else "-" for metric in PAPER_METRICS]
        lines.append(name.ljust(width) + "".join(cell.rjust(8) for cell in cells))
    others = [name for name in ALL_METRICS if name in scores and name not in PAPER_METRICS]
    others += [name for name in scores if name not in ALL_METRICS and name not in PAPER_METRICS]
    if others:
        cells = ", ".join(f"{metric_display_name(name)} {100.0 * scores[name]:.1f}" for name in others)
        lines.append(f"Also computed for {label} (x100): {cells}")
    if published:
        lines.append(f"Published rows: {TABLE1_SOURCE}.")
    return "\n".join(lines)
