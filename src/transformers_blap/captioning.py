"""
Batch captioning to JSON Lines (the engine of `blap caption`): resumable, failure-tolerant, shardable.

One line per input, written (and flushed to disk) as soon as the input is done:

```json
{"path": "/music/a.mp3", "caption": "...", "windows": [{"start": 0.0, "end": 10.0, "caption": "..."}],
 "duration": 31.2, "warnings": [], "error": null}
```

- **Identity.** An input is its resolved file (absolute, symlinks resolved): `path` is written that way, and a file
  named twice (relative and absolute, through a link) is captioned once. A row of a `datasets` dataset
  ([`caption_dataset`]) is its `id`: the value of the id column, or the row's index when there is none; its record
  opens with `"id"` and holds the audio's `path` in the dataset (or `null`).
- **Tags.** With a [`ZeroShotTagger`](tagging) every record also gets `"tags": [{"label", "score"}, ...]`, computed
  from the same decoded windows as the caption.
- **Failures.** An input that cannot be decoded or captioned gets a line with `"caption": null` and the `error` (one
  line naming the input and the cause), and the run goes on. `warnings` flags odd inputs that were still captioned
  (`"silent"`: see `SILENCE_PEAK_DBFS` in the audio module).
- **Resume.** A rerun skips every input that already has a caption in the output (and retries the failed ones). A
  line is written whole and flushed to disk before the next input starts; a line cut short by a crash is detected,
  dropped and its input redone (the output is a [`Journal`](journal), as `blap evaluate`'s predictions are). SIGINT
  and SIGTERM drop the batch in flight (never a line being written) and raise [`CaptionInterrupted`].
- **Overlap.** A background thread decodes, resamples and windows the next inputs while the model captions.
- **Sharding.** Under `torchrun` / `accelerate launch` (`WORLD_SIZE` > 1, joined through accelerate's `PartialState`)
  every process captions `inputs[rank::world_size]` into its own part file, `OUTPUT.part-RANK-of-WORLD`; when all of
  them are done, rank 0 merges the parts into OUTPUT in input order and removes them, and only then does any process
  return, each with the whole run's failure count.
"""

import os
import queue
import re
import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers.pipelines.base import pad_collate_fn

from .journal import Journal, error_text, latest_per_key
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

    Every path is resolved (absolute, symlinks resolved): that is an input's identity in the output.

    Args:
        inputs (`Iterable[str | os.PathLike]`): paths as given on the command line.

    Returns:
        `list[str]`: the resolved audio paths.
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
    return list(dict.fromkeys(os.path.realpath(entry) for entry in expanded))


# ------------------------------------------------------------------------------------------------------ records


def _is_caption_record(record: dict[str, Any]) -> bool:
    return "id" in record or isinstance(record.get("path"), str)


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """
    The complete records of a JSON Lines output; a line that is not a JSON object with a `path` or an `id` (e.g. cut
    short by a crash) is skipped.
    """
    return Journal(path, _is_caption_record).records()


def record_key(record: dict[str, Any]) -> str:
    """
    The input a record is about: its `id` as text for a dataset row, else its `path` (records written by this module
    hold resolved paths already; older ones may hold relative paths, resolved here against the working directory).
    """
    if "id" in record:
        return str(record["id"])
    path = record["path"]
    return path if os.path.isabs(path) else os.path.realpath(path)


def _has_caption(record: dict[str, Any]) -> bool:
    return isinstance(record.get("caption"), str) and record.get("error") is None


def _prepare_output(path: Path, retry: set[str]) -> None:
    """Drop unreadable lines and the error records of inputs about to be retried (`retry`) from `path`."""
    Journal(path, _is_caption_record).resume(
        keep=lambda record: _has_caption(record) or record_key(record) not in retry
    )


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
        record_key(record)
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
    records = (record for source in [output, *parts] for record in read_records(source))
    latest = latest_per_key(records, record_key, settled=_has_caption)
    wanted = set(inputs)
    others = [record for path, record in latest.items() if path not in wanted]
    ours = [latest[path] for path in inputs if path in latest]
    Journal(output).rewrite(others + ours)
    for part in parts:
        part.unlink()
    return ours


# ------------------------------------------------------------------------------------------------------- engine


@dataclass
class CaptionSummary:
    """What a `caption_files` / `caption_to_jsonl` call did."""

    captioned: int = 0
    failed: int = 0
    skipped: int = 0
    errors: dict[str, str] = field(default_factory=dict)


