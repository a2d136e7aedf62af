"""
The `blap` command.

Each subcommand is one `add_<name>_command(subparsers)` function that declares its arguments and sets `handler` (a
function `argparse.Namespace -> int` exit status); register it in `COMMANDS`. Handlers import what they need
themselves. A bad argument or input file ends the command with a one-line error and exit status 2.
"""

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from .conversion.laion_clap import add_convert_laion_clap_command
from .conversion.original import add_convert_original_command
from .evaluation.command import add_evaluate_command, add_setup_metrics_command
from .library_commands import add_export_command, add_index_command, add_search_command


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


# ------------------------------------------------------------------------------------------------------ caption


def add_caption_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "caption",
        help="caption audio files into a JSON Lines file (resumable; shards under torchrun / accelerate launch)",
        description=(
            "Caption audio files, folders (recursively, audio extensions only) or lists of paths (.txt, one per line)"
            " into JSON Lines: one line per input with path, caption, per-window captions, duration and error. A rerun"
            " skips inputs that already have a caption. Under torchrun or accelerate launch every process captions its"
            " share of the inputs and rank 0 merges the parts. The exit status is 1 if any input failed."
        ),
    )
    parser.add_argument("inputs", nargs="+", help="audio files, folders, or .txt files listing paths")
    parser.add_argument("--model", required=True, help="a saved BLAP folder or Hub repository id")
    parser.add_argument("--output", required=True, help="the JSON Lines file to write (appended to when resuming)")
    parser.add_argument("--batch-size", type=_positive_int, default=8, help="windows per generate call (default 8)")
    parser.add_argument("--num-beams", type=_positive_int, help="beam search width (default: the model's)")
    parser.add_argument("--max-new-tokens", type=_positive_int, help="longest caption (default: the model's)")
    parser.add_argument("--min-length", type=int, help="shortest caption in tokens (default: the model's)")
    parser.add_argument("--prompt", help="instruction for the language model (default: the processor's)")
    parser.add_argument("--window-s", type=float, help="window length in seconds (default: the model's, 10 s)")
    parser.add_argument("--hop-s", type=float, help="distance between window starts in seconds (default: --window-s)")
    parser.add_argument("--min-tail-s", type=float, help="shortest tail with its own window (default: 30%% of it)")
    parser.add_argument(
        "--device", help="cpu, cuda, cuda:1, ... (default: this process's GPU (LOCAL_RANK) if there is one, else CPU)"
    )
    parser.add_argument(
        "--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto", help="model weights' dtype"
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model repository's own code")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(handler=run_caption)


def _default_device() -> str:
    import os

    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def run_caption(args: argparse.Namespace) -> int:
    from transformers import pipeline

    from .captioning import caption_to_jsonl, expand_inputs

    inputs = expand_inputs(args.inputs)
    if not inputs:
        print(f"blap caption: no audio files found in {' '.join(args.inputs)}", file=sys.stderr)
        return 2
    pipe = pipeline(
        "audio-to-text",
        model=args.model,
        device=args.device or _default_device(),
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
    )
    options = {
        "num_beams": args.num_beams,
        "max_new_tokens": args.max_new_tokens,
        "min_length": args.min_length,
        "prompt": args.prompt,
        "window_s": args.window_s,
        "hop_s": args.hop_s,
        "min_tail_s": args.min_tail_s,
    }
    summary = caption_to_jsonl(
        pipe,
        inputs,
        args.output,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        **{name: value for name, value in options.items() if value is not None},
    )
    for path, error in summary.errors.items():
        print(f"blap caption: failed: {path}: {error}", file=sys.stderr)
    return 1 if summary.failed else 0


# --------------------------------------------------------------------------------------------------------- push


def add_push_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "push",
        help="publish a saved BLAP folder (model + processor) to the Hugging Face Hub with remote code and a card",
        description=(
            "Upload a folder holding a saved BlapForConditionalGeneration and BlapProcessor as one commit, adding the"
            " code and config entries that let it load with trust_remote_code=True, and a model card (the folder's"
            " README.md, else one rendered from the template with the options below). The folder is not modified."
        ),
    )
    parser.add_argument("folder", help="the saved model + processor folder")
    parser.add_argument("repo_id", help="the Hub repository, e.g. your-name/blap (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", help="branch to push to (created if missing)")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--commit-message", default="Upload BLAP model")
    parser.add_argument("--token", help="Hub token (default: the one saved by `hf auth login`)")
    card = parser.add_argument_group("model card (when the folder has no README.md)")
    card.add_argument("--model-name", help="title and model-index name (default: the repository name)")
    card.add_argument("--license", default="apache-2.0", help="license of the weights (Hub license id)")
    card.add_argument("--base-model", action="append", help="base model id (repeatable; default google/flan-t5-xl)")
    card.add_argument("--dataset", action="append", help="training data set id (repeatable)")
    card.add_argument("--tag", action="append", default=[], help="extra tag (repeatable)")
    card.add_argument("--eval-report", action="append", default=[], help="a `blap evaluate` report.json (repeatable)")
    card.add_argument(
        "--eval-results",
        help="JSON file: a list of results, each with dataset_type, dataset_name, metric_type, metric_value (and"
        " optionally metric_name, dataset_split, source_name, source_url)",
    )
    card.add_argument("--paper-results", action="store_true", help="claim the paper's Table 1 (original weights only)")
    parser.set_defaults(handler=run_push)


def run_push(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .configuration_blap import BlapConfig
    from .hub import DEFAULT_BASE_MODEL, PAPER_RESULTS, eval_results_from_report, push_folder, render_model_card

    folder = Path(args.folder)
    model_card = None
    if not (folder / "README.md").is_file():
        eval_results = list(PAPER_RESULTS) if args.paper_results else []
        for report_file in args.eval_report:
            with open(report_file, encoding="utf-8") as handle:
                eval_results += eval_results_from_report(json.load(handle))
        if args.eval_results:
            with open(args.eval_results, encoding="utf-8") as handle:
                loaded = json.load(handle)
            if not isinstance(loaded, list):
                raise ValueError(f"{args.eval_results} must hold a JSON list of results, got {type(loaded).__name__}.")
            eval_results += loaded
        model_card = render_model_card(
            BlapConfig.from_pretrained(folder),
            repo_id=args.repo_id,
            model_name=args.model_name,
            license=args.license,
            base_model=args.base_model or DEFAULT_BASE_MODEL,
            datasets=args.dataset,
            tags=args.tag,
            eval_results=eval_results,
        )
    commit = push_folder(
        folder,
        args.repo_id,
        model_card=model_card,
        commit_message=args.commit_message,
        private=args.private or None,
        token=args.token,
        revision=args.revision,
        create_pr=args.create_pr,
    )
    print(commit.commit_url)
    return 0


# --------------------------------------------------------------------------------------------------------- main

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_caption_command,
    add_push_command,
    add_convert_original_command,
    add_convert_laion_clap_command,
    add_evaluate_command,
    add_setup_metrics_command,
    add_export_command,
    add_index_command,
    add_search_command,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blap", description="BLAP music captioning.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `blap` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (OSError, ValueError) as error:
        print(f"blap {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
