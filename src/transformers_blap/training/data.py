"""
Caption datasets for training (both stages) and evaluation: CSV / JSON Lines files, folders of audio files with
captions, or `datasets` datasets, normalised to two columns, `audio` (a path, or a `{"bytes", "path"}` Audio value) and
`captions` (a list of strings); and the up-front check that every audio file opens.
"""

import csv
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import datasets

from ..audio import audio_duration

logger = logging.getLogger(__name__)

AUDIO_COLUMN = "audio"
CAPTIONS_COLUMN = "captions"
# `datasets`' audiofolder names the audio column of metadata.csv / metadata.jsonl `file_name`.
FILE_NAME_COLUMN = "file_name"
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aiff", ".aif")
_CAPTION_COLUMN_PATTERN = re.compile(r"^captions?([ _-]?\d+)?$", re.IGNORECASE)


def resolve_caption_columns(columns: Iterable[str], caption_columns: Sequence[str] | None = None) -> list[str]:
    """
    The caption columns of a table.

    Args:
        columns (`Iterable[str]`): the table's column names.
        caption_columns (`Sequence[str]`, *optional*): the columns to use; by default every column named `caption`,
            `captions` or `caption_<n>` / `caption<n>` (case-insensitive), in table order.

    Returns:
        `list[str]`.
    """
    columns = list(columns)
    if caption_columns is None:
        found = [column for column in columns if _CAPTION_COLUMN_PATTERN.match(column)]
        if not found:
            raise ValueError(
                f"No caption column found among {columns}: name it `caption`, `captions` or `caption_1`, ... or pass"
                " `caption_columns`."
            )
        return found
    if isinstance(caption_columns, str):
        caption_columns = [caption_columns]
    missing = [column for column in caption_columns if column not in columns]
    if missing or not caption_columns:
        raise ValueError(f"`caption_columns` {list(caption_columns)} must name columns of the data; it has {columns}.")
    return list(caption_columns)


def _captions_of(row: Mapping[str, Any], caption_columns: Sequence[str], where: str) -> list[str]:
    """All non-empty captions of one row; a CSV cell holding a JSON list (`["a", "b"]`) counts as a list."""
    captions: list[str] = []
    for column in caption_columns:
        value = row.get(column)
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{where}, column {column!r}: looks like a JSON list but is not one ({error})."
                ) from error
        if value is None:
            continue
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, (list, tuple)) or not all(isinstance(caption, str) for caption in values):
            raise TypeError(f"{where}, column {column!r}: expected a caption or a list of captions, got {value!r}.")
        captions.extend(caption.strip() for caption in values if caption.strip())
    if not captions:
        raise ValueError(f"{where} has no caption in the columns {list(caption_columns)}.")
    return captions


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    if suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        if suffix == ".json" and text.lstrip().startswith("["):
            return json.loads(text)
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}: line {number} is not valid JSON ({error}).") from error
        return rows
    raise ValueError(f"Unsupported data file {path}: expected .csv, .jsonl or .json (a list or JSON Lines).")


