"""
Batch captioning to JSON Lines (the engine of `blap caption`): resumable, failure-tolerant, shardable.

One line per input, written (and flushed to disk) as soon as the input is done:

```json
{"path": "music/a.mp3", "caption": "...", "windows": [{"start": 0.0, "end": 10.0, "caption": "..."}],
 "duration": 31.2, "error": null}
```

An input that cannot be decoded or captioned gets a line with `"caption": null` and the `error`, and the run goes on.
A rerun skips every input that already has a caption in the output (and retries the failed ones), so an interrupted
run loses only the inputs that were in flight. Under `torchrun` / `accelerate launch` (`WORLD_SIZE` > 1) every process
captions `inputs[rank::world_size]` into its own part file, `OUTPUT.part-RANK-of-WORLD`; after all of them are done,
rank 0 merges the parts into OUTPUT in input order and removes them.
"""

import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from tqdm.auto import tqdm
from transformers.pipelines.base import pad_collate_fn

from .pipeline_audio_to_text import AudioToTextPipeline

AUDIO_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".aif", ".aiff", ".aifc", ".wma"}
    | {".webm", ".mka", ".caf", ".au", ".w64", ".mp2", ".ac3"}
)
"""Extensions collected from folders (case-insensitive)."""
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list", ".m3u", ".m3u8"})
"""An input file with one of these extensions is a list of paths, one per line (`#` starts a comment)."""
# Processes may finish hours apart; rank 0 waits that long for the others before merging.
MERGE_BARRIER_TIMEOUT = timedelta(days=7)


# ------------------------------------------------------------------------------------------------------- inputs


def _folder_audio_files(folder: Path) -> list[str]:
    files = [path for path in folder.rglob("*") if path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file()]
    return [str(path) for path in sorted(files)]


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """
    The audio files named by command-line inputs, in a deterministic order without duplicates.

    - a folder: its audio files (by extension, recursively, sorted by path);
    - a `.txt` / `.lst` / `.list` / `.m3u` file: the paths listed in it, one per line (blank lines and lines starting
      with `#` are skipped; relative paths are relative to the list's folder; listed folders are expanded);
    - anything else: itself, whatever its extension (a missing or unreadable file gets an error line later).

    Args:
        inputs (`Iterable[str | os.PathLike]`): paths as given on the command line.

    Returns:
        `list[str]`: the audio paths.
    """
    expanded: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            expanded += _folder_audio_files(path)
        elif path.suffix.lower() in LIST_EXTENSIONS and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                entry = line.strip()
                if not entry or entry.startswith("#"):
                    continue
                listed = Path(entry) if Path(entry).is_absolute() else path.parent / entry
                expanded += _folder_audio_files(listed) if listed.is_dir() else [str(listed)]
        else:
            expanded.append(str(path))
    return list(dict.fromkeys(os.path.normpath(entry) for entry in expanded))


# ------------------------------------------------------------------------------------------------------ records


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """
    The complete records of a JSON Lines output; a line that is not a JSON object with a `path` (e.g. cut short by
    a crash) is skipped.
    """
    records = []
    if not os.path.exists(path):
        return records
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("path"), str):
                records.append(record)
    return records


def _has_caption(record: dict[str, Any]) -> bool:
    return isinstance(record.get("caption"), str) and record.get("error") is None


