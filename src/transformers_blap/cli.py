"""
The `blap` command.

Each subcommand is one `add_<name>_command(subparsers)` function that declares its arguments and sets `handler` (a
function `argparse.Namespace -> int` exit status); register it in `COMMANDS`. Handlers import what they need
themselves. A bad argument, input file or model ends the command with one line, `blap COMMAND: error: CAUSE`, and
exit status 2 (a traceback too with `--debug` or `BLAP_DEBUG=1`); Ctrl-C (SIGINT) and SIGTERM end it with one line
and status 130 / 143.
"""

import argparse
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .conversion.laion_clap import add_convert_laion_clap_command
from .conversion.original import add_convert_original_command
from .evaluation.command import add_evaluate_command, add_setup_metrics_command, positive_int
from .library_commands import add_export_command, add_index_command, add_search_command
from .precision import DTYPE_CHOICES, resolve_dtype

if TYPE_CHECKING:
    from .tagging import ZeroShotTagger


# ------------------------------------------------------------------------------------------------------ caption


def _add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """The batching, window and generation options of `blap caption` and `blap caption-ray`."""
    parser.add_argument("--batch-size", type=positive_int, default=8, help="windows per generate call (default 8)")
    parser.add_argument("--num-beams", type=positive_int, help="beam search width (default: the model's)")
    parser.add_argument("--max-new-tokens", type=positive_int, help="longest caption (default: the model's)")
    parser.add_argument("--min-length", type=int, help="shortest caption in tokens (default: the model's)")
    parser.add_argument("--prompt", help="instruction for the language model (default: the processor's)")
    parser.add_argument("--window-s", type=float, help="window length in seconds (default: the model's, 10 s)")
    parser.add_argument("--hop-s", type=float, help="distance between window starts in seconds (default: --window-s)")
    parser.add_argument("--min-tail-s", type=float, help="shortest tail with its own window (default: 30%% of it)")


def _generation_options(args: argparse.Namespace) -> dict:
    """The pipeline call options set by [`_add_generation_arguments`]' flags (unset ones left to the model)."""
    options = {
        "num_beams": args.num_beams,
        "max_new_tokens": args.max_new_tokens,
        "min_length": args.min_length,
        "prompt": args.prompt,
        "window_s": args.window_s,
        "hop_s": args.hop_s,
        "min_tail_s": args.min_tail_s,
    }
    return {name: value for name, value in options.items() if value is not None}


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """`--dtype` and `--trust-remote-code`, of `blap caption` and `blap caption-ray`."""
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="checkpoint",
        help="model weights' dtype: auto = bfloat16 where the device computes it natively (AVX-512 BF16 / AMX CPUs,"
        " Ampere+ GPUs), else float32; checkpoint (default) = as saved",
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model repository's own code")