def load_caption_file(
    path: str | os.PathLike,
    audio_column: str = AUDIO_COLUMN,
    caption_columns: Sequence[str] | None = None,
    audio_root: str | os.PathLike | None = None,
    check_files: bool = True,
) -> datasets.Dataset:
    """
    Read a CSV or JSON Lines table of audio files and captions.

    Each row names one audio file (relative paths are resolved against `audio_root`, by default the table's folder)
    and has one or more captions: several caption columns, a column holding a list (JSON Lines) or a JSON-encoded list
    (CSV). Empty cells are skipped, so clips may have different numbers of captions. Rows naming the same file (one
    row per audio-caption pair) are merged into one clip. Without an `audio_column` column, `file_name` (the name in
    `datasets`' audiofolder metadata) is read.

    Args:
        path (`str` or `os.PathLike`): a `.csv`, `.jsonl` or `.json` file.
        audio_column (`str`, *optional*, defaults to `"audio"`): the column with the audio paths.
        caption_columns (`Sequence[str]`, *optional*): see [`resolve_caption_columns`].
        audio_root (`str` or `os.PathLike`, *optional*): the folder relative paths start from.
        check_files (`bool`, *optional*, defaults to `True`): fail now, listing them, if audio files are missing.

    Returns:
        `datasets.Dataset` with the columns `audio` (`str`, an absolute path) and `captions` (`list[str]`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Data file not found: {path}")
    rows = _read_rows(path)
    if not rows:
        raise ValueError(f"{path} has no rows.")
    columns = list(dict.fromkeys(column for row in rows for column in row))
    if audio_column not in columns and FILE_NAME_COLUMN in columns:
        audio_column = FILE_NAME_COLUMN
    if audio_column not in columns:
        raise ValueError(f"{path} has no audio column {audio_column!r} (columns: {columns}); set `audio_column`.")
    caption_columns = resolve_caption_columns([c for c in columns if c != audio_column], caption_columns)
    root = Path(audio_root) if audio_root is not None else path.parent
    clips: dict[str, list[str]] = {}
    for number, row in enumerate(rows, start=1):
        where = f"{path}, row {number}"
        source = row.get(audio_column)
        if not isinstance(source, str) or not source.strip():
            raise ValueError(f"{where}: the {audio_column!r} entry must be a file path, got {source!r}.")
        clips.setdefault(str((root / source.strip()).resolve()), []).extend(_captions_of(row, caption_columns, where))
    audio, captions = list(clips), list(clips.values())
    if check_files:
        missing = [file for file in audio if not os.path.isfile(file)]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(audio)} audio files listed in {path} do not exist, e.g. {missing[:5]}."
            )
    return datasets.Dataset.from_dict({AUDIO_COLUMN: audio, CAPTIONS_COLUMN: captions})


def load_caption_folder(
    path: str | os.PathLike,
    audio_column: str = AUDIO_COLUMN,
    caption_columns: Sequence[str] | None = None,
    audio_root: str | os.PathLike | None = None,
) -> datasets.Dataset:
    """
    Read a folder of audio files and captions: its `metadata.jsonl` / `metadata.csv` (see [`load_caption_file`]), or
    else every audio file in it (recursively) with a `.txt` file of the same name beside it, one caption per line.

    Returns:
        `datasets.Dataset` with the columns `audio` (`str`, an absolute path) and `captions` (`list[str]`).
    """
    path = Path(path)
    for name in METADATA_FILES:
        if (path / name).is_file():
            return load_caption_file(path / name, audio_column, caption_columns, audio_root)
    audio, captions = [], []
    for file in sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS):
        sidecar = file.with_suffix(".txt")
        if not sidecar.is_file():
            raise FileNotFoundError(f"{file} has no caption file {sidecar.name} beside it (one caption per line).")
        lines = [line.strip() for line in sidecar.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"{sidecar} holds no caption.")
        audio.append(str(file.resolve()))
        captions.append(lines)
    if not audio:
        raise ValueError(
            f"{path} has no {' or '.join(METADATA_FILES)}, is no `save_to_disk` dataset and holds no audio files"
            f" ({', '.join(AUDIO_EXTENSIONS)}) with .txt captions."
        )
    return datasets.Dataset.from_dict({AUDIO_COLUMN: audio, CAPTIONS_COLUMN: captions})


def _is_saved_dataset(path: Path) -> bool:
    """Whether `path` was written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def caption_dataset(
    dataset: datasets.Dataset, audio_column: str = AUDIO_COLUMN, caption_columns: Sequence[str] | None = None
) -> datasets.Dataset:
    """
    Normalise a `datasets` dataset to the `audio` / `captions` columns.

    An `Audio` column is cast to `Audio(decode=False)`, so rows carry `{"bytes", "path"}` that
    `transformers_blap.audio.load_audio` decodes (the `datasets` decoder would need torchcodec); a string column is
    taken as file paths.

    Args:
        dataset (`datasets.Dataset`).
        audio_column (`str`, *optional*, defaults to `"audio"`).
        caption_columns (`Sequence[str]`, *optional*): see [`resolve_caption_columns`].

    Returns:
        `datasets.Dataset` with the columns `audio` and `captions` (`list[str]`).
    """
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"`dataset` must be a datasets.Dataset, got {type(dataset).__name__}.")
    if audio_column not in dataset.column_names:
        raise ValueError(f"The dataset has no audio column {audio_column!r}; its columns are {dataset.column_names}.")
    caption_columns = resolve_caption_columns(
        [column for column in dataset.column_names if column != audio_column], caption_columns
    )
    feature = dataset.features[audio_column]
    if isinstance(feature, datasets.Audio):
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    elif not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise TypeError(f"Column {audio_column!r} must be an Audio feature or file paths, got {feature}.")
    table = dataset.select_columns([audio_column, *caption_columns])
    captions = [
        _captions_of(dict(zip(caption_columns, values)), caption_columns, f"dataset row {number}")
        for number, values in enumerate(zip(*(table[column] for column in caption_columns)))
    ]
    audio = table.select_columns([audio_column])
    if audio_column != AUDIO_COLUMN:
        audio = audio.rename_column(audio_column, AUDIO_COLUMN)
    return audio.add_column(CAPTIONS_COLUMN, captions)