class CaptionInterrupted(KeyboardInterrupt):
    """
    SIGINT or SIGTERM stopped a captioning run. Every line written so far is complete; rerunning the same command
    continues from there.

    Args:
        signum (`int`): the signal (`signal.SIGINT` or `signal.SIGTERM`).
        done (`int`): inputs of this process with a line in the output (including those skipped as done before).
        total (`int` or `None`): inputs of this process (`None`: not known, for a streamed dataset).
    """

    def __init__(self, signum: int, done: int, total: int | None):
        of = "" if total is None else f" of {total}"
        super().__init__(f"interrupted after {done}{of}; rerun the same command to continue")
        self.signum = signum
        self.done = done
        self.total = total

    @property
    def exit_status(self) -> int:
        """The shell's status for death by this signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


class _Signalled(KeyboardInterrupt):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _SignalGuard:
    """
    Turns SIGINT / SIGTERM into an exception in the main thread, but never while a record is being written: a signal
    that arrives then is raised right after the line is complete.
    """

    def __init__(self):
        self._writing = False
        self._deferred: int | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self._writing:
            self._deferred = signum
        else:
            raise _Signalled(signum)

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():  # only the main thread can take signals
            yield
            return
        previous = {signum: signal.signal(signum, self._handle) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    @contextmanager
    def writing(self) -> Iterator[None]:
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
        if self._deferred is not None:
            raise _Signalled(self._deferred)


@dataclass(eq=False)  # identity: tracks are dict keys
class _Track:
    key: str  # the input's identity in the output (see `record_key`)
    source: Any  # what the pipeline decodes: a path, or a dataset's audio value
    head: dict[str, Any]  # the record's identity fields: {"path"} for a file, {"id", "path"} for a dataset row
    queued: int = 0
    outputs: list[dict[str, Any]] = field(default_factory=list)
    tag_scores: list[Any] = field(default_factory=list)  # per batch: (windows, labels) similarities
    decoded: bool = False
    failed: bool = False

    @classmethod
    def of_file(cls, path: str) -> "_Track":
        return cls(path, path, {"path": path})


class _Writer:
    """Appends one JSON line per finished input to the journal (durable before going on) and counts it."""

    def __init__(
        self, journal: Journal, summary: CaptionSummary, progress: tqdm, guard: _SignalGuard, tagger: Any = None
    ):
        self.journal = journal
        self.summary = summary
        self.progress = progress
        self.guard = guard
        self.tagger = tagger

    def write(self, key: str, record: dict[str, Any]) -> None:
        with self.guard.writing():
            self.journal.append(record)
            if record["error"] is None:
                self.summary.captioned += 1
            else:
                self.summary.failed += 1
                self.summary.errors[key] = record["error"]
        self.progress.update(1)

    def success(self, track: _Track, result: dict[str, Any]) -> None:
        windows = result["windows"]
        record = {
            **track.head,
            "caption": result["generated_text"],
            "windows": windows,
            "duration": windows[-1]["end"],
        }
        if self.tagger is not None:
            record["tags"] = self.tagger.track_tags(track.tag_scores)
        self.write(track.key, {**record, "warnings": result["warnings"], "error": None})

    def failure(self, track: _Track, error: BaseException) -> None:
        if track.failed:  # recorded already (its batch failed, then its decoding too)
            return
        track.failed = True
        record = {**track.head, "caption": None, "windows": [], "duration": None}
        if self.tagger is not None:
            record["tags"] = []
        self.write(track.key, {**record, "warnings": [], "error": error_text(error)})


_PREFETCH_JOIN_S = 5.0  # the longest an ending run waits for the decoding thread (a daemon: it cannot hold the exit)
_TRACK_DONE = object()  # a track's windows are all queued
_ALL_DONE = object()  # every track is decoded


class _Prefetcher:
    """
    Decodes, resamples and windows the tracks (`pipe.preprocess`) in a background thread, a bounded queue ahead of
    the model; a lazy `tracks` (rows of a streamed dataset) is read in that thread too. Yields `(track, window
    item)`, `(track, exception)` for a track that failed to decode, and `(track, _TRACK_DONE)` after a track's last
    window; a track marked failed is not decoded further.
    """

    def __init__(self, pipe: AudioToTextPipeline, tracks: Iterable[_Track], preprocess_params: dict, depth: int):
        self._pipe = pipe
        self._tracks = tracks
        self._params = preprocess_params
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="blap-caption-prefetch", daemon=True)

    def __enter__(self) -> "_Prefetcher":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()  # the producer stops at its next queue operation (within 0.1 s of its current decode)
        with suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._thread.join(timeout=_PREFETCH_JOIN_S)

    def __iter__(self) -> Iterator[tuple[_Track | None, Any]]:
        while True:
            track, entry = self._queue.get()
            if entry is _ALL_DONE:
                return
            if track is None:  # the producer itself broke
                raise entry
            yield track, entry

    def _put(self, entry: tuple[_Track | None, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for track in self._tracks:
                try:
                    for item in self._pipe.preprocess(track.source, **self._params):
                        if not self._put((track, item)):
                            return
                        if track.failed:  # its batch failed: stop decoding it
                            break
                except Exception as error:  # a batch job records the failure and goes on
                    if not self._put((track, error)):
                        return
                    continue
                if not self._put((track, _TRACK_DONE)):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the main thread, which raises it
            self._put((None, error))
            return
        self._put((None, _ALL_DONE))


def caption_files(
    pipe: AudioToTextPipeline,
    paths: Sequence[str],
    output: str | os.PathLike,
    *,
    batch_size: int = 8,
    skip: set[str] | None = None,
    progress: bool = True,
    progress_description: str | None = None,
    tagger: Any = None,
    **pipeline_kwargs,
) -> CaptionSummary:
    """
    Caption `paths` and append one JSON line per input to `output` as soon as the input is done.

    Windows of consecutive inputs share `generate` batches (`batch_size` windows each); an input is written when its
    last window is captioned. A background thread decodes the next inputs while the model works. A decoding or
    captioning error becomes that input's error line; other inputs go on.

    Args:
        pipe ([`AudioToTextPipeline`]): the captioner.
        paths (`Sequence[str]`): the audio files, in order.
        output (`str` or `os.PathLike`): the JSON Lines file to append to.
        batch_size (`int`, *optional*, defaults to 8): windows per `generate` call.
        skip (`set[str]`, *optional*): paths that are done already (not captioned, not counted as failed).
        progress (`bool`, *optional*, defaults to `True`): show a progress bar with ETA on stderr.
        progress_description (`str`, *optional*): the progress bar's label.
        tagger ([`ZeroShotTagger`], *optional*): adds zero-shot `tags` to every record, from the same windows.
        pipeline_kwargs: call options of the pipeline (`prompt`, `window_s`, `hop_s`, `min_tail_s`, generation
            options such as `num_beams`, `max_new_tokens`).

    Returns:
        [`CaptionSummary`].

    Raises:
        [`CaptionInterrupted`]: on SIGINT or SIGTERM (when called from the main thread), after the line being written,
            if any, is complete; the batch in flight is dropped.
    """
    skip = skip or set()
    summary = CaptionSummary(skipped=sum(path in skip for path in paths))
    pending = [_Track.of_file(path) for path in paths if path not in skip]
    return _caption_tracks(
        pipe,
        pending,
        output,
        summary,
        total=len(pending),
        batch_size=batch_size,
        progress=progress,
        progress_description=progress_description,
        tagger=tagger,
        **pipeline_kwargs,
    )


def _caption_tracks(
    pipe: AudioToTextPipeline,
    tracks: Iterable[_Track],
    output: str | os.PathLike,
    summary: CaptionSummary,
    *,
    total: int | None,
    batch_size: int,
    progress: bool,
    progress_description: str | None = None,
    tagger: Any = None,
    **pipeline_kwargs,
) -> CaptionSummary:
    """The engine of [`caption_files`] and [`caption_dataset`]: `tracks` may be a lazy iterable (read by the
    decoding thread); `summary` holds the inputs skipped so far (a lazy `tracks` may add to them) and is returned."""
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be at least 1, got {batch_size}.")
    preprocess_params, forward_params, postprocess_params = pipe.call_parameters(**pipeline_kwargs)
    pipe.window_settings(*(preprocess_params.get(name) for name in ("window_s", "hop_s", "min_tail_s")))
    pipe.prompt_tokens(preprocess_params.get("prompt"))  # tokenized here, once, not in the decoding thread
    collate = pad_collate_fn(pipe.tokenizer, pipe.feature_extractor)
    sampling_rate = pipe.feature_extractor.sampling_rate
    guard = _SignalGuard()

    bar = tqdm(total=total, unit="file", desc=progress_description, file=sys.stderr, disable=not progress)
    with guard.installed(), Journal(output) as journal, bar:
        writer = _Writer(journal, summary, bar, guard, tagger)

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
                scores = None if tagger is None else tagger.window_scores(batch["audio"], sampling_rate)
            except Exception as error:
                for track in dict.fromkeys(track for track, _ in entries):
                    writer.failure(track, error)
                return
            for index, (track, _) in enumerate(entries):
                if not track.failed:
                    track.outputs.append(_batch_element(outputs, index))
                    if scores is not None:
                        track.tag_scores.append(scores[index : index + 1])
            for track in dict.fromkeys(track for track, _ in entries):
                finish_if_done(track)

        try:
            with _Prefetcher(pipe, tracks, preprocess_params, depth=2 * batch_size) as prefetched:
                batch: list[tuple[_Track, dict[str, Any]]] = []
                for track, entry in prefetched:
                    if entry is _TRACK_DONE:
                        track.decoded = True
                        finish_if_done(track)
                    elif isinstance(entry, Exception):
                        writer.failure(track, entry)
                    elif not track.failed:
                        batch.append((track, entry))
                        track.queued += 1
                        if len(batch) >= batch_size:
                            run_batch(batch)
                            batch = []
                run_batch(batch)
        except _Signalled as interrupt:
            done = summary.captioned + summary.failed + summary.skipped
            inputs = None if total is None else summary.skipped + total
            raise CaptionInterrupted(interrupt.signum, done, inputs) from None
    return summary


def _batch_element(outputs: dict[str, Any], index: int) -> dict[str, Any]:
    """Element `index` of a batched `_forward` output, shaped like an unbatched one."""
    return {
        key: value[index : index + 1] if hasattr(value, "shape") else value[index] for key, value in outputs.items()
    }


# -------------------------------------------------------------------------------------------------- distributed


def _distributed_state(cpu: bool) -> Any:
    """
    accelerate's `PartialState` for a run under `torchrun` / `accelerate launch` (`WORLD_SIZE` > 1): it joins the
    process group (gloo for `cpu`, else the accelerator's, e.g. NCCL) with a barrier timeout long enough for shards
    that finish hours apart.
    """
    try:
        from accelerate import PartialState
    except ImportError:
        raise ImportError(
            "A sharded run (WORLD_SIZE > 1) needs accelerate: pip install 'transformers_blap[train]'."
        ) from None
    state = PartialState(cpu=cpu, timeout=MERGE_BARRIER_TIMEOUT)
    if state.num_processes != int(os.environ["WORLD_SIZE"]):
        raise RuntimeError(
            f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but accelerate joined {state.num_processes} process(es)"
            f" ({state.distributed_type}): launch with torchrun or `accelerate launch --multi_gpu`."
        )
    return state


def _merge_and_share_status(state: Any, output: Path, inputs: Sequence[str]) -> CaptionSummary:
    """
    After every shard is written: rank 0 merges the parts and tells every process how many inputs failed, so that no
    process exits (and no launcher tears the others down) before the merged output is on disk.
    """
    from accelerate.utils import broadcast_object_list

    state.wait_for_everyone()
    summary = CaptionSummary()
    status: list[Any] = [None]
    try:
        if state.is_main_process:
            records = merge_parts(output, inputs)
            errors = {record["path"]: record["error"] for record in records if not _has_caption(record)}
            summary = CaptionSummary(captioned=len(records) - len(errors), failed=len(errors), errors=errors)
            status = [summary.failed]
    finally:
        broadcast_object_list(status, from_process=0)  # None: the merge itself failed (rank 0 raises)
    if status[0] is None:
        raise RuntimeError(f"rank 0 could not merge the parts of {output}; rerun the same command to merge them.")
    if not state.is_main_process:  # rank 0 reports the failures, once
        summary = CaptionSummary(failed=status[0])
    return summary


def caption_to_jsonl(
    pipe: AudioToTextPipeline,
    inputs: Sequence[str],
    output: str | os.PathLike,
    *,
    batch_size: int = 8,
    progress: bool = True,
    tagger: Any = None,
    **pipeline_kwargs,
) -> CaptionSummary:
    """
    Caption audio files into a JSON Lines file, resuming a previous run and sharding across `torchrun` /
    `accelerate launch` processes (see the module docstring for the file format and the rules).

    Args:
        pipe ([`AudioToTextPipeline`]): the captioner (on this process's device).
        inputs (`Sequence[str]`): the resolved audio paths (see [`expand_inputs`]); every process must get the same
            list.
        output (`str` or `os.PathLike`): the JSON Lines file.
        batch_size (`int`, *optional*, defaults to 8): windows per `generate` call.
        progress (`bool`, *optional*, defaults to `True`): progress bar with ETA on stderr.
        tagger ([`ZeroShotTagger`], *optional*): adds zero-shot `tags` to every record.
        pipeline_kwargs: pipeline call options (prompt, window and generation options).

    Returns:
        [`CaptionSummary`]: for a single process, or rank 0 after the merge, the counts of the whole run (`failed` =
        inputs whose record is an error) and their errors; for other ranks, only the whole run's `failed` count (rank
        0 reports the errors).

    Raises:
        [`CaptionInterrupted`]: on SIGINT / SIGTERM (no merge then: the rerun merges).
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    sharded = int(os.environ.get("WORLD_SIZE", "1")) > 1
    state = _distributed_state(cpu=pipe.device.type == "cpu") if sharded else None
    done = captioned_paths(output)
    if state is None:
        if _part_files(output):  # a previous sharded run stopped before its merge
            merge_parts(output, inputs)
        _prepare_output(output, retry=set(inputs) - done)
        return caption_files(
            pipe, inputs, output, batch_size=batch_size, skip=done, progress=progress, tagger=tagger, **pipeline_kwargs
        )

    rank, world_size = state.process_index, state.num_processes
    shard = list(inputs[rank::world_size])
    part = part_path(output, rank, world_size)
    _prepare_output(part, retry=set(shard) - done)
    caption_files(
        pipe,
        shard,
        part,
        batch_size=batch_size,
        skip=done,
        progress=progress,
        progress_description=f"rank {rank}/{world_size}",
        tagger=tagger,
        **pipeline_kwargs,
    )
    return _merge_and_share_status(state, output, inputs)


# ------------------------------------------------------------------------------------------------------ datasets

# Local files that `load_dataset` reads with a packaged builder rather than as a dataset folder or script.
_DATA_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}


