"""
Readers for the three benchmarks of the BLAP paper: the public caption CSV of each, plus a local folder with the audio
the user obtained. A clip whose audio file is not found is kept in `Benchmark.missing_audio` and reported, never
dropped silently.

- MusicCaps (Agostinelli et al. 2023): `musiccaps-public.csv` with `ytid, start_s, end_s, audioset_positive_labels,
  aspect_list, caption, author_id, is_balanced_subset, is_audioset_eval`; one expert caption per 10 s clip. The paper
  evaluates on the AudioSet eval split (`is_audioset_eval`, 2858 clips).
- Song Describer (Manco et al. 2023): `song_describer.csv` with `caption_id, track_id, caption, is_valid_subset,
  familiarity, artist_id, album_id, path, duration`; several captions per track (1.1k captions of 706 tracks), all of
  them references of the track.
- YouTube8M-MusicTextClips (McKee et al. 2023): `train.csv` and `test.csv` with `video_id, start, end, text`; one
  caption per 10 s clip (the paper uses both files, about 4k clips).

Audio files are looked up anywhere under the audio folder, by file name without extension (any of `AUDIO_EXTENSIONS`);
the usual names of the download scripts are tried (see each reader), and `filename_patterns` adds your own.
"""

import csv
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm")

MUSICCAPS_COLUMNS = ("ytid", "start_s", "end_s", "caption", "is_audioset_eval")
SONG_DESCRIBER_COLUMNS = ("caption_id", "track_id", "caption", "is_valid_subset", "path")
YT8M_MTC_COLUMNS = ("video_id", "start", "end", "text")


@dataclass(frozen=True)
class BenchmarkClip:
    """
    One clip (or track) to caption.

    Attributes:
        clip_id (`str`): the benchmark's identifier of the clip (`ytid`, `track_id`, or `video_id`).
        audio_path (`Path`): the local audio file.
        references (`tuple[str, ...]`): the reference captions.
        start_s (`float`, *optional*): where the clip starts in its source video, as listed (informational: the audio
            file is expected to hold the clip itself).
        end_s (`float`, *optional*): where it ends.
    """

    clip_id: str
    audio_path: Path
    references: tuple[str, ...]
    start_s: float | None = None
    end_s: float | None = None


@dataclass
class Benchmark:
    """
    A benchmark read from its CSV: the clips whose audio was found, and the ids of those whose audio was not.

    Attributes:
        name (`str`): `"musiccaps"`, `"song_describer"` or `"yt8m_musictextclips"`.
        split (`str`): which part of it was read (e.g. `"eval"`).
        clips (`list[BenchmarkClip]`): clips with audio, in CSV order.
        missing_audio (`list[str]`): clip ids listed in the CSV (and the chosen split) without an audio file.
        audio_dir (`Path`): the folder searched.
    """

    name: str
    split: str
    clips: list[BenchmarkClip]
    missing_audio: list[str] = field(default_factory=list)
    audio_dir: Path | None = None

    @property
    def num_listed(self) -> int:
        return len(self.clips) + len(self.missing_audio)

    def summary(self) -> dict:
        """JSON-ready counts: listed clips, clips with audio, missing audio (with the missing ids)."""
        return {
            "benchmark": self.name,
            "split": self.split,
            "audio_dir": None if self.audio_dir is None else str(self.audio_dir),
            "clips_listed": self.num_listed,
            "clips_with_audio": len(self.clips),
            "clips_missing_audio": len(self.missing_audio),
            "missing_audio_clip_ids": list(self.missing_audio),
            "references": sum(len(clip.references) for clip in self.clips),
        }

    def describe(self) -> str:
        """One line for people: how many clips are listed, found and missing."""
        text = (
            f"{self.name} ({self.split}): {self.num_listed} clips listed, {len(self.clips)} with audio, "
            f"{len(self.missing_audio)} missing audio"
        )
        if self.missing_audio:
            shown = ", ".join(self.missing_audio[:5]) + (", ..." if len(self.missing_audio) > 5 else "")
            text += f" in {self.audio_dir} (e.g. {shown})"
        return text


def _read_csv(path: str | os.PathLike, required: Sequence[str]) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"the benchmark CSV {path} does not exist")
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        columns = reader.fieldnames or []
        missing = [column for column in required if column not in columns]
        if missing:
            raise ValueError(f"{path} must have the columns {list(required)}; it lacks {missing} (it has {columns})")
        return list(reader)