def _write_records_atomically(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace `path` with `records` so that a crash leaves either the old or the new file, never a mix."""
    tmp_path = path.with_name(path.name + ".tmp")
    with open(tmp_path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp_path, path)


def _prepare_output(path: Path, retry: set[str]) -> None:
    """Drop unreadable lines and the error records of inputs about to be retried (`retry`) from `path`."""
    if not path.exists():
        return
    records = read_records(path)
    _write_records_atomically(path, [r for r in records if _has_caption(r) or r["path"] not in retry])


def part_path(output: str | os.PathLike, rank: int, world_size: int) -> Path:
    """Where process `rank` of `world_size` writes its records."""
    return Path(f"{os.fspath(output)}.part-{rank}-of-{world_size}")


def _part_files(output: Path) -> list[Path]:
    pattern = re.compile(re.escape(output.name) + r"\.part-\d+-of-\d+")
    return sorted(path for path in output.parent.glob(f"{output.name}.part-*") if pattern.fullmatch(path.name))


def captioned_paths(output: str | os.PathLike) -> set[str]:
    """Inputs that already have a caption in `output` or in any of its part files."""
    output = Path(output)
    return {
        record["path"]
        for source in [output, *_part_files(output)]
        for record in read_records(source)
        if _has_caption(record)
    }


def merge_parts(output: str | os.PathLike, inputs: Sequence[str]) -> list[dict[str, Any]]:
    """
    Fold the part files of `output` into it and remove them: one record per input, in the order of `inputs` (a
    caption wins over an error, a later record over an earlier one), after the records of other inputs already there.

    Returns:
        `list[dict]`: the records of `inputs` (inputs without any record are left out).
    """
    output = Path(output)
    parts = _part_files(output)
    latest: dict[str, dict[str, Any]] = {}
    for source in [output, *parts]:
        for record in read_records(source):
            previous = latest.get(record["path"])
            if previous is None or _has_caption(record) or not _has_caption(previous):
                latest[record["path"]] = record
    wanted = set(inputs)
    others = [record for path, record in latest.items() if path not in wanted]
    ours = [latest[path] for path in inputs if path in latest]
    _write_records_atomically(output, others + ours)
    for part in parts:
        part.unlink()
    return ours


# ------------------------------------------------------------------------------------------------------- engine


@dataclass
class CaptionSummary:
    """What a `caption_files` call did (for this process)."""

    captioned: int = 0
    failed: int = 0
    skipped: int = 0
    errors: dict[str, str] = field(default_factory=dict)


@dataclass(eq=False)  # identity: tracks are dict keys
class _Track:
    path: str
    queued: int = 0
    outputs: list[dict[str, Any]] = field(default_factory=list)
    decoded: bool = False
    failed: bool = False


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class _Writer:
    """Appends one JSON line per finished input and makes it durable before going on."""

    def __init__(self, handle: TextIO, summary: CaptionSummary, progress: tqdm):
        self.handle = handle
        self.summary = summary
        self.progress = progress

    def write(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.handle.flush()
        os.fsync(self.handle.fileno())
        if record["error"] is None:
            self.summary.captioned += 1
        else:
            self.summary.failed += 1
            self.summary.errors[record["path"]] = record["error"]
        self.progress.update(1)

    def success(self, track: _Track, result: dict[str, Any]) -> None:
        windows = result["windows"]
        self.write(
            {
                "path": track.path,
                "caption": result["generated_text"],
                "windows": windows,
                "duration": windows[-1]["end"],
                "error": None,
            }
        )

    def failure(self, track: _Track, error: BaseException) -> None:
        track.failed = True
        self.write({"path": track.path, "caption": None, "windows": [], "duration": None, "error": _error_text(error)})


def caption_files(
    pipe: AudioToTextPipeline,
    paths: Sequence[str],
    output: str | os.PathLike,
    *,
    batch_size: int = 8,
    skip: set[str] | None = None,
    progress: bool = True,
    progress_description: str | None = None,
    **pipeline_kwargs,
) -> CaptionSummary:
    """
    Caption `paths` and append one JSON line per input to `output` as soon as the input is done.

    Windows of consecutive inputs share `generate` batches (`batch_size` windows each); an input is written when its
    last window is captioned. A decoding or captioning error becomes that input's error line; other inputs go on.

    Args:
        pipe ([`AudioToTextPipeline`]): the captioner.
        paths (`Sequence[str]`): the audio files, in order.
        output (`str` or `os.PathLike`): the JSON Lines file to append to.
        batch_size (`int`, *optional*, defaults to 8): windows per `generate` call.
        skip (`set[str]`, *optional*): paths that are done already (not captioned, not counted as failed).
        progress (`bool`, *optional*, defaults to `True`): show a progress bar with ETA on stderr.
        progress_description (`str`, *optional*): the progress bar's label.
        pipeline_kwargs: call options of the pipeline (`prompt`, `window_s`, `hop_s`, `min_tail_s`, generation
            options such as `num_beams`, `max_new_tokens`).

    Returns:
        [`CaptionSummary`].
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be at least 1, got {batch_size}.")
    skip = skip or set()
    summary = CaptionSummary(skipped=sum(path in skip for path in paths))
    pending = [_Track(path) for path in paths if path not in skip]
    preprocess_params, forward_params, postprocess_params = pipe._sanitize_parameters(**pipeline_kwargs)
    preprocess_params = {**pipe._preprocess_params, **preprocess_params}
    pipe.window_settings(*(preprocess_params.get(name) for name in ("window_s", "hop_s", "min_tail_s")))
    forward_params = {**pipe._forward_params, **forward_params}
    postprocess_params = {**pipe._postprocess_params, **postprocess_params}
    collate = pad_collate_fn(pipe.tokenizer, pipe.feature_extractor)

    bar = tqdm(total=len(pending), unit="file", desc=progress_description, file=sys.stderr, disable=not progress)
    with open(output, "a", encoding="utf-8") as handle, bar:
        writer = _Writer(handle, summary, bar)

        def finish_if_done(track: _Track) -> None:
            if track.failed or not track.decoded or len(track.outputs) < track.queued:
                return
            try:
                result = pipe.postprocess(track.outputs, **postprocess_params)[0]
            except Exception as error:  # a batch job records the failure and goes on
                writer.failure(track, error)
                return
            writer.success(track, result)

        def run_batch(entries: list[tuple[_Track, dict[str, Any]]]) -> None:
            entries = [(track, item) for track, item in entries if not track.failed]
            if not entries:
                return
            try:
                batch = collate([item for _, item in entries])
                outputs = pipe.forward(batch, **forward_params)
            except Exception as error:
                for track in dict.fromkeys(track for track, _ in entries):
                    writer.failure(track, error)
                return
            for index, (track, _) in enumerate(entries):
                if not track.failed:
                    track.outputs.append(_batch_element(outputs, index))
            for track in dict.fromkeys(track for track, _ in entries):
                finish_if_done(track)

        queue: list[tuple[_Track, dict[str, Any]]] = []
        for track in pending:
            try:
                for item in pipe.preprocess(track.path, **preprocess_params):
                    queue.append((track, item))
                    track.queued += 1
                    if len(queue) >= batch_size:
                        run_batch(queue)
                        queue = []
                    if track.failed:  # its batch failed: stop decoding it
                        break
            except Exception as error:
                writer.failure(track, error)
                continue
            track.decoded = True
            finish_if_done(track)
        run_batch(queue)
    return summary


def _batch_element(outputs: dict[str, Any], index: int) -> dict[str, Any]:
    """Element `index` of a batched `_forward` output, shaped like an unbatched one."""
    return {
        key: value[index : index + 1] if hasattr(value, "shape") else value[index] for key, value in outputs.items()
    }


# -------------------------------------------------------------------------------------------------- distributed


def distributed_rank_and_size() -> tuple[int, int]:
    """`(RANK, WORLD_SIZE)` as set by `torchrun` / `accelerate launch`; `(0, 1)` when run alone."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as error:
        raise ValueError(f"RANK and WORLD_SIZE must be integers: {error}") from error
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"Invalid RANK={rank} / WORLD_SIZE={world_size}.")
    return rank, world_size


def _wait_for_all_processes() -> None:
    """A barrier across the `torchrun` / `accelerate launch` processes (gloo: works with or without GPUs)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
        if missing:
            raise RuntimeError(
                f"WORLD_SIZE > 1 but {', '.join(missing)} is not set: launch with torchrun or accelerate launch."
            )
        dist.init_process_group("gloo", timeout=MERGE_BARRIER_TIMEOUT)
    dist.barrier()
    dist.destroy_process_group()


def caption_to_jsonl(
    pipe: AudioToTextPipeline,
    inputs: Sequence[str],
    output: str | os.PathLike,
    *,
    batch_size: int = 8,
    progress: bool = True,
    **pipeline_kwargs,
) -> CaptionSummary:
    """
    Caption audio files into a JSON Lines file, resuming a previous run and sharding across `torchrun` /
    `accelerate launch` processes (see the module docstring for the file format and the rules).

    Args:
        pipe ([`AudioToTextPipeline`]): the captioner (on this process's device).
        inputs (`Sequence[str]`): the audio paths (see [`expand_inputs`]); every process must get the same list.
        output (`str` or `os.PathLike`): the JSON Lines file.
        batch_size (`int`, *optional*, defaults to 8): windows per `generate` call.
        progress (`bool`, *optional*, defaults to `True`): progress bar with ETA on stderr.
        pipeline_kwargs: pipeline call options (prompt, window and generation options).

    Returns:
        [`CaptionSummary`]: for a single process, or rank 0 after the merge, the counts of the whole run (`failed` =
        inputs whose record is an error); for other ranks, their own shard's.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    rank, world_size = distributed_rank_and_size()
    done = captioned_paths(output)
    if world_size == 1:
        if _part_files(output):  # a previous sharded run stopped before its merge
            merge_parts(output, inputs)
        _prepare_output(output, retry=set(inputs) - done)
        return caption_files(
            pipe, inputs, output, batch_size=batch_size, skip=done, progress=progress, **pipeline_kwargs
        )

    shard = list(inputs[rank::world_size])
    part = part_path(output, rank, world_size)
    _prepare_output(part, retry=set(shard) - done)
    summary = caption_files(
        pipe,
        shard,
        part,
        batch_size=batch_size,
        skip=done,
        progress=progress,
        progress_description=f"rank {rank}/{world_size}",
        **pipeline_kwargs,
    )
    _wait_for_all_processes()
    if rank != 0:
        return summary
    records = merge_parts(output, inputs)
    errors = {record["path"]: record["error"] for record in records if not _has_caption(record)}
    return CaptionSummary(captioned=len(records) - len(errors), failed=len(errors), errors=errors)


__all__ = [
    "AUDIO_EXTENSIONS",
    "CaptionSummary",
    "caption_files",
    "caption_to_jsonl",
    "captioned_paths",
    "expand_inputs",
    "merge_parts",
    "read_records",
]
