"""
`blap export`, `blap index`, `blap index-ray` and `blap search`: from a captioned music library to a dataset, and a
text search over it; and the dataset-input and Ray-pool options shared with `blap caption` and `blap caption-ray`.

Each `add_<name>_command(subparsers)` declares a subcommand for `cli.COMMANDS`; the handlers import the heavy modules
(`datasets`, faiss, Ray, the model) themselves, so `blap --help` stays light.
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


# ------------------------------------------------------------------------------------- dataset input, Ray pool


def add_dataset_arguments(parser: argparse.ArgumentParser, description: str, streaming: bool = False) -> None:
    """`--dataset`, `--config`, `--split`, `--audio-column`, `--id-column` (and `--streaming`) in one group."""
    source = parser.add_argument_group("dataset input", description)
    source.add_argument(
        "--dataset",
        help="a Hub dataset id, a folder (save_to_disk, Parquet shards, audiofolder) or a .parquet/.arrow/.csv/.json"
        " file",
    )
    source.add_argument("--config", help="the dataset's configuration (subset)")
    source.add_argument("--split", default="train", help="the split to read (default train)")
    source.add_argument("--audio-column", default="audio", help="the column holding the audio (default audio)")
    source.add_argument(
        "--id-column", help="a column of unique row ids, each record's identity (default: the row's index)"
    )
    if streaming:
        source.add_argument("--streaming", action="store_true", help="read rows as they are needed (large datasets)")


def load_dataset_argument(args: argparse.Namespace):
    """The split named by [`add_dataset_arguments`]' options; a dataset that cannot be loaded is one error line."""
    from .captioning import load_caption_dataset

    try:
        return load_caption_dataset(
            args.dataset, config=args.config, split=args.split, streaming=getattr(args, "streaming", False)
        )
    except (KeyboardInterrupt, ImportError):
        raise
    except Exception as error:  # a missing folder, an unknown split or Hub id, ...: one line naming the dataset
        raise ValueError(f"cannot load the dataset {args.dataset}: {type(error).__name__}: {error}") from error


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """The actor-pool options of `blap caption-ray` and `blap index-ray`."""
    parser.add_argument("--num-actors", type=positive_int, default=1, help="actors (models) in the pool (default 1)")
    parser.add_argument(
        "--files-per-task",
        type=positive_int,
        default=8,
        help="files or dataset rows per Ray task, the unit of retry (default 8)",
    )
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs reserved per actor (default 1)")
    parser.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per actor; > 0 runs on CUDA")


def ray_job_inputs(args: argparse.Namespace) -> dict | None:
    """
    Start or join Ray, and the inputs of a Ray job from its `inputs` / [`add_dataset_arguments`] options: the keyword
    arguments `inputs` and `dataset` (with its columns) of the `ray_jobs` functions, or `None` when the inputs name no
    audio file (the command then prints so and exits with status 2).
    """
    try:
        import ray
    except ImportError:
        raise ImportError(f"blap {args.command} needs Ray: pip install 'transformers_blap[ray]'.") from None
    from .captioning import expand_inputs

    if bool(args.inputs) == (args.dataset is not None):
        raise ValueError("give audio files/folders or --dataset NAME_OR_PATH, not both and not neither.")
    if args.dataset is None:
        inputs = expand_inputs(args.inputs)
        if not inputs:
            print(f"blap {args.command}: no audio files found in {' '.join(args.inputs)}", file=sys.stderr)
            return None
        job_inputs = {"inputs": inputs}
    else:
        job_inputs = {
            "inputs": None,
            "dataset": load_dataset_argument(args),
            "audio_column": args.audio_column,
            "id_column": args.id_column,
        }
    if not ray.is_initialized():
        ray.init()  # the cluster of RAY_ADDRESS, else a local one
    return job_inputs


def ray_pool_options(args: argparse.Namespace) -> dict:
    """The `ray_jobs` keyword arguments set by [`add_ray_arguments`]' options."""
    return {
        "num_actors": args.num_actors,
        "files_per_task": args.files_per_task,
        "cpus_per_actor": args.cpus_per_actor,
        "gpus_per_actor": args.gpus_per_actor,
    }


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
    return _report_index(args, index)


def _report_index(args: argparse.Namespace, index) -> int:
    """Print an index's failures and counts; the exit status: 1 if any input failed."""
    failures = index.metadata["failures"]
    for path, error in failures.items():
        print(f"blap {args.command}: failed: {path}: {error}", file=sys.stderr)
    print(
        f"blap {args.command}: {len(index.tracks)} tracks, {len(index.window_tracks)} windows indexed in"
        f" {args.output}; {len(failures)} failed"
    )
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------------------- index-ray


def add_index_ray_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "index-ray",
        help="`blap index` on a Ray cluster (Ray Data, one model per actor), from files or a dataset",
        description=(
            "Embed every window of audio files, folders or lists of paths, or of a dataset's audio column, on Ray"
            " Data: a pool of actors, one stage-1 model each, embeds batches of inputs; the embeddings are written as"
            " Parquet files into --output/embeddings/ and assembled into the same search index `blap index` writes"
            " (for `blap search`). Joins the cluster named by RAY_ADDRESS, else starts a local Ray. A killed actor is"
            " restarted and its inputs retried. The exit status is 1 if any input failed."
        ),
    )
    parser.add_argument("inputs", nargs="*", help="audio files, folders, or .txt files listing paths")
    parser.add_argument("--model", required=True, help="a saved stage-1 BLAP folder (readable everywhere) or Hub id")
    parser.add_argument("--output", required=True, help="a new or empty folder for the index")
    parser.add_argument("--hop-s", type=float, help="distance between window starts in seconds (default: the window)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="windows per model call (default 16)")
    add_ray_arguments(parser)
    add_dataset_arguments(parser, "Index a split of a `datasets` dataset instead of files (a row's track is its id).")
    parser.set_defaults(handler=run_index_ray)


def run_index_ray(args: argparse.Namespace) -> int:
    job_inputs = ray_job_inputs(args)
    if job_inputs is None:
        return 2
    from .ray_jobs import index_with_ray

    index = index_with_ray(
        model=args.model,
        output=args.output,
        hop_s=args.hop_s,
        batch_size=args.batch_size,
        **job_inputs,
        **ray_pool_options(args),
    )
    return _report_index(args, index)


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


__all__ = [
    "add_dataset_arguments",
    "add_export_command",
    "add_index_command",
    "add_index_ray_command",
    "add_ray_arguments",
    "add_search_command",
    "load_dataset_argument",
    "ray_job_inputs",
    "ray_pool_options",
]