def load_caption_dataset(
    name_or_path: str, *, config: str | None = None, split: str = "train", streaming: bool = False
) -> Any:
    """
    One split of a local or Hub dataset to caption.

    Args:
        name_or_path (`str`): a folder written by `Dataset.save_to_disk`, a data file (`.parquet`, `.arrow`, `.csv`,
            `.json`, `.jsonl`), a folder `load_dataset` reads (Parquet shards, an audiofolder), or a Hub dataset id.
        config (`str`, *optional*): the dataset's configuration (subset).
        split (`str`, *optional*, defaults to `"train"`): the split.
        streaming (`bool`, *optional*, defaults to `False`): read rows as they are needed instead of downloading and
            preparing the whole split first (for large Hub datasets; a saved folder is memory-mapped anyway).

    Returns:
        `datasets.Dataset`, or `datasets.IterableDataset` when `streaming`.
    """
    import datasets

    path = Path(name_or_path)
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():  # written by `save_to_disk`
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{name_or_path} has no split {split!r}; its splits: {', '.join(loaded)}.")
            loaded = loaded[split]
        return loaded.to_iterable_dataset() if streaming else loaded
    builder = _DATA_FILE_BUILDERS.get(path.suffix.lower()) if path.is_file() else None
    if builder is not None:
        return datasets.load_dataset(builder, data_files={split: str(path)}, split=split, streaming=streaming)
    return datasets.load_dataset(name_or_path, config, split=split, streaming=streaming)


