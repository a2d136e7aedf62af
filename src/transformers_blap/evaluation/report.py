"""The published rows of the BLAP paper's Table 1, and a run's scores printed beside them in the same layout."""

from collections.abc import Mapping

from .metrics import PAPER_METRICS

TABLE1_COLUMNS = {"bleu_1": "BLEU@1", "bleu_4": "BLEU@4", "fense": "FENSE", "spider": "SPIDEr", "spice": "SPICE"}

# Table 1 of the paper, scores x100. Only BLAP's rows are included: the rows of the other systems (LP-MusicCaps,
# SALMONN, Qwen-Audio, Pengi) could not be sourced from the public material available when this was written, and a
# number that cannot be traced to the paper is not printed as the paper's.
PUBLISHED_TABLE1: dict[str, dict[str, dict[str, float]]] = {
    "musiccaps": {"BLAP": {"bleu_1": 26.2, "bleu_4": 3.3, "fense": 56.6, "spider": 8.8, "spice": 11.2}},
    "song_describer": {"BLAP": {"bleu_1": 12.9, "bleu_4": 0.4, "fense": 49.1, "spider": 4.3, "spice": 6.6}},
    "yt8m_musictextclips": {"BLAP": {"bleu_1": 11.6, "bleu_4": 0.3, "fense": 51.6, "spider": 3.9, "spice": 7.4}},
}

BENCHMARK_TITLES = {
    "musiccaps": "MusicCaps",
    "song_describer": "Song Describer",
    "yt8m_musictextclips": "YouTube8M-MusicTextClips",
}


def format_table1(benchmark: str, scores: Mapping[str, float], label: str = "this run", note: str = "") -> str:
    """
    A run's scores beside the published rows of Table 1 for the same benchmark, x100, in the paper's column order.

    Args:
        benchmark (`str`): a key of `PUBLISHED_TABLE1` (`"musiccaps"`, `"song_describer"`, `"yt8m_musictextclips"`);
            another name prints the run alone.
        scores (`Mapping[str, float]`): the run's metrics as fractions (what `caption_metrics` returns); metrics it
            lacks are shown as "-".
        label (`str`, *optional*, defaults to `"this run"`): the name of the run's row.
        note (`str`, *optional*): appended to the title line (e.g. how many clips were scored).

    Returns:
        `str`: the table, one row per line.
    """
    rows = [(f"{name} (published)", values) for name, values in PUBLISHED_TABLE1.get(benchmark, {}).items()]
    rows.append((label, {name: 100.0 * value for name, value in scores.items()}))
    width = max(len(name) for name, _ in rows) + 2
    title = BENCHMARK_TITLES.get(benchmark, benchmark) + (f" - {note}" if note else "") + " (x100)"
    lines = [title, "Model".ljust(width) + "".join(TABLE1_COLUMNS[name].rjust(8) for name in PAPER_METRICS)]
    for name, values in rows:
        cells = [f"{values[metric]:.1f}" if metric in values else "-" for metric in PAPER_METRICS]
        lines.append(name.ljust(width) + "".join(cell.rjust(8) for cell in cells))
    return "\n".join(lines)
