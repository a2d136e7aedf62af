"""
From a `blap caption` journal to a Hugging Face dataset (the engine of `blap export`).

The JSON Lines output of `blap caption` stays the resumable journal; `export_dataset` turns its captioned records into
a dataset folder that `datasets.load_dataset(folder)` and the Hub load:

```
folder/
  README.md                                  dataset card: model, revision, generation settings, counts, failures
  data/train-00000-of-00002.parquet          audio (datasets.Audio), path, caption, windows, duration, tags, warnings
  data/train-00001-of-00002.parquet
```

`audio` holds the file's absolute path, or with `embed_audio=True` its bytes (a self-contained dataset to push).
Failed inputs (records with an `error`) are left out and counted; of several records of one input (a journal appended
to by reruns) the last caption wins. The folder is written beside its destination and moved into place when complete,
so a crash never leaves half a dataset.
"""

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import datasets
from huggingface_hub import DatasetCard, DatasetCardData, HfApi

from .captioning import _has_caption, read_records
from .journal import latest_per_key

FEATURES = datasets.Features(
    {
        "audio": datasets.Audio(),
        "path": datasets.Value("string"),
        "caption": datasets.Value("string"),
        "windows": datasets.List(
            {"start": datasets.Value("float32"), "end": datasets.Value("float32"), "caption": datasets.Value("string")}
        ),
        "duration": datasets.Value("float32"),
        "tags": datasets.List({"label": datasets.Value("string"), "score": datasets.Value("float32")}),
        "warnings": datasets.List(datasets.Value("string")),
    }
)
"""The columns of an exported dataset."""
# Rows are built with `audio` as its plain storage struct and cast to `datasets.Audio` afterwards: encoding an Audio
# value row by row imports torchcodec, which the export does not need.
_STORAGE_FEATURES = datasets.Features(
    {**FEATURES, "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}}
)
CARD_FAILURES_SHOWN = 50


@dataclass
class ExportSummary:
    """What an export wrote."""

    folder: Path
    rows: int = 0
    failed: int = 0
    shards: int = 0
    failures: dict[str, str] = field(default_factory=dict)


def latest_records(journal: str | os.PathLike) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """
    The captioned records of a `blap caption` journal, one per input in first-seen order, and the inputs whose last
    word is an error (`{path: error}`); a caption wins over an error, a later caption over an earlier one.
    """
    if not Path(journal).is_file():
        raise FileNotFoundError(f"{journal}: no such captions file (the JSON Lines output of `blap caption`).")
    latest = latest_per_key(read_records(journal), itemgetter("path"), settled=_has_caption)
    captioned = [record for record in latest.values() if _has_caption(record)]
    failures = {
        path: str(record.get("error") or "no caption") for path, record in latest.items() if not _has_caption(record)
    }
    return captioned, failures


def _row(record: dict[str, Any], base: Path, embed_audio: bool) -> dict[str, Any]:
    path = Path(record["path"])
    path = path if path.is_absolute() else (base / path).resolve()
    audio = {"path": path.name, "bytes": path.read_bytes()} if embed_audio else {"path": str(path), "bytes": None}
    return {
        "audio": audio,
        "path": record["path"],
        "caption": record["caption"],
        "windows": [
            {"start": window["start"], "end": window["end"], "caption": window["caption"]}
            for window in record.get("windows") or []
        ],
        "duration": record.get("duration"),
        "tags": [{"label": tag["label"], "score": tag["score"]} for tag in record.get("tags") or []],
        "warnings": list(record.get("warnings") or []),
    }


def export_dataset(
    journal: str | os.PathLike,
    folder: str | os.PathLike,
    *,
    embed_audio: bool = False,
    shard_rows: int = 1000,
    overwrite: bool = False,
    model: str | None = None,
    revision: str | None = None,
    generation: dict[str, Any] | None = None,
    command: str | None = None,
    base_dir: str | os.PathLike | None = None,
) -> ExportSummary:
    """
    Write the captioned records of `journal` as a Parquet dataset with a dataset card (see the module docstring).

    Args:
        journal (`str` or `os.PathLike`): the JSON Lines output of `blap caption`.
        folder (`str` or `os.PathLike`): the dataset folder to write.
        embed_audio (`bool`, *optional*, defaults to `False`): store the audio files' bytes instead of their paths.
        shard_rows (`int`, *optional*, defaults to 1000): rows per Parquet shard.
        overwrite (`bool`, *optional*, defaults to `False`): replace an existing non-empty `folder`.
        model, revision (`str`, *optional*): the captioning model (path or Hub id) and its revision, for the card.
        generation (`dict`, *optional*): the generation settings of the captioning run, for the card.
        command (`str`, *optional*): the command that produced the journal, for the card.
        base_dir (`str` or `os.PathLike`, *optional*): what relative paths in the journal are relative to (default:
            the current folder, as for `blap caption`).

    Returns:
        [`ExportSummary`].
    """
    if shard_rows < 1:
        raise ValueError(f"`shard_rows` must be at least 1, got {shard_rows}.")
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())) and not overwrite:
        raise FileExistsError(f"{folder} exists and is not empty: choose another folder or pass --overwrite.")
    records, failures = latest_records(journal)
    if not records:
        raise ValueError(f"{journal} has no captioned records to export ({len(failures)} failed).")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    num_shards = -(-len(records) // shard_rows)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        staging.chmod(0o755)  # mkdtemp's folder is private; the dataset is not
        (staging / "data").mkdir()
        for shard in range(num_shards):
            chunk = records[shard * shard_rows : (shard + 1) * shard_rows]
            rows = [_row(record, base, embed_audio) for record in chunk]
            table = datasets.Dataset.from_list(rows, features=_STORAGE_FEATURES).cast(FEATURES)
            table.to_parquet(str(staging / "data" / f"train-{shard:05d}-of-{num_shards:05d}.parquet"))
        summary = ExportSummary(folder, rows=len(records), failed=len(failures), shards=num_shards, failures=failures)
        card = dataset_card(
            summary, embed_audio=embed_audio, model=model, revision=revision, generation=generation, command=command
        )
        card.save(str(staging / "README.md"))
        if folder.exists():
            shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def dataset_card(
    summary: ExportSummary,
    *,
    embed_audio: bool,
    model: str | None,
    revision: str | None,
    generation: dict[str, Any] | None,
    command: str | None,
) -> DatasetCard:
    """The dataset card of an export: Hub metadata, how the captions were made, counts and failures."""
    card_data = DatasetCardData(
        pretty_name="Music captions by BLAP",
        task_categories=["text-to-audio", "audio-classification"],
        tags=["music", "music-captioning", "blap"],
        size_categories=_size_category(summary.rows),
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
    )
    shown = list(summary.failures.items())[:CARD_FAILURES_SHOWN]
    lines = [
        "---",
        card_data.to_yaml(),
        "---",
        "",
        "# Music captions by BLAP",
        "",
        "Captions written by a BLAP music captioner (`transformers_blap`), one row per track: `audio`"
        f" ({'the file' if embed_audio else 'the path of the file'}), `path` (as captioned), `caption` (the track's),"
        " `windows` (start and end in seconds and the caption of each window), `duration` (seconds), `tags` (label and"
        " score) and `warnings` (e.g. `silent`).",
        "",
        "## How the captions were made",
        "",
        f"- Model: `{model or 'not recorded'}`",
        f"- Model revision: `{revision or 'not recorded'}`",
        "- Generation settings: "
        + (f"`{json.dumps(generation, sort_keys=True)}`" if generation else "the model's defaults (not recorded)"),
        f"- Command: `{command or 'not recorded'}`",
        "",
        "## Counts",
        "",
        f"- Rows (captioned tracks): {summary.rows}",
        f"- Failed inputs, left out: {summary.failed}",
        f"- Parquet shards: {summary.shards}",
    ]
    if shown:
        lines += ["", "## Failed inputs", ""]
        lines += [f"- `{path}`: {error}" for path, error in shown]
        if summary.failed > len(shown):
            lines.append(f"- ... and {summary.failed - len(shown)} more")
    return DatasetCard("\n".join(lines) + "\n")


def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "1M<n<10M"


def push_dataset(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload BLAP captions",
) -> str:
    """
    Upload an exported dataset folder to the Hub as a dataset repository (created if missing) in one commit.

    Returns:
        `str`: the commit's URL.
    """
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, repo_type="dataset", commit_message=commit_message
    )
    return commit.commit_url


__all__ = ["FEATURES", "ExportSummary", "dataset_card", "export_dataset", "latest_records", "push_dataset"]
