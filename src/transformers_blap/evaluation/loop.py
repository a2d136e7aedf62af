"""
The evaluation loop: caption a benchmark with a BLAP model, keep the predictions in a resumable JSON Lines file (a
[`Journal`](../journal), as `blap caption`'s output is), score them with the paper's metrics, write `report.json` and
print the scores beside Table 1 of the paper.

Every prediction line carries the fingerprint of what made it: a content hash of the model's weights (with the path or
Hub id and the Hub revision it was loaded from), the generation settings, the prompt and the long-audio policy. A rerun
reuses only the lines whose fingerprint equals the current run's, so one predictions file can hold the captions of
several models and settings and a report only ever scores the captions of the model it names.
"""

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..audio import load_audio
from ..journal import Journal, error_text, latest_per_key
from .benchmarks import Benchmark, BenchmarkClip
from .metrics import ALL_METRICS, CaptionScorer
from .report import format_table1, published_rows

logger = logging.getLogger(__name__)


def load_audio_file(path: str | os.PathLike, sampling_rate: int) -> np.ndarray:
    """Decodes an audio file to mono float32 at `sampling_rate` (`transformers_blap.audio.load_audio`)."""
    return load_audio(path, sampling_rate=sampling_rate)


def _is_prediction(record: dict[str, Any]) -> bool:
    return "clip_id" in record


def read_prediction_records(path: str | os.PathLike, benchmark_name: str) -> list[dict[str, Any]]:
    """
    Every record of a predictions file, in file order; a line cut short by an interrupted run is skipped.

    Args:
        path (`str` or `os.PathLike`): the JSON Lines file (absent: no records).
        benchmark_name (`str`): the benchmark the file must belong to.

    Returns:
        `list[dict]`: the records (`{"benchmark", "clip_id", "audio_path", "caption" or "error", "fingerprint", ...}`).
    """
    records = Journal(path, _is_prediction).records()
    for record in records:
        if record.get("benchmark") != benchmark_name:
            raise ValueError(
                f"{path} holds predictions for benchmark {record.get('benchmark')!r}, not {benchmark_name!r}: "
                "use another output folder"
            )
    return records


def read_predictions(
    path: str | os.PathLike, benchmark_name: str, fingerprint: str | None = None
) -> dict[str, dict[str, Any]]:
    """
    The records of a predictions file, the last one per clip (see `read_prediction_records`).

    Args:
        path (`str` or `os.PathLike`): the JSON Lines file (absent: no records).
        benchmark_name (`str`): the benchmark the file must belong to.
        fingerprint (`str`, *optional*): keep only the records made with this fingerprint (see
            `prediction_fingerprint`); by default every record counts.

    Returns:
        `dict[str, dict]`: clip id -> record.
    """
    records = read_prediction_records(path, benchmark_name)
    mine = (record for record in records if fingerprint is None or record.get("fingerprint") == fingerprint)
    return latest_per_key(mine, itemgetter("clip_id"))


def weights_sha256(model: torch.nn.Module) -> str:
    """
    A content hash of a model's weights as they are in memory: SHA-256 over every state-dict entry's name, dtype,
    shape and bytes, in name order. Equal weights in the same dtype give the same hash wherever they were loaded from.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def prediction_fingerprint(
    model, processor, generate_kwargs: Mapping[str, Any] | None = None, model_name: str | None = None
) -> dict[str, Any]:
    """
    What identifies the captions a run makes, written into every prediction line and into the report.

    Args:
        model (`BlapForConditionalGeneration`): the captioner.
        processor (`BlapProcessor`): its prompt and feature extractor's `long_audio` policy.
        generate_kwargs (`Mapping`, *optional*): generation options on top of `model.generation_config`.
        model_name (`str`, *optional*): the model's path or Hub id (default: `model.name_or_path`).

    Returns:
        `dict`: `fingerprint` (16 hex digits over the weights hash, generation settings, prompt and long-audio
        policy), `model` (path or Hub id), `model_revision` (the Hub commit it was loaded from, else `None`),
        `weights_sha256`, `generation`, `prompt`, `long_audio`.
    """
    identity = {
        "weights_sha256": weights_sha256(model),
        "generation": _generation_settings(model, generate_kwargs or {}),
        "prompt": getattr(processor, "prompt", None),
        "long_audio": getattr(processor.feature_extractor, "long_audio", None),
    }
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    config = getattr(model, "config", None)
    return {
        "fingerprint": fingerprint,
        "model": model_name or getattr(model, "name_or_path", None) or type(model).__name__,
        "model_revision": getattr(config, "_commit_hash", None),
        **identity,
    }


def _generation_settings(model, generate_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The generation settings in effect: the model's generation config (what differs from the defaults), overridden
    by `generate_kwargs`, in name order."""
    generation_config = getattr(model, "generation_config", None)
    settings = generation_config.to_diff_dict() if generation_config is not None else {}
    settings = {key: value for key, value in settings.items() if key != "transformers_version" and key[0] != "_"}
    settings.update(generate_kwargs)
    return dict(sorted(settings.items()))