def _check_columns(dataset: Any, audio_column: str, id_column: str | None) -> None:
    columns = dataset.column_names
    if columns is None:  # a streamed dataset whose features are not known until the first row
        columns = list(next(iter(dataset.take(1)), {}))
    for role, column in (("audio", audio_column), ("id", id_column)):
        if column is not None and column not in columns:
            raise ValueError(f"the dataset has no {role} column {column!r}; its columns: {', '.join(columns)}.")


def _row_track(row: dict[str, Any], index: int, audio_column: str, id_column: str | None) -> _Track:
    audio = row[audio_column]
    row_id = index if id_column is None else row[id_column]
    if not isinstance(row_id, (str, int)):
        row_id = str(row_id)
    path = audio.get("path") if isinstance(audio, dict) else audio if isinstance(audio, str) else None
    return _Track(str(row_id), audio, {"id": row_id, "path": path})


def caption_dataset(
    pipe: AudioToTextPipeline,
    dataset: Any,
    output: str | os.PathLike,
    *,
    audio_column: str = "audio",
    id_column: str | None = None,
    batch_size: int = 8,
    progress: bool = True,
    tagger: Any = None,
    **pipeline_kwargs,
) -> CaptionSummary:
    """
    Caption the audio column of a `datasets` dataset into a JSON Lines file, with the same guarantees as files
    (resume, one error line per failed row, signals: see the module docstring), in one process.

    A row's identity is the value of `id_column`, or its index in the split when `id_column` is `None`; its record
    opens with `"id"` and the audio's `path` in the dataset (`null` for audio held as bytes without a name). A rerun
    skips the rows that have a caption in `output` and retries the failed ones. An `Audio` column is read
    undecoded (`{"bytes", "path"}`) and decoded by the pipeline's own reader; decoded values (`{"array",
    "sampling_rate"}`, decoder objects) and path strings work too.

    Args:
        pipe ([`AudioToTextPipeline`]): the captioner.
        dataset (`datasets.Dataset` or `datasets.IterableDataset`): e.g. from [`load_caption_dataset`]; an
            `IterableDataset` (streaming) is read as the captioning goes.
        output (`str` or `os.PathLike`): the JSON Lines file.
        audio_column (`str`, *optional*, defaults to `"audio"`): the column holding the audio.
        id_column (`str`, *optional*): a column of unique row ids (strings or integers).
        batch_size (`int`, *optional*, defaults to 8): windows per `generate` call.
        progress (`bool`, *optional*, defaults to `True`): progress bar with ETA on stderr.
        tagger ([`ZeroShotTagger`], *optional*): adds zero-shot `tags` to every record.
        pipeline_kwargs: pipeline call options (prompt, window and generation options).

    Returns:
        [`CaptionSummary`], with `errors` keyed by row id (as text).

    Raises:
        `ValueError`: a missing column, or an id that appears twice.
        [`CaptionInterrupted`]: on SIGINT / SIGTERM.
    """
    import datasets

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("captioning a dataset runs in one process; do not start it under torchrun/accelerate.")
    _check_columns(dataset, audio_column, id_column)
    features = dataset.features or {}
    if isinstance(features.get(audio_column), datasets.Audio):
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = captioned_paths(output)
    _prepare_output(output, retry={record_key(r) for r in read_records(output) if "id" in r} - done)

    summary = CaptionSummary()
    total = None
    if isinstance(dataset, datasets.Dataset):
        ids = [str(i) for i in (range(len(dataset)) if id_column is None else dataset[id_column])]
        repeated = next((row_id for row_id, count in Counter(ids).items() if count > 1), None)
        if repeated is not None:
            raise ValueError(f"the id column {id_column!r} is not unique: {repeated!r} appears more than once.")
        summary.skipped = sum(row_id in done for row_id in ids)
        total = len(ids) - summary.skipped

    def tracks() -> Iterator[_Track]:
        seen: set[str] = set()
        for index, row in enumerate(dataset):
            track = _row_track(row, index, audio_column, id_column)
            if track.key in seen:
                raise ValueError(f"the id column {id_column!r} is not unique: {track.key!r} appears more than once.")
            seen.add(track.key)
            if track.key in done:
                if total is None:  # a `Dataset`'s were counted up front
                    summary.skipped += 1
                continue
            yield track

    return _caption_tracks(
        pipe,
        tracks(),
        output,
        summary,
        total=total,
        batch_size=batch_size,
        progress=progress,
        tagger=tagger,
        **pipeline_kwargs,
    )


__all__ = [
    "AUDIO_EXTENSIONS",
    "CaptionInterrupted",
    "CaptionSummary",
    "caption_dataset",
    "caption_files",
    "caption_to_jsonl",
    "captioned_paths",
    "expand_inputs",
    "load_caption_dataset",
    "merge_parts",
    "read_records",
    "record_key",
]