def add_caption_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "caption",
        help="caption audio files into a JSON Lines file (resumable; shards under torchrun / accelerate launch)",
        description=(
            "Caption audio files, folders (recursively, audio extensions only) or lists of paths (.txt, one per line),"
            " or the audio column of a dataset (--dataset), into JSON Lines: one line per input with path (and id for"
            " a dataset row), caption, per-window captions, duration, tags (with --tags) and error. A rerun skips"
            " inputs that already have a caption. Under torchrun or accelerate launch every process captions its"
            " share of the files and rank 0 merges the parts. The exit status is 1 if any input failed."
        ),
    )
    parser.add_argument("inputs", nargs="*", help="audio files, folders, or .txt files listing paths")
    parser.add_argument("--model", required=True, help="a saved BLAP folder or Hub repository id")
    parser.add_argument("--output", required=True, help="the JSON Lines file to write (appended to when resuming)")
    _add_generation_arguments(parser)
    parser.add_argument(
        "--device", help="cpu, cuda, cuda:1, ... (default: this process's GPU (LOCAL_RANK) if there is one, else CPU)"
    )
    _add_model_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    source = parser.add_argument_group(
        "dataset input", "Caption a split of a `datasets` dataset instead of files (one process; resumable by row id)."
    )
    source.add_argument(
        "--dataset",
        help="a Hub dataset id, a folder (save_to_disk, Parquet shards, audiofolder) or a .parquet/.arrow/.csv/.json"
        " file",
    )
    source.add_argument("--config", help="the dataset's configuration (subset)")
    source.add_argument("--split", default="train", help="the split to caption (default train)")
    source.add_argument("--audio-column", default="audio", help="the column holding the audio (default audio)")
    source.add_argument(
        "--id-column", help="a column of unique row ids, each record's identity (default: the row's index)"
    )
    source.add_argument("--streaming", action="store_true", help="read rows as they are captioned (large datasets)")
    tags = parser.add_argument_group(
        "zero-shot tags",
        "Score every track against a list of labels with a stage-1 model: its audio-text similarity, averaged over"
        " the track's windows, in the record's `tags`.",
    )
    tags.add_argument("--tags", help="a text file of labels, one per line")
    tags.add_argument("--tag-model", help="a saved stage-1 BLAP (BlapForRepresentationLearning) folder or Hub id")
    choice = tags.add_mutually_exclusive_group()
    choice.add_argument("--tag-top-k", type=positive_int, help="keep the K best labels per track (default 5)")
    choice.add_argument("--tag-threshold", type=float, help="keep every label scoring at least T (a cosine, -1..1)")
    tags.add_argument("--tag-template", help='the text a label is embedded as (default "This is a {} song.")')
    parser.set_defaults(handler=run_caption)


def _default_device() -> str:
    import os

    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def _caption_tagger(args: argparse.Namespace, device: str) -> "ZeroShotTagger | None":
    """The `--tags` / `--tag-model` tagger, or `None` without them."""
    if args.tags is None and args.tag_model is None:
        if args.tag_top_k is not None or args.tag_threshold is not None or args.tag_template is not None:
            raise ValueError("--tag-top-k, --tag-threshold and --tag-template need --tags and --tag-model.")
        return None
    if args.tags is None or args.tag_model is None:
        raise ValueError("zero-shot tags need both --tags LABELS_FILE and --tag-model STAGE1_MODEL.")
    from .tagging import DEFAULT_TAG_TEMPLATE, ZeroShotTagger, read_labels

    labels = read_labels(args.tags)
    try:
        return ZeroShotTagger.from_pretrained(
            args.tag_model,
            labels,
            device=device,
            dtype=resolve_dtype(args.dtype, device),
            top_k=args.tag_top_k,
            threshold=args.tag_threshold,
            template=args.tag_template or DEFAULT_TAG_TEMPLATE,
        )
    except (KeyboardInterrupt, ImportError):
        raise
    except Exception as error:
        raise ValueError(f"cannot load the tag model {args.tag_model}: {type(error).__name__}: {error}") from error


