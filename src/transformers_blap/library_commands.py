"""
`blap export`, `blap index` and `blap search`: from a captioned music library to a dataset, and a text search over it.

The handlers (`argparse.Namespace -> int` exit status) of the parsers in `blap_cli.commands`; they import the heavy
modules (`datasets`, faiss, the model) themselves.
"""

import argparse
import json
import shlex
import sys

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
    failures = index.metadata["failures"]
    for path, error in failures.items():
        print(f"blap index: failed: {path}: {error}", file=sys.stderr)
    print(
        f"blap index: {len(index.tracks)} tracks, {len(index.window_tracks)} windows indexed in {args.output};"
        f" {len(failures)} failed"
    )
    return 1 if failures else 0


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


__all__ = ["run_export", "run_index", "run_search"]
