"""
`blap export`, `blap index`, `blap index-ray` and `blap search`: from a captioned music library to a dataset, and a
text search over it; and the dataset input and Ray pool shared with `blap caption` and `blap caption-ray`.

The handlers (`argparse.Namespace -> int` exit status) of the parsers in `blap_cli.commands`; they import the heavy
modules (`datasets`, faiss, the model) themselves.
"""

import argparse
import json
import shlex
import sys

# ------------------------------------------------------------------------------------- dataset input, Ray pool


def load_dataset_argument(args: argparse.Namespace):
    """
    The split named by the dataset-input options (`blap_cli.commands.add_dataset_arguments`); a dataset that cannot
    be loaded is one error line.
    """
    from .captioning import load_caption_dataset

    try:
        return load_caption_dataset(
            args.dataset, config=args.config, split=args.split, streaming=getattr(args, "streaming", False)
        )
    except (KeyboardInterrupt, ImportError):
        raise
    except Exception as error:  # a missing folder, an unknown split or Hub id, ...: one line naming the dataset
        raise ValueError(f"cannot load the dataset {args.dataset}: {type(error).__name__}: {error}") from error


def command_inputs(args: argparse.Namespace) -> dict | None:
    """
    What a command's `inputs` / dataset-input options name: `{"inputs": [audio files]}`, or `{"inputs": None,
    "dataset": ..., "audio_column": ..., "id_column": ...}`; `None` when the inputs name no audio file (printed; the
    command then exits with status 2).
    """
    from .captioning import expand_inputs

    if bool(args.inputs) == (args.dataset is not None):
        raise ValueError("give audio files/folders or --dataset NAME_OR_PATH, not both and not neither.")
    if args.dataset is not None:
        return {
            "inputs": None,
            "dataset": load_dataset_argument(args),
            "audio_column": args.audio_column,
            "id_column": args.id_column,
        }
    inputs = expand_inputs(args.inputs)
    if not inputs:
        print(f"blap {args.command}: no audio files found in {' '.join(args.inputs)}", file=sys.stderr)
        return None
    return {"inputs": inputs}


def ray_job_inputs(args: argparse.Namespace) -> dict | None:
    """
    Start or join Ray, and the inputs of a Ray job ([`command_inputs`], the keyword arguments `inputs` and `dataset`
    with its columns of the `ray_jobs` functions), or `None` when the inputs name no audio file.
    """
    try:
        import ray
    except ImportError:
        raise ImportError(f"blap {args.command} needs Ray: pip install 'transformers_blap[ray]'.") from None
    job_inputs = command_inputs(args)
    if job_inputs is not None and not ray.is_initialized():
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
    "load_dataset_argument",
    "ray_job_inputs",
    "ray_pool_options",
    "run_export",
    "run_index",
    "run_index_ray",
    "run_search",
]