def run_caption(args: argparse.Namespace) -> int:
    from transformers import pipeline

    from .captioning import CaptionInterrupted, caption_dataset, caption_to_jsonl, expand_inputs, load_caption_dataset

    if bool(args.inputs) == (args.dataset is not None):
        raise ValueError("give audio files/folders or --dataset NAME_OR_PATH, not both and not neither.")
    if args.dataset is None:
        inputs = expand_inputs(args.inputs)
        if not inputs:
            print(f"blap caption: no audio files found in {' '.join(args.inputs)}", file=sys.stderr)
            return 2
    else:
        try:
            dataset = load_caption_dataset(
                args.dataset, config=args.config, split=args.split, streaming=args.streaming
            )
        except (KeyboardInterrupt, ImportError):
            raise
        except Exception as error:  # a missing folder, an unknown split or Hub id, ...: one line naming the dataset
            raise ValueError(f"cannot load the dataset {args.dataset}: {type(error).__name__}: {error}") from error
    device = args.device or _default_device()
    tagger = _caption_tagger(args, device)
    try:
        dtype = resolve_dtype(args.dtype, device)
        model, processor = args.model, None
        # A LoRA run's peft adapter folder (checked by name: the training code needs the `train` extra).
        if os.path.isfile(os.path.join(args.model, "adapter_config.json")):
            from .training.lora import load_lora_captioner

            model, processor = load_lora_captioner(args.model, dtype=dtype), args.model
        pipe = pipeline(
            "audio-to-text",
            model=model,
            processor=processor,
            device=device,
            dtype=dtype,
            trust_remote_code=args.trust_remote_code,
        )
    except (KeyboardInterrupt, ImportError):
        raise
    except Exception as error:  # a truncated safetensors file, a missing config, ...: one line naming the model
        raise ValueError(f"cannot load the model {args.model}: {type(error).__name__}: {error}") from error
    run_options = {
        "batch_size": args.batch_size,
        "progress": not args.no_progress,
        "tagger": tagger,
        **_generation_options(args),
    }
    try:
        if args.dataset is None:
            summary = caption_to_jsonl(pipe, inputs, args.output, **run_options)
        else:
            summary = caption_dataset(
                pipe,
                dataset,
                args.output,
                audio_column=args.audio_column,
                id_column=args.id_column,
                **run_options,
            )
    except CaptionInterrupted as interrupt:
        rank = f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"blap caption: {rank}{interrupt}", file=sys.stderr)
        return interrupt.exit_status
    for path, error in summary.errors.items():
        print(f"blap caption: failed: {path}: {error}", file=sys.stderr)
    return 1 if summary.failed else 0


# ------------------------------------------------------------------------------------------------------ caption-ray


def add_caption_ray_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "caption-ray",
        help="caption audio files on a Ray cluster (Ray Data, one model per actor) into Parquet",
        description=(
            "Caption audio files, folders or lists of paths (as `blap caption`) on Ray Data: a pool of actors, one"
            " model each, captions batches of files; the records (the fields of `blap caption`'s JSON lines) are"
            " written as Parquet files into --output. Joins the cluster named by RAY_ADDRESS, else starts a local"
            " Ray. A killed actor is restarted and its files retried. The exit status is 1 if any input failed."
        ),
    )
    parser.add_argument("inputs", nargs="+", help="audio files, folders, or .txt files listing paths")
    parser.add_argument("--model", required=True, help="a saved BLAP folder (readable on every node) or Hub id")
    parser.add_argument("--output", required=True, help="a new or empty folder for the Parquet files")
    parser.add_argument("--num-actors", type=positive_int, default=1, help="captioner actors (models) (default 1)")
    parser.add_argument(
        "--files-per-task", type=positive_int, default=8, help="files per Ray task, the unit of retry (default 8)"
    )
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs reserved per actor (default 1)")
    parser.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per actor; > 0 runs on CUDA")
    _add_generation_arguments(parser)
    _add_model_arguments(parser)
    parser.set_defaults(handler=run_caption_ray)


def run_caption_ray(args: argparse.Namespace) -> int:
    try:
        import ray
    except ImportError:
        raise ImportError("blap caption-ray needs Ray: pip install 'transformers_blap[ray]'.") from None

    from .captioning import expand_inputs
    from .ray_jobs import caption_with_ray

    inputs = expand_inputs(args.inputs)
    if not inputs:
        print(f"blap caption-ray: no audio files found in {' '.join(args.inputs)}", file=sys.stderr)
        return 2
    if not ray.is_initialized():
        ray.init()  # the cluster of RAY_ADDRESS, else a local one
    errors = caption_with_ray(
        inputs,
        args.model,
        args.output,
        num_actors=args.num_actors,
        files_per_task=args.files_per_task,
        cpus_per_actor=args.cpus_per_actor,
        gpus_per_actor=args.gpus_per_actor,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        batch_size=args.batch_size,
        **_generation_options(args),
    )
    for path, error in errors.items():
        print(f"blap caption-ray: failed: {path}: {error}", file=sys.stderr)
    return 1 if errors else 0


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
    card = parser.add_argument_group(
        "model card",
        "Without README.md in the folder, a card is rendered from the folder's configs with these options; with one,"
        " the options given are merged into it (metadata, model-index and its evaluation table).",
    )
    card.add_argument("--model-name", help="title and model-index name (default: the repository name)")
    card.add_argument("--license", help="license of the weights (Hub license id; default for a new card: apache-2.0)")
    card.add_argument(
        "--base-model", action="append", help="base model id (repeatable; default: the language model's Hub id)"
    )
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


