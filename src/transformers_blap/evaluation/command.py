"""
The handler of `blap evaluate` (its parser is `blap_cli.commands.add_evaluate_command`):

    blap evaluate --model M --dataset musiccaps --audio-dir DIR --output report.json
"""

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .metrics import ALL_METRICS, NGRAM_METRICS, PAPER_METRICS
from .resources import MissingMetricResourceError

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


def run_evaluate(args: argparse.Namespace) -> int:
    import torch

    from transformers_blap import BlapForConditionalGeneration, BlapProcessor

    from ..conversion.release import model_or_converted_release
    from ..precision import resolve_dtype
    from .loop import run_evaluation

    benchmark = load_benchmark(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    source = model_or_converted_release(args.model)
    processor = BlapProcessor.from_pretrained(source)
    if args.prompt is not None:
        processor.prompt = args.prompt
    dtype = resolve_dtype(args.dtype, device)
    if os.path.isfile(os.path.join(source, "adapter_config.json")):  # a LoRA run's peft adapter folder
        from ..training.lora import load_lora_captioner

        model = load_lora_captioner(source, dtype=dtype)
    else:
        model = BlapForConditionalGeneration.from_pretrained(source, dtype=dtype)
    model.to(device).eval()
    generate_kwargs = {
        name: value
        for name, value in (
            ("num_beams", args.num_beams),
            ("max_new_tokens", args.max_new_tokens),
            ("min_length", args.min_length),
        )
        if value is not None
    }
    scorer_kwargs = {"device": device}
    if args.metrics_cache is not None:
        scorer_kwargs["cache_dir"] = args.metrics_cache
    try:
        report = run_evaluation(
            model,
            processor,
            benchmark,
            args.output,
            predictions_path=args.predictions,
            batch_size=args.batch_size,
            generate_kwargs=generate_kwargs,
            metrics=args.metrics,
            scorer_kwargs=scorer_kwargs,
            model_name=args.model,
        )
    except MissingMetricResourceError as error:
        print(f"blap evaluate: {error}", file=sys.stderr)
        return 2
    return 1 if report["clips_failed"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m transformers_blap.evaluation.command {evaluate,setup-metrics} ...`, the same as `blap ...`."""
    from blap_cli import main as blap_main

    return blap_main(argv)


if __name__ == "__main__":
    sys.exit(main())
