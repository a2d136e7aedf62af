"""Benchmark readers on small CSVs with the public files' columns; missing audio is counted and reported."""

import logging
import shutil
from pathlib import Path

import pytest

from transformers_blap.evaluation.benchmarks import (
    AudioIndex,
    load_musiccaps,
    load_song_describer,
    load_yt8m_musictextclips,
)

DATA = Path(__file__).parent / "data"


def _touch(directory: Path, *names: str) -> None:
    for name in names:
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"RIFF")


def test_musiccaps_eval_split_with_the_usual_file_names(tmp_path, caplog):
    _touch(tmp_path, "aaaTestClip1.wav", "nested/[-ccTestClip3]-[0-10].flac", "eeeTestClip5_120-130.mp3")
    _touch(tmp_path, "bbbTestClip2.wav", "notes.txt", "ddd_TestClp4.txt")
    with caplog.at_level(logging.WARNING):
        benchmark = load_musiccaps(DATA / "musiccaps_sample.csv", tmp_path)
    assert [clip.clip_id for clip in benchmark.clips] == ["aaaTestClip1", "-ccTestClip3", "eeeTestClip5"]
    assert benchmark.clips[1].audio_path == tmp_path / "nested" / "[-ccTestClip3]-[0-10].flac"
    rubab = 'A rubab plays a repetitive melody, "like a chant", on different octaves.'
    assert benchmark.clips[2].references == (rubab,)
    assert (benchmark.clips[2].start_s, benchmark.clips[2].end_s) == (120.0, 130.0)
    assert benchmark.missing_audio == ["ddd_TestClp4"]
    summary = benchmark.summary()
    assert summary["clips_listed"] == 4 and summary["clips_with_audio"] == 3 and summary["clips_missing_audio"] == 1
    assert summary["missing_audio_clip_ids"] == ["ddd_TestClp4"]
    assert "musiccaps (eval): 4 clips listed, 3 with audio, 1 missing audio" in benchmark.describe()
    assert "ddd_TestClp4" in caplog.text


@pytest.mark.parametrize(("split", "expected"), [("train", ["bbbTestClip2", "fffTestClip6"]), ("all", 6)])
def test_musiccaps_other_splits(tmp_path, split, expected):
    benchmark = load_musiccaps(DATA / "musiccaps_sample.csv", tmp_path, split=split)
    assert benchmark.clips == []
    if isinstance(expected, list):
        assert benchmark.missing_audio == expected
    else:
        assert benchmark.num_listed == expected


def test_musiccaps_own_file_names_and_extension_preference(tmp_path):
    _touch(tmp_path, "clip-aaaTestClip1.mp3", "clip-aaaTestClip1.wav")
    benchmark = load_musiccaps(DATA / "musiccaps_sample.csv", tmp_path, filename_patterns=["clip-{ytid}"])
    assert [clip.audio_path.name for clip in benchmark.clips] == ["clip-aaaTestClip1.wav"]


def test_song_describer_groups_captions_by_track(tmp_path):
    _touch(tmp_path, "audio/01/900001.2min.mp3", "900003.mp3")
    benchmark = load_song_describer(DATA / "song_describer_sample.csv", tmp_path / "audio")
    assert [clip.clip_id for clip in benchmark.clips] == ["900001"]
    assert benchmark.clips[0].references == (
        "An electronic tune with a driving beat, airy pads and a distant female vocal. Good for a night drive.",
        "Dark synthwave track; pulsing bass, gated snare, and a melancholic lead.",
        "A slow electronic song with a woman singing softly.",
    )
    assert benchmark.missing_audio == ["900002", "900003"], "900003.mp3 lies outside the audio folder"
    assert benchmark.summary()["references"] == 3

    everything = load_song_describer(DATA / "song_describer_sample.csv", tmp_path)
    assert [clip.clip_id for clip in everything.clips] == ["900001", "900003"]
    valid = load_song_describer(DATA / "song_describer_sample.csv", tmp_path, valid_subset_only=True)
    assert len(valid.clips[0].references) == 2 and valid.split == "valid subset"