def _caption_batch(model, processor, clips: list[BenchmarkClip], waveforms: list[np.ndarray], generate_kwargs):
    sampling_rate = processor.feature_extractor.sampling_rate
    inputs = processor(audio=waveforms, sampling_rate=sampling_rate, return_tensors="pt", device=model.device)
    inputs = inputs.to(model.device)
    with torch.inference_mode():
        ids = model.generate(**inputs, **generate_kwargs)
    captions = processor.batch_decode(ids, skip_special_tokens=True)
    if len(captions) != len(clips):
        raise RuntimeError(f"generate returned {len(captions)} captions for {len(clips)} clips")
    return [caption.strip() for caption in captions]


def generate_predictions(
    model,
    processor,
    benchmark: Benchmark,
    predictions_path: str | os.PathLike,
    batch_size: int = 8,
    generate_kwargs: Mapping[str, Any] | None = None,
    load_audio: Callable[[Path, int], np.ndarray] = load_audio_file,
    identity: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """
    Captions the clips of `benchmark` that `predictions_path` does not hold a caption for yet from this model with
    these settings (the same fingerprint, see `prediction_fingerprint`), appending one JSON line per clip (on disk
    before the next batch starts); each line carries the fingerprint. A line cut short by an interrupted run is
    dropped first. A clip whose audio cannot be decoded, or whose batch fails in
    `generate`, gets an `"error"` record and the run goes on; the next run retries it. `identity` is what
    `prediction_fingerprint(model, processor, generate_kwargs)` returns (computed when not given).

    Returns:
        `dict[str, dict]`: clip id -> latest record of this fingerprint.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be at least 1; got {batch_size}")
    generate_kwargs = dict(generate_kwargs or {})
    predictions_path = Path(predictions_path)
    identity = dict(identity or prediction_fingerprint(model, processor, generate_kwargs))
    records = read_predictions(predictions_path, benchmark.name, identity["fingerprint"])
    todo = [clip for clip in benchmark.clips if "caption" not in records.get(clip.clip_id, {})]
    if len(todo) < len(benchmark.clips):
        logger.info(
            "%s: %d clips already captioned, %d to go", predictions_path, len(benchmark.clips) - len(todo), len(todo)
        )
    sampling_rate = processor.feature_extractor.sampling_rate
    predictions_path.parent.mkdir(parents=True, exist_ok=True)
    journal = Journal(predictions_path, _is_prediction)
    dropped = journal.resume()
    if dropped:
        logger.warning("%s: dropping %d unreadable line(s) left by an interrupted run", predictions_path, dropped)

    def record(clip: BenchmarkClip, outcome: dict[str, Any]) -> dict[str, Any]:
        base = {"benchmark": benchmark.name, "clip_id": clip.clip_id, "audio_path": str(clip.audio_path)}
        return {**base, **outcome, **identity}

    with journal:
        for start in range(0, len(todo), batch_size):
            new_records, loaded, waveforms = [], [], []
            for clip in todo[start : start + batch_size]:
                try:
                    waveforms.append(load_audio(clip.audio_path, sampling_rate))
                    loaded.append(clip)
                except Exception as error:
                    new_records.append(record(clip, {"error": error_text(error)}))
            if loaded:
                try:
                    captions = _caption_batch(model, processor, loaded, waveforms, generate_kwargs)
                    outcomes = [
                        {"caption": caption, "references": list(clip.references)}
                        for clip, caption in zip(loaded, captions)
                    ]
                except Exception as error:
                    outcomes = [{"error": error_text(error)}] * len(loaded)
                new_records += [record(clip, outcome) for clip, outcome in zip(loaded, outcomes)]
            for new_record in new_records:
                records[new_record["clip_id"]] = new_record
                journal.append(new_record)
    return records


def resume_summary(predictions_path: str | os.PathLike, benchmark: Benchmark, fingerprint: str) -> tuple[int, int]:
    """
    What a run with `fingerprint` finds in `predictions_path` for `benchmark`'s clips.

    Returns:
        `(reused, other)`: clips with a caption of this fingerprint, and clips without one that have captions made by
        another model or other settings (which are captioned again).
    """
    mine, others = set(), set()
    for record in read_prediction_records(predictions_path, benchmark.name):
        if "caption" in record:
            (mine if record.get("fingerprint") == fingerprint else others).add(record["clip_id"])
    clip_ids = {clip.clip_id for clip in benchmark.clips}
    return len(mine & clip_ids), len((others - mine) & clip_ids)


def default_predictions_path(report_path: str | os.PathLike) -> Path:
    """`report.json` -> `report.predictions.jsonl`, beside the report."""
    report_path = Path(report_path)
    return report_path.with_name(f"{report_path.stem}.predictions.jsonl")


def run_evaluation(
    model,
    processor,
    benchmark: Benchmark,
    report_path: str | os.PathLike,
    predictions_path: str | os.PathLike | None = None,
    batch_size: int = 8,
    generate_kwargs: Mapping[str, Any] | None = None,
    metrics: Iterable[str] = ALL_METRICS,
    scorer_kwargs: Mapping[str, Any] | None = None,
    load_audio: Callable[[Path, int], np.ndarray] = load_audio_file,
    model_name: str | None = None,
    print_fn: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """
    Evaluates a BLAP model on a benchmark as in the paper.

    The metric helpers are set up first, so that a missing SPICE/FENSE download fails before any audio is captioned.
    Then every clip with audio is captioned (resumable, see `generate_predictions`) with the model's generation
    settings (BLAP's: 10 beams, 40 new tokens, `min_length` 30) and the processor's prompt, overridden by
    `generate_kwargs`; the captions are scored against the clips' references; the report records the benchmark
    counts (missing audio included), the settings, the failures and the scores. Audio longer than the model's window
    (Song Describer's full tracks) is cut to one window by the feature extractor's `long_audio` policy ("first" 10 s
    unless the processor was saved or set otherwise); the report records which.

    A predictions file can hold the captions of several runs: only lines with this run's fingerprint (weights hash,
    generation settings, prompt, long-audio policy; see `prediction_fingerprint`) are reused, the other clips are
    captioned again (a printed line says how many of each), and the report carries the fingerprint of the model it
    names beside the scores of that model's captions.

    Args:
        model (`BlapForConditionalGeneration`): the captioner (its `generate` and `device` are used).
        processor (`BlapProcessor`): its feature extractor's `sampling_rate` is the rate audio is decoded at.
        benchmark (`Benchmark`): from `load_musiccaps`, `load_song_describer` or `load_yt8m_musictextclips`.
        report_path (`str` or `os.PathLike`): where the JSON report goes (e.g. `report.json`).
        predictions_path (`str` or `os.PathLike`, *optional*): the JSON Lines predictions, resumed if present;
            defaults to `report.predictions.jsonl` beside the report.
        batch_size (`int`, *optional*, defaults to 8): clips per `generate` call.
        generate_kwargs (`Mapping`, *optional*): generation options on top of `model.generation_config`.
        metrics (`Iterable[str]`, *optional*, defaults to `ALL_METRICS`): see `caption_metrics`.
        scorer_kwargs (`Mapping`, *optional*): passed to `CaptionScorer` (`cache_dir`, `spice_command`, ...).
        load_audio (`Callable`, *optional*): `(path, sampling_rate) -> mono float32 waveform`.
        model_name (`str`, *optional*): how the report names the model (default: `model.name_or_path`).
        print_fn (`Callable`, *optional*, defaults to `print`): where the summary and table go; `None` for silence.

    Returns:
        `dict`: the report written to `report_path`.
    """
    report_path = Path(report_path)
    predictions_path = default_predictions_path(report_path) if predictions_path is None else Path(predictions_path)
    generate_kwargs = dict(generate_kwargs or {})
    if not benchmark.clips:
        raise ValueError(f"nothing to evaluate: {benchmark.describe()}")
    with CaptionScorer(metrics, **dict(scorer_kwargs or {})) as scorer:
        identity = prediction_fingerprint(model, processor, generate_kwargs, model_name)
        reused, other = resume_summary(predictions_path, benchmark, identity["fingerprint"])
        if print_fn is not None and (reused or other):
            print_fn(
                f"Resuming {predictions_path}: {reused} captions of this model and settings reused; {other} clips"
                " captioned by another model or with other settings are captioned again."
            )
        records = generate_predictions(
            model, processor, benchmark, predictions_path, batch_size, generate_kwargs, load_audio, identity
        )
        scored = [clip for clip in benchmark.clips if "caption" in records.get(clip.clip_id, {})]
        failed = [
            {"clip_id": clip.clip_id, "error": records[clip.clip_id]["error"]}
            for clip in benchmark.clips
            if "caption" not in records.get(clip.clip_id, {})
        ]
        if not scored:
            raise RuntimeError(
                f"no clip of {benchmark.name} could be captioned; first error: {failed[0]['error']} "
                f"(all errors are in {predictions_path})"
            )
        scores = scorer([records[clip.clip_id]["caption"] for clip in scored], [clip.references for clip in scored])
    report = {
        "benchmark": benchmark.summary(),
        **identity,
        "clips_scored": len(scored),
        "clips_failed": failed,
        "predictions_reused": reused,
        "predictions_recomputed_from_other_runs": other,
        "metrics": scores,
        "metrics_x100": {name: round(100.0 * value, 2) for name, value in scores.items()},
        "published_table1": published_rows(benchmark.name),
        "predictions_file": str(predictions_path),
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = report_path.with_name(report_path.name + ".tmp")
    temporary.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, report_path)
    if print_fn is not None:
        print_fn(benchmark.describe())
        if failed:
            print_fn(f"{len(failed)} clips failed (see {predictions_path}); scored {len(scored)} clips.")
        note = f"{benchmark.split}, {len(scored)} clips scored"
        print_fn(format_table1(benchmark.name, scores, label=report["model"], note=note))
    return report