def _parse_bool(value: str, path: Path, row: int, column: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no", ""):
        return False
    raise ValueError(f"{path}, data row {row}: `{column}` must be True or False; got {value!r}")


def _parse_seconds(value: str, path: Path, row: int, column: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{path}, data row {row}: `{column}` must be a number of seconds; got {value!r}") from None


def _caption(value: str | None, path: Path, row: int, column: str) -> str:
    caption = (value or "").strip()
    if not caption:
        raise ValueError(f"{path}, data row {row}: `{column}` is empty")
    return caption


def _seconds_text(seconds: float) -> str:
    return f"{seconds:g}"


class AudioIndex:
    """
    Every audio file under a folder, found by its name without extension or by its relative path without extension.

    Args:
        audio_dir (`str` or `os.PathLike`): the folder (searched recursively).
        extensions (`Iterable[str]`, *optional*, defaults to `AUDIO_EXTENSIONS`): which files count as audio; when a
            clip has several, the earlier extension in this list wins.
    """

    def __init__(self, audio_dir: str | os.PathLike, extensions: Iterable[str] = AUDIO_EXTENSIONS):
        self.audio_dir = Path(audio_dir)
        if not self.audio_dir.is_dir():
            raise FileNotFoundError(f"`audio_dir` {self.audio_dir} is not a folder")
        self.extensions = tuple(extension.lower() for extension in extensions)
        self._by_key: dict[str, list[Path]] = {}
        for root, _, files in os.walk(self.audio_dir):
            for name in files:
                path = Path(root) / name
                if path.suffix.lower() not in self.extensions:
                    continue
                relative = path.relative_to(self.audio_dir).with_suffix("").as_posix()
                for key in {path.stem, relative}:
                    self._by_key.setdefault(key, []).append(path)

    def find(self, names: Iterable[str]) -> Path | None:
        """The first audio file matching one of `names` (stems or relative paths without extension), else `None`."""
        for name in names:
            candidates = self._by_key.get(name)
            if candidates:
                return min(candidates, key=lambda path: (self.extensions.index(path.suffix.lower()), str(path)))
        return None


def _names(patterns: Sequence[str], **fields) -> list[str]:
    return [pattern.format(**fields) for pattern in patterns]


def _finish(name: str, split: str, clips: list[BenchmarkClip], missing: list[str], audio_dir: Path) -> Benchmark:
    benchmark = Benchmark(name=name, split=split, clips=clips, missing_audio=missing, audio_dir=audio_dir)
    if missing:
        logger.warning("%s", benchmark.describe())
    return benchmark


MUSICCAPS_FILENAME_PATTERNS = ("{ytid}", "[{ytid}]-[{start}-{end}]", "{ytid}_{start}-{end}", "{ytid}_{start}_{end}")


def load_musiccaps(
    csv_path: str | os.PathLike,
    audio_dir: str | os.PathLike,
    split: str = "eval",
    filename_patterns: Sequence[str] = (),
) -> Benchmark:
    """
    Reads MusicCaps.

    Args:
        csv_path (`str` or `os.PathLike`): `musiccaps-public.csv`.
        audio_dir (`str` or `os.PathLike`): folder with the 10 s clips.
        split (`str`, *optional*, defaults to `"eval"`): `"eval"` (`is_audioset_eval` true, the paper's test set),
            `"train"` (the others) or `"all"`.
        filename_patterns (`Sequence[str]`, *optional*): extra file names to try (without extension), as format
            strings with `{ytid}`, `{start}`, `{end}`; tried before `MUSICCAPS_FILENAME_PATTERNS`.

    Returns:
        `Benchmark`: one clip per `ytid`, the expert caption as its reference.
    """
    if split not in ("eval", "train", "all"):
        raise ValueError(f"`split` must be 'eval', 'train' or 'all'; got {split!r}")
    csv_path = Path(csv_path)
    rows = _read_csv(csv_path, MUSICCAPS_COLUMNS)
    index = AudioIndex(audio_dir)
    patterns = (*filename_patterns, *MUSICCAPS_FILENAME_PATTERNS)
    clips, missing = [], []
    for row_number, row in enumerate(rows, start=1):
        is_eval = _parse_bool(row["is_audioset_eval"], csv_path, row_number, "is_audioset_eval")
        if (split == "eval" and not is_eval) or (split == "train" and is_eval):
            continue
        ytid = row["ytid"].strip()
        start = _parse_seconds(row["start_s"], csv_path, row_number, "start_s")
        end = _parse_seconds(row["end_s"], csv_path, row_number, "end_s")
        caption = _caption(row["caption"], csv_path, row_number, "caption")
        names = _names(patterns, ytid=ytid, start=_seconds_text(start), end=_seconds_text(end))
        audio_path = index.find(names)
        if audio_path is None:
            missing.append(ytid)
        else:
            clips.append(BenchmarkClip(ytid, audio_path, (caption,), start, end))
    return _finish("musiccaps", split, clips, missing, index.audio_dir)


SONG_DESCRIBER_FILENAME_PATTERNS = ("{path}", "{path}.2min", "{track_id}.2min", "{track_id}")


def load_song_describer(
    csv_path: str | os.PathLike,
    audio_dir: str | os.PathLike,
    valid_subset_only: bool = False,
    filename_patterns: Sequence[str] = (),
) -> Benchmark:
    """
    Reads the Song Describer Dataset.

    Args:
        csv_path (`str` or `os.PathLike`): `song_describer.csv`.
        audio_dir (`str` or `os.PathLike`): folder with the tracks (e.g. the release's `audio/`, where the CSV's
            `path` `34/1004034.mp3` is stored as `34/1004034.2min.mp3`).
        valid_subset_only (`bool`, *optional*, defaults to `False`): keep only captions with `is_valid_subset` true.
            The paper evaluates on all captions.
        filename_patterns (`Sequence[str]`, *optional*): extra names to try, format strings with `{track_id}` and
            `{path}` (the CSV's path without extension); tried before `SONG_DESCRIBER_FILENAME_PATTERNS`.

    Returns:
        `Benchmark`: one clip per `track_id`, all of its captions as references, in CSV order.
    """
    csv_path = Path(csv_path)
    rows = _read_csv(csv_path, SONG_DESCRIBER_COLUMNS)
    index = AudioIndex(audio_dir)
    patterns = (*filename_patterns, *SONG_DESCRIBER_FILENAME_PATTERNS)
    tracks: dict[str, dict] = {}
    for row_number, row in enumerate(rows, start=1):
        if valid_subset_only and not _parse_bool(row["is_valid_subset"], csv_path, row_number, "is_valid_subset"):
            continue
        track_id = row["track_id"].strip()
        caption = _caption(row["caption"], csv_path, row_number, "caption")
        track = tracks.setdefault(track_id, {"path": row["path"].strip(), "captions": []})
        track["captions"].append(caption)
    clips, missing = [], []
    for track_id, track in tracks.items():
        relative = Path(track["path"]).with_suffix("").as_posix() if track["path"] else track_id
        audio_path = index.find(_names(patterns, track_id=track_id, path=relative))
        if audio_path is None:
            missing.append(track_id)
        else:
            clips.append(BenchmarkClip(track_id, audio_path, tuple(track["captions"])))
    split = "valid subset" if valid_subset_only else "all"
    return _finish("song_describer", split, clips, missing, index.audio_dir)


YT8M_MTC_FILENAME_PATTERNS = (
    "{video_id}",
    "[{video_id}]-[{start}-{end}]",
    "{video_id}_{start}-{end}",
    "{video_id}_{start}_{end}",
)


def load_yt8m_musictextclips(
    csv_paths: str | os.PathLike | Sequence[str | os.PathLike],
    audio_dir: str | os.PathLike,
    filename_patterns: Sequence[str] = (),
) -> Benchmark:
    """
    Reads YouTube8M-MusicTextClips.

    Args:
        csv_paths (`str`, `os.PathLike` or a sequence of them): `test.csv`, or `[train.csv, test.csv]` for all 4k
            clips as in the paper.
        audio_dir (`str` or `os.PathLike`): folder with the 10 s clips.
        filename_patterns (`Sequence[str]`, *optional*): extra names to try, format strings with `{video_id}`,
            `{start}`, `{end}`; tried before `YT8M_MTC_FILENAME_PATTERNS`.

    Returns:
        `Benchmark`: one clip per (`video_id`, `start`, `end`), its captions as references. The clip id is the
        `video_id`, with `_{start}-{end}` appended when a video has several clips.
    """
    if isinstance(csv_paths, (str, os.PathLike)):
        csv_paths = [csv_paths]
    if len(csv_paths) == 0:
        raise ValueError("`csv_paths` must name at least one YouTube8M-MusicTextClips CSV")
    segments: dict[tuple[str, float, float], list[str]] = {}
    for csv_path in map(Path, csv_paths):
        for row_number, row in enumerate(_read_csv(csv_path, YT8M_MTC_COLUMNS), start=1):
            start = _parse_seconds(row["start"], csv_path, row_number, "start")
            end = _parse_seconds(row["end"], csv_path, row_number, "end")
            key = (row["video_id"].strip(), start, end)
            segments.setdefault(key, []).append(_caption(row["text"], csv_path, row_number, "text"))
    clips_per_video: dict[str, int] = {}
    for video_id, _, _ in segments:
        clips_per_video[video_id] = clips_per_video.get(video_id, 0) + 1
    index = AudioIndex(audio_dir)
    patterns = (*filename_patterns, *YT8M_MTC_FILENAME_PATTERNS)
    clips, missing = [], []
    for (video_id, start, end), captions in segments.items():
        start_text, end_text = _seconds_text(start), _seconds_text(end)
        clip_id = video_id if clips_per_video[video_id] == 1 else f"{video_id}_{start_text}-{end_text}"
        # A video with several clips cannot be found by its bare id.
        video_patterns = patterns if clips_per_video[video_id] == 1 else [p for p in patterns if "{start}" in p]
        audio_path = index.find(_names(video_patterns, video_id=video_id, start=start_text, end=end_text))
        if audio_path is None:
            missing.append(clip_id)
        else:
            clips.append(BenchmarkClip(clip_id, audio_path, tuple(captions), start, end))
    split = "+".join(Path(csv_path).stem for csv_path in csv_paths)
    return _finish("yt8m_musictextclips", split, clips, missing, index.audio_dir)


BENCHMARKS = {
    "musiccaps": load_musiccaps,
    "song_describer": load_song_describer,
    "yt8m_musictextclips": load_yt8m_musictextclips,
}
