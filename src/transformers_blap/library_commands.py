"""
`blap export`, `blap index` and `blap search`: from a captioned music library to a dataset, and a text search over it.

Each `add_<name>_command(subparsers)` declares a subcommand for `cli.COMMANDS`; the handlers import the heavy modules
(`datasets`, faiss, the model) themselves, so `blap --help` stays light.
"""

import argparse
import json
import shlex
import sys

from .evaluation.command import positive_int


def _setting(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


# ------------------------------------------------------------------------------------------------------- export


def add_export_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="turn a `blap caption` JSON Lines file into a Hugging Face dataset (Parquet + card), optionally pushed",
        description=(
            "Write the captioned records of a `blap caption` output as a dataset folder that datasets.load_dataset"
            " loads: Parquet shards with audio (path, or the file's bytes with --embed-audio), path, caption, windows,"
            " duration, tags and warnings, and a dataset card (README.md) with the model, the generation settings,"
            " counts and failures. Failed inputs are left out and counted."
        ),
    )
    parser.add_argument("captions", help="the JSON Lines output of `blap caption`")
    parser.add_argument("--to", required=True, dest="folder", help="the dataset folder to write")
    parser.add_argument("--embed-audio", action="store_true", help="store the audio files themselves, not paths")
    parser.add_argument("--shard-rows", type=positive_int, default=1000, help="rows per Parquet shard (default 1000)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty folder")
    card = parser.add_argument_group("dataset card: how the captions were made")
    card.add_argument("--model", help="the captioning model (folder or Hub id)")
    card.add_argument("--revision", help="its revision (commit or tag)")
    card.add_argument(
        "--generation",
        type=_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a generation setting of the captioning run, e.g. num_beams=10 (repeatable)",
    )
    card.add_argument("--caption-command", help="the `blap caption` command line that wrote the captions")
    hub = parser.add_argument_group("upload")
    hub.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the folder as this Hub dataset repository")
    hub.add_argument("--private", action="store_true", help="create the dataset repository private")
    hub.add_argument("--token", help="Hub token (default: the one saved by `hf auth login`)")
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from .dataset_export import export_dataset, push_dataset

    summary = export_dataset(
        args.captions,
        args.folder,
        embed_audio=args.embed_audio,
        shard_rows=args.shard_rows,
        overwrite=args.overwrite,
        model=args.model,
        revision=args.revision,
        generation=dict(args.generation),
        command=args.caption_command,
    )
    print(
        f"blap export: {summary.rows} tracks in {summary.shards} Parquet shard(s) written to {summary.folder};"
        f" {summary.failed} failed input(s) left out"
    )
    if args.push_to_hub:
        print(push_dataset(summary.folder, args.push_to_hub, private=args.private, token=args.token))
    return 0


# -------------------------------------------------------------------------------------------------------- index


def add_index_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "index",
        help="embed every window of a music library with a stage-1 model into a text-searchable index",
        description=(
            "Embed every window (the model's, 10 s for BLAP) of audio files, folders or lists of paths once with a"
            " stage-1 BLAP model and store the vectors (faiss) with their track and timestamps, for `blap search`."
            " Inputs that cannot be read are listed and left out; the exit status is 1 if any failed."
        ),
    )
    parser.add_argument("inputs", nargs="+", help="audio files, folders, or .txt files listing paths")
    parser.add_argument("--model", required=True, help="a saved stage-1 BLAP folder or Hub repository id")
    parser.add_argument("--output", required=True, help="the index folder to write")
    parser.add_argument("--hop-s", type=float, help="distance between window starts in seconds (default: the window)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="windows per model call (default 16)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: a GPU if there is one, else CPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(handler=run_index)


def run_index(args: argparse.Namespace) -> int:
    import torch

    from .captioning import expand_inputs
    from .modeling_blap import BlapForRepresentationLearning
    from .processing_blap import BlapStage1Processor
    from .search import AudioSearchIndex

    inputs = expand_inputs(args.inputs)
    if not inputs:
        print(f"blap index: no audio files found in {' '.join(args.inputs)}", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = BlapForRepresentationLearning.from_pretrained(args.model).to(device).eval()
    processor = BlapStage1Processor.from_pretrained(args.model)
    index = AudioSearchIndex.build(
        model, processor, inputs, hop_s=args.hop_s, batch_size=args.batch_size, progress=not args.no_progress
    )
    index.save(args.output)
    failures = index.metadata["failures"]
    for path, error in failures.items():
        print(f"blap index: failed: {path}: {error}", file=sys.stderr)
    print(
        f"blap index: {len(index.tracks)} tracks, {len(index.window_tracks)} windows indexed in {args.output};"
        f" {len(failures)} failed"
    )
    return 1 if failures else 0


# ------------------------------------------------------------------------------------------------------- search


def add_search_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search",
        help="find the tracks of a `blap index` that best match a description",
        description=(
            "Print the k tracks of an index that best match a text, best first: score (cosine similarity), the"
            " best-matching window's start and end in seconds, and the path. --json prints one JSON object per line."
        ),
    )
    parser.add_argument("index", help="a folder written by `blap index`")
    parser.add_argument("query", help='what to look for, e.g. "calm solo piano"')
    parser.add_argument("-k", type=positive_int, default=10, help="how many tracks (default 10)")
    parser.add_argument("--model", help="the stage-1 model for the text (default: the one that built the index)")
    parser.add_argument("--json", action="store_true", help="JSON Lines output")
    parser.set_defaults(handler=run_search)


def run_search(args: argparse.Namespace) -> int:
    from .search import AudioSearchIndex

    index = AudioSearchIndex.load(args.index)
    if args.model:
        index.metadata["model"] = args.model
    for hit in index.search(args.query, k=args.k):
        if args.json:
            print(json.dumps({"path": hit.path, "start": hit.start, "end": hit.end, "score": hit.score}))
        else:
            print(f"{hit.score:.4f}  {hit.start:8.2f}-{hit.end:<8.2f}  {shlex.quote(hit.path)}")
    return 0


__all__ = ["add_export_command", "add_index_command", "add_search_command"]
