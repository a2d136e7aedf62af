"""The JSON Lines journal behind `blap caption` and `blap evaluate`: what a crash leaves behind is read, repaired and
appended to without losing a complete line; rewrites are atomic; the latest record per item wins."""

import json
from pathlib import Path

import pytest

from transformers_blap.journal import Journal, error_text, latest_per_key


def is_track(record: dict) -> bool:
    return "path" in record


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_a_line_torn_inside_a_character_is_dropped_and_appending_goes_on(tmp_path):
    path = tmp_path / "out.jsonl"
    with Journal(path, is_track) as journal:
        journal.append({"path": "/a.wav", "caption": "café au lait", "error": None})
        journal.append({"path": "/b.wav", "caption": None, "error": "RuntimeError: boom"})
    complete = path.read_bytes()
    torn = '{"path": "/c.wav", "caption": "naïve'.encode()
    torn = torn[: torn.index("ï".encode()) + 1]  # killed between the two bytes of "ï"
    path.write_bytes(complete + torn)

    journal = Journal(path, is_track)
    assert [record["path"] for record in journal.records()] == ["/a.wav", "/b.wav"]
    assert path.read_bytes() == complete + torn, "reading leaves the file as it is"
    assert journal.resume() == 1
    assert path.read_bytes() == complete
    with journal:
        journal.append({"path": "/c.wav", "caption": "naïve", "error": None})
    assert [json.loads(line)["path"] for line in lines(path)] == ["/a.wav", "/b.wav", "/c.wav"]


def test_resume_keeps_lines_as_written_and_drops_what_the_caller_rejects(tmp_path):
    path = tmp_path / "out.jsonl"
    kept = ['{"path": "/a.wav",   "caption": "x", "error": null}\n', '{"path": "/c.wav", "caption": "\\u00e9"}\n']
    other = ['["not", "a", "record"]\n', '{"id": 3}\n', "\n"]
    failed = '{"path": "/b.wav", "caption": null, "error": "E"}\n'
    path.write_text(kept[0] + other[0] + failed + other[1] + other[2] + kept[1], encoding="utf-8")

    assert Journal(path, is_track).resume(keep=lambda record: record.get("error") is None) == 3
    assert lines(path) == kept


def test_a_complete_last_line_without_its_newline_is_kept_and_ended(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"path": "/a.wav"}\n{"path": "/b.wav"}', encoding="utf-8")
    journal = Journal(path, is_track)
    assert journal.resume() == 0
    with journal:
        journal.append({"path": "/c.wav"})
    assert [record["path"] for record in journal.records()] == ["/a.wav", "/b.wav", "/c.wav"]
    assert lines(path)[1] == '{"path": "/b.wav"}\n'


def test_resume_leaves_a_clean_file_untouched_and_creates_none(tmp_path):
    missing = Journal(tmp_path / "missing.jsonl")
    assert missing.resume() == 0 and missing.records() == [] and not missing.path.exists()
    path = tmp_path / "out.jsonl"
    path.write_text('{"path": "/a.wav"}\n', encoding="utf-8")
    before = path.stat().st_mtime_ns, path.stat().st_ino
    assert Journal(path, is_track).resume() == 0
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == before


def test_a_rewrite_that_fails_midway_leaves_the_old_file(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"path": "/old.wav"}\n', encoding="utf-8")

    def records():
        yield {"path": "/new.wav"}
        raise OSError("disk full (simulated)")

    with pytest.raises(OSError, match="disk full"):
        Journal(path).rewrite(records())
    assert path.read_text(encoding="utf-8") == '{"path": "/old.wav"}\n'
    Journal(path).rewrite([{"path": "/new.wav", "caption": "ü"}])
    assert path.read_text(encoding="utf-8") == '{"path": "/new.wav", "caption": "ü"}\n'


def test_appending_outside_the_context_names_the_file(tmp_path):
    with pytest.raises(RuntimeError, match=r"out\.jsonl: append to a journal inside `with journal:`"):
        Journal(tmp_path / "out.jsonl").append({"path": "/a.wav"})


def test_latest_per_key_keeps_first_seen_order_and_settled_records():
    records = [
        {"path": "a", "ok": False, "n": 1},
        {"path": "b", "ok": True, "n": 2},
        {"path": "a", "ok": True, "n": 3},
        {"path": "b", "ok": False, "n": 4},  # a later failure does not undo a success
        {"path": "a", "ok": True, "n": 5},  # a later success replaces an earlier one
    ]
    latest = latest_per_key(records, lambda record: record["path"], settled=lambda record: record["ok"])
    assert list(latest) == ["a", "b"] and [record["n"] for record in latest.values()] == [5, 2]
    assert [record["n"] for record in latest_per_key(records, lambda record: record["path"]).values()] == [5, 4]


def test_a_failure_is_recorded_in_one_line():
    error = RuntimeError("cannot decode /music/a.mp3:\n  invalid data\tfound")
    assert error_text(error) == "RuntimeError: cannot decode /music/a.mp3: invalid data found"