def load_caption_dataset(
    name_or_path: str,
    config_name: str | None = None,
    split: str = "train",
    audio_column: str = AUDIO_COLUMN,
    caption_columns: Sequence[str] | None = None,
    audio_root: str | os.PathLike | None = None,
) -> datasets.Dataset:
    """
    Load a caption dataset from a CSV / JSON Lines file, a folder (written by `Dataset.save_to_disk`, or read by
    [`load_caption_folder`]), or the Hub. Both training stages and the evaluation read their data through here.

    Args:
        name_or_path (`str`): a `.csv` / `.jsonl` / `.json` file, a folder, or a Hub dataset id.
        config_name (`str`, *optional*): the Hub dataset's configuration.
        split (`str`, *optional*, defaults to `"train"`): the split of a Hub dataset or a saved `DatasetDict`.
        audio_column (`str`, *optional*, defaults to `"audio"`).
        caption_columns (`Sequence[str]`, *optional*): see [`resolve_caption_columns`].
        audio_root (`str` or `os.PathLike`, *optional*): for files, where relative audio paths start.

    Returns:
        `datasets.Dataset` with the columns `audio` and `captions`.
    """
    path = Path(name_or_path)
    if path.is_file():
        return load_caption_file(path, audio_column, caption_columns, audio_root)
    if path.is_dir() and not _is_saved_dataset(path):
        return load_caption_folder(path, audio_column, caption_columns, audio_root)
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
    elif name_or_path.endswith((".csv", ".jsonl", ".json")) or name_or_path.startswith(("/", ".", "~")):
        # A path, not a Hub dataset id (`owner/name`): say so instead of asking the Hub.
        raise FileNotFoundError(
            f"Data file or folder not found: {name_or_path} (pass an existing .csv / .jsonl file or folder, or a Hub"
            " dataset id such as owner/name)."
        )
    else:
        loaded = datasets.load_dataset(name_or_path, config_name, split=split)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"{name_or_path} has no split {split!r}; it has {list(loaded)}.")
        loaded = loaded[split]
    return caption_dataset(loaded, audio_column, caption_columns)


def _unreadable(source: Any) -> str | None:
    """Why the audio `source` cannot be used (header only where the format has one), or `None` if it opens."""
    try:
        if audio_duration(source) <= 0:
            return "it holds no samples."
    except Exception as error:  # every decoder failure counts: the clip cannot be trained on
        return " ".join(str(error).split())
    return None


def _audio_name(source: Any) -> str:
    if isinstance(source, Mapping):
        return str(source.get("path") or "<bytes>")
    return str(source)


def check_audio_files(
    dataset: datasets.Dataset,
    skip_bad_audio: bool = False,
    max_workers: int = 16,
    audio_column: str = AUDIO_COLUMN,
) -> tuple[datasets.Dataset, dict[str, Any]]:
    """
    Open every clip's audio before training (the header only, where the format has one; in a thread pool) so that
    an unreadable file stops the run now, with all of them listed, instead of mid-run when a batch reaches it.

    Args:
        dataset (`datasets.Dataset`) with an `audio_column` of paths or `{"bytes", "path"}` values.
        skip_bad_audio (`bool`, *optional*, defaults to `False`): leave unreadable clips out instead of raising.
        max_workers (`int`, *optional*, defaults to 16): threads.
        audio_column (`str`, *optional*, defaults to `"audio"`).

    Returns:
        `(dataset, report)`: the dataset (without the unreadable clips when skipping) and
        `{"clips": kept, "skipped_unreadable": count, "unreadable": [{"audio", "reason"}, ...]}`.

    Raises:
        `ValueError`: listing the unreadable clips, unless `skip_bad_audio`.
    """
    sources = dataset.select_columns([audio_column])[audio_column]
    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        reasons = list(pool.map(_unreadable, sources))
    bad = [index for index, reason in enumerate(reasons) if reason is not None]
    unreadable = [{"audio": _audio_name(sources[index]), "reason": reasons[index]} for index in bad]
    if bad and not skip_bad_audio:
        shown = "; ".join(f"{item['audio']} ({item['reason']})" for item in unreadable[:5])
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(
            f"{len(bad)} of {len(sources)} audio files cannot be read: {shown}{more}. Fix or remove them, or pass"
            " --skip_bad_audio to train without them."
        )
    if bad:
        logger.warning("Leaving out %d of %d clips whose audio cannot be read.", len(bad), len(sources))
        bad_set = set(bad)
        dataset = dataset.select([index for index in range(len(sources)) if index not in bad_set])
    return dataset, {"clips": len(dataset), "skipped_unreadable": len(bad), "unreadable": unreadable}


__all__ = [
    "AUDIO_COLUMN",
    "CAPTIONS_COLUMN",
    "AUDIO_EXTENSIONS",
    "caption_dataset",
    "check_audio_files",
    "load_caption_dataset",
    "load_caption_file",
    "load_caption_folder",
    "resolve_caption_columns",
]