def test_yt8m_musictextclips_from_both_files(tmp_path):
    _touch(tmp_path, "vidTest0001_100-110.wav", "vidTest0001.wav", "vidTest0003.wav", "[vidTest-004]-[30.5-40.5].wav")
    benchmark = load_yt8m_musictextclips([DATA / "yt8m_mtc_train.csv", DATA / "yt8m_mtc_test.csv"], tmp_path)
    ids = [clip.clip_id for clip in benchmark.clips]
    assert ids == ["vidTest0001_100-110", "vidTest0003", "vidTest-004"]
    # A video with two clips is only found by names that carry the times, never by its bare id.
    assert benchmark.missing_audio == ["vidTest0002", "vidTest0001_200-210"]
    assert benchmark.clips[1].references == (
        "An orchestral piece with strings and choir; very dramatic.",
        "Epic cinematic music with a choir and big drums.",
    )
    assert benchmark.clips[2].start_s == 30.5
    assert (benchmark.name, benchmark.split) == ("yt8m_musictextclips", "yt8m_mtc_train+yt8m_mtc_test")

    test_only = load_yt8m_musictextclips(DATA / "yt8m_mtc_test.csv", tmp_path)
    assert [clip.clip_id for clip in test_only.clips] == ["vidTest0001", "vidTest0003", "vidTest-004"]


def test_bad_files_are_named(tmp_path):
    broken = tmp_path / "musiccaps.csv"
    broken.write_text("ytid,start_s,end_s,caption\nabc,0,10,a song\n")
    with pytest.raises(ValueError, match=r"musiccaps.csv must have the columns .* it lacks \['is_audioset_eval'\]"):
        load_musiccaps(broken, tmp_path)
    broken.write_text("ytid,start_s,end_s,caption,is_audioset_eval\nabc,0,10,a song,maybe\n")
    with pytest.raises(ValueError, match=r"data row 1: `is_audioset_eval` must be True or False; got 'maybe'"):
        load_musiccaps(broken, tmp_path)
    broken.write_text("ytid,start_s,end_s,caption,is_audioset_eval\nabc,zero,10,a song,True\n")
    with pytest.raises(ValueError, match=r"`start_s` must be a number of seconds; got 'zero'"):
        load_musiccaps(broken, tmp_path)
    broken.write_text("video_id,start,end,text\nabc,0,10,\n")
    with pytest.raises(ValueError, match=r"data row 1: `text` is empty"):
        load_yt8m_musictextclips(broken, tmp_path)
    with pytest.raises(FileNotFoundError, match="the benchmark CSV .*absent.csv does not exist"):
        load_song_describer(tmp_path / "absent.csv", tmp_path)
    with pytest.raises(FileNotFoundError, match="`audio_dir` .*no-audio is not a folder"):
        load_musiccaps(DATA / "musiccaps_sample.csv", tmp_path / "no-audio")
    with pytest.raises(ValueError, match="`split` must be 'eval', 'train' or 'all'"):
        load_musiccaps(DATA / "musiccaps_sample.csv", tmp_path, split="test")
    with pytest.raises(ValueError, match="at least one"):
        load_yt8m_musictextclips([], tmp_path)


def test_audio_index_ignores_other_files(tmp_path):
    _touch(tmp_path, "a.WAV", "b.json", "sub/c.ogg")
    shutil.copy(DATA / "musiccaps_sample.csv", tmp_path / "d.csv")
    index = AudioIndex(tmp_path)
    assert index.find(["b", "a"]) == tmp_path / "a.WAV"
    assert index.find(["sub/c"]) == index.find(["c"]) == tmp_path / "sub" / "c.ogg"
    assert index.find(["d", "b"]) is None