# The `blap push` options that go into the model card.
CARD_OPTIONS = (
    "model_name",
    "license",
    "base_model",
    "dataset",
    "tag",
    "eval_report",
    "eval_results",
    "paper_results",
)


def _push_eval_results(args: argparse.Namespace) -> list[dict]:
    from .hub import PAPER_RESULTS, eval_results_from_report

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
    return eval_results


def run_push(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .hub import DEFAULT_LICENSE, merge_card_options, push_folder, render_folder_card

    folder = Path(args.folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"The folder to push, {folder}, does not exist.")
    options = {
        "model_name": args.model_name,
        "license": args.license,
        "base_model": args.base_model,
        "datasets": args.dataset,
        "tags": args.tag,
        "eval_results": _push_eval_results(args),
    }
    readme = folder / "README.md"
    if not readme.is_file():
        model_card = render_folder_card(
            folder, repo_id=args.repo_id, **{**options, "license": args.license or DEFAULT_LICENSE}
        )
    elif any(options.values()):
        model_card = merge_card_options(readme.read_text(encoding="utf-8"), **options)
        given = ", ".join(f"--{name.replace('_', '-')}" for name in CARD_OPTIONS if getattr(args, name))
        print(f"blap push: merged {given} into the card of {readme} (the folder is not changed).", file=sys.stderr)
    else:
        model_card = None
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

# Start-up warnings of third-party packages that say nothing about the user's run: (logger, message prefix).
# - bitsandbytes (imported by peft) tries, on CPUs with AVX-512 BF16, to fetch an optional 4-bit CPU kernel from the
#   Hub's "kernels" package at import time and logs a warning when it is not installed; it then uses its own kernel.
KNOWN_STARTUP_NOISE = (
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
)


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_third_party_startup() -> None:
    """
    Drops the `KNOWN_STARTUP_NOISE` messages (and only those: every other record of the same loggers passes). For
    entry points (`blap`, the training scripts), not for the library: call it before the third-party imports.
    """
    for logger_name, prefix in KNOWN_STARTUP_NOISE:
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _DropMessages) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropMessages(prefix))


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_caption_command,
    add_caption_ray_command,
    add_push_command,
    add_convert_original_command,
    add_convert_laion_clap_command,
    add_evaluate_command,
    add_setup_metrics_command,
    add_export_command,
    add_index_command,
    add_search_command,
]


DEBUG_ENVIRONMENT_VARIABLE = "BLAP_DEBUG"
"""Set to 1 to get tracebacks with errors, as `--debug` does."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blap", description="BLAP music captioning.")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"print tracebacks with errors (also: {DEBUG_ENVIRONMENT_VARIABLE}=1); by default an error is one line",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `blap` command; returns the exit status."""
    quiet_third_party_startup()
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENVIRONMENT_VARIABLE, "").strip().lower() in {"1", "true", "yes"}
    try:
        return args.handler(args)
    except KeyboardInterrupt:  # before or after the work proper (loading the model, ...): nothing to resume
        if debug:
            traceback.print_exc()
        print(f"blap {args.command}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as error:
        if debug:
            traceback.print_exc()
        message = " ".join(str(error).split()) or type(error).__name__
        expected = isinstance(error, (OSError, ValueError))  # bad input; anything else may be a bug worth a traceback
        hint = "" if debug or expected else f" (--debug or {DEBUG_ENVIRONMENT_VARIABLE}=1 for a traceback)"
        print(f"blap {args.command}: error: {message}{hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
