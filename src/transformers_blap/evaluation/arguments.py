"""
What the arguments of `blap evaluate` name: the metric sets and the benchmark files (its parser is
`blap_cli.commands.add_evaluate_command`, its handler `transformers_blap.cli.run_evaluate`).
"""

import argparse
from pathlib import Path

from .metrics import ALL_METRICS, NGRAM_METRICS, PAPER_METRICS

# The names the public CSVs are distributed under; `--csv` defaults to those found in the audio folder or its parent.
DEFAULT_CSV_NAMES = {
    "musiccaps": ("musiccaps-public.csv",),
    "song_describer": ("song_describer.csv",),
    "yt8m_musictextclips": ("train.csv", "test.csv"),
}
METRIC_SETS = {"all": ALL_METRICS, "paper": PAPER_METRICS, "ngram": NGRAM_METRICS}


def metric_names(text: str) -> tuple[str, ...]:
    """`--metrics`: a set name of `METRIC_SETS` or a comma-separated list of metric names."""
    if text in METRIC_SETS:
        return METRIC_SETS[text]
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in ALL_METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"must be one of {sorted(METRIC_SETS)} or a comma-separated list of {', '.join(ALL_METRICS)}; got {text}"
        )
    return names


def _csv_paths(args: argparse.Namespace) -> list[Path]:
    if args.csv:
        return list(args.csv)
    for folder in (args.audio_dir, args.audio_dir.parent):
        found = [folder / name for name in DEFAULT_CSV_NAMES[args.dataset] if (folder / name).is_file()]
        if found:
            return found
    raise FileNotFoundError(
        f"no {' / '.join(DEFAULT_CSV_NAMES[args.dataset])} in {args.audio_dir} or its parent: pass the benchmark's"
        " CSV with --csv"
    )


def load_benchmark(args: argparse.Namespace):
    """The `Benchmark` named by `--dataset`, `--csv`, `--audio-dir` (and `--split` / `--valid-subset-only`)."""
    from .benchmarks import load_musiccaps, load_song_describer, load_yt8m_musictextclips

    csv_paths = _csv_paths(args)
    if args.dataset == "yt8m_musictextclips":
        return load_yt8m_musictextclips(csv_paths, args.audio_dir)
    if len(csv_paths) != 1:
        raise ValueError(f"--csv: {args.dataset} has one CSV; got {len(csv_paths)}")
    if args.dataset == "musiccaps":
        return load_musiccaps(csv_paths[0], args.audio_dir, split=args.split)
    return load_song_describer(csv_paths[0], args.audio_dir, valid_subset_only=args.valid_subset_only)


__all__ = ["DEFAULT_CSV_NAMES", "METRIC_SETS", "load_benchmark", "metric_names"]
