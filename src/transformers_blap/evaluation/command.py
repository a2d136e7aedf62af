"""
The `blap evaluate` and `blap setup-metrics` subcommands, written in the style of `transformers_blap.cli`: each
`add_<name>_command(subparsers)` declares its arguments and sets `handler` (`argparse.Namespace -> int`). Until the
`blap` command mounts them, `python -m transformers_blap.evaluation.command evaluate ...` runs the same parser.

    blap evaluate --model M --dataset musiccaps --audio-dir DIR --output report.json
"""

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .metrics import ALL_METRICS, NGRAM_METRICS, PAPER_METRICS
from .resources import MissingMetricResourceError, default_cache_dir

DATASETS = ("musiccaps", "song_describer", "yt8m_musictextclips")
# The names the public CSVs are distributed under; `--csv` defaults to those found in the audio folder or its parent.
DEFAULT_CSV_NAMES = {
    "musiccaps": ("musiccaps-public.csv",),
    "song_describer": ("song_describer.csv",),
    "yt8m_musictextclips": ("train.csv", "test.csv"),
}
METRIC_SETS = {"all": ALL_METRICS, "paper": PAPER_METRICS, "ngram": NGRAM_METRICS}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _metric_names(text: str) -> tuple[str, ...]:
    if text in METRIC_SETS:
        return METRIC_SETS[text]
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in ALL_METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"must be one of {sorted(METRIC_SETS)} or a comma-separated list of {', '.join(ALL_METRICS)}; got {text}"
        )
    return names


def add_evaluate_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="caption a benchmark (MusicCaps, Song Describer, YouTube8M-MusicTextClips) and score it as the paper",
        description=(
            "Caption every clip of a benchmark whose audio is in --audio-dir with the paper's settings (the model's"
            " generation config and the processor's prompt unless overridden), keep the captions in a resumable JSON"
            " Lines file, score them with the paper's metrics, write a JSON report and print the scores beside the"
            " published rows of the paper's Table 1. Clips without audio are counted and reported. SPICE, SPIDEr and"
            " FENSE need a one-time `blap setup-metrics` on a machine with network; `--metrics ngram` needs only Java."
        ),
    )
    parser.add_argument("--model", required=True, help="a saved BLAP folder or Hub repository id")
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="which benchmark")
    parser.add_argument("--audio-dir", required=True, type=Path, help="folder with the benchmark's audio (recursive)")
    parser.add_argument(
        "--csv",
        action="append",
        type=Path,
        help="the benchmark's public CSV (repeatable: YouTube8M-MusicTextClips takes train.csv and test.csv); default:"
        " musiccaps-public.csv / song_describer.csv / train.csv + test.csv in --audio-dir or its parent",
    )
    parser.add_argument("--output", required=True, type=Path, help="the JSON report to write, e.g. report.json")
    parser.add_argument(
        "--predictions", type=Path, help="the JSON Lines predictions, resumed if present (default: beside --output)"
    )
    parser.add_argument(
        "--split",
        default="eval",
        choices=("eval", "train", "all"),
        help="MusicCaps split (default: eval)",
    )
    parser.add_argument(
        "--valid-subset-only", action="store_true", help="Song Describer: only is_valid_subset captions"
    )
    parser.add_argument(
        "--metrics",
        type=_metric_names,
        default=ALL_METRICS,
        help="all (default), paper (Table 1's five), ngram (BLEU, METEOR, ROUGE-L, CIDEr-D: no downloads), or a"
        " comma-separated list of metric names",
    )
    parser.add_argument("--metrics-cache", type=Path, help=f"the setup-metrics cache (default: {default_cache_dir()})")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="clips per generate call (default 8)")
    parser.add_argument("--num-beams", type=positive_int, help="beam search width (default: the model's)")
    parser.add_argument("--max-new-tokens", type=positive_int, help="longest caption (default: the model's)")
    parser.add_argument("--min-length", type=int, help="shortest caption in tokens (default: the model's)")
    parser.add_argument("--prompt", help="instruction for the language model (default: the processor's)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: a GPU if there is one, else CPU)")
    parser.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16"), default="float32", help="model weights' dtype"
    )
    parser.set_defaults(handler=run_evaluate)


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

    from .loop import run_evaluation

    benchmark = load_benchmark(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    processor = BlapProcessor.from_pretrained(args.model)
    if args.prompt is not None:
        processor.prompt = args.prompt
    if os.path.isfile(os.path.join(args.model, "adapter_config.json")):  # a LoRA run's peft adapter folder
        from ..training.lora import load_lora_captioner

        model = load_lora_captioner(args.model, dtype=getattr(torch, args.dtype))
    else:
        model = BlapForConditionalGeneration.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
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


def add_setup_metrics_command(subparsers: argparse._SubParsersAction) -> None:
    from . import setup_metrics

    parser = subparsers.add_parser(
        "setup-metrics",
        help="fetch what SPICE, Sentence-BERT similarity and FENSE need (run once, needs network)",
        description=setup_metrics.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    setup_metrics.add_arguments(parser)
    parser.set_defaults(handler=setup_metrics.run)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m transformers_blap.evaluation.command {evaluate,setup-metrics} ...`; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m transformers_blap.evaluation.command")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_evaluate_command(subparsers)
    add_setup_metrics_command(subparsers)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (OSError, ValueError) as error:
        print(f"blap {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
