import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import pipeline

from transformers_blap import AudioToTextPipeline
from transformers_blap.captioning import expand_inputs, read_records
from transformers_blap.cli import main

from blap_testing import RATE, save_tiny_blap, tone, write_audio

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, t5_tokenizer_dir):
    return save_tiny_blap(tmp_path_factory.mktemp("tiny-blap"), t5_tokenizer_dir)


@pytest.fixture(scope="module")
def captioner(model_dir):
    return pipeline("audio-to-text", model=str(model_dir), device="cpu")


def caption(*args: str) -> int:
    return main(["caption", *map(str, args), "--no-progress"])


def records_by_path(output: Path) -> dict[str, dict]:
    records = read_records(output)
    assert len(records) == len({record["path"] for record in records}), "one line per input"
    return {record["path"]: record for record in records}


@pytest.fixture
def music_folder(tmp_path):
    """A corrupt file, a 0.3 s clip, a stereo 44.1 kHz MP3, a silent file, a text file and a nested clip."""
    folder = tmp_path / "music"
    folder.mkdir()
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + os.urandom(200))
    write_audio(folder / "short.wav", tone(0.3, frequency=300.0))
    write_audio(folder / "stereo.mp3", tone(2.5, rate=44_100, channels=2, frequency=500.0), rate=44_100)
    write_audio(folder / "silent.flac", np.zeros(int(1.5 * RATE), dtype=np.float32))
    (folder / "notes.txt").write_text("not audio\n")
    write_audio(folder / "nested" / "deeper" / "clip.ogg", tone(1.2, frequency=900.0))
    return folder


def test_folder_with_bad_and_odd_files(music_folder, model_dir, captioner, tmp_path):
    output = tmp_path / "captions.jsonl"
    assert caption(music_folder, "--model", model_dir, "--output", output, "--batch-size", "3") == 1
    records = records_by_path(output)
    audio = {
        name: str(music_folder / name) for name in ("short.wav", "stereo.mp3", "silent.flac", "nested/deeper/clip.ogg")
    }
    corrupt = str(music_folder / "corrupt.wav")
    assert set(records) == {*audio.values(), corrupt}  # nothing for notes.txt

    failed = records[corrupt]
    assert failed["caption"] is None and failed["windows"] == [] and failed["duration"] is None
    assert "corrupt.wav" in failed["error"]
    for name, path in audio.items():
        record = records[path]
        assert record["error"] is None, name
        assert record["caption"] and record["windows"], name
        expected = captioner(path)[0]
        assert record["caption"] == expected["generated_text"], name
        assert record["windows"] == expected["windows"], name
        assert record["warnings"] == expected["warnings"] == (["silent"] if name == "silent.flac" else []), name
        assert record["duration"] == record["windows"][-1]["end"]
    assert records[audio["short.wav"]]["duration"] == pytest.approx(0.3)
    assert records[audio["stereo.mp3"]]["duration"] == pytest.approx(2.5, abs=0.06)  # MP3 frames pad the end
    assert len(records[audio["stereo.mp3"]]["windows"]) == 3


def test_inputs_from_lists_folders_and_files(tmp_path):
    for name in ("a.wav", "b.flac", "sub/c.mp3", "sub/readme.md", "d.WAV"):
        (tmp_path / "lib" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "lib" / name).write_bytes(b"")
    listing = tmp_path / "lib" / "list.txt"
    listing.write_text("# my picks\n\na.wav\nsub\n" + str(tmp_path / "elsewhere.opus") + "\n")
    lib = tmp_path / "lib"
    expanded = expand_inputs([listing, lib / "x.unknown", lib, str(lib / "a.wav")])
    assert expanded == [
        str(lib / "a.wav"),
        str(lib / "sub" / "c.mp3"),
        str(tmp_path / "elsewhere.opus"),  # listed: kept even though it does not exist (it gets an error line)
        str(lib / "x.unknown"),  # named explicitly: taken whatever its extension
        str(lib / "b.flac"),
        str(lib / "d.WAV"),
    ]


def test_resume_after_interrupt_loses_nothing_and_redoes_nothing(model_dir, tmp_path, monkeypatch):
    folder = tmp_path / "music"
    for index in range(5):
        write_audio(folder / f"{index}.wav", tone(0.8 + 0.4 * index, frequency=200.0 * (index + 1), seed=index))
    (folder / "5-broken.wav").write_bytes(b"definitely not audio")
    args = [folder, "--model", model_dir, "--batch-size", "1"]
    reference = tmp_path / "reference.jsonl"
    assert caption(*args, "--output", reference) == 1

    # Interrupt the run in the middle of the third file (Ctrl-C during generation).
    output = tmp_path / "captions.jsonl"
    original_forward = AudioToTextPipeline._forward
    calls = {"count": 0}

    def interrupted_forward(self, *forward_args, **forward_kwargs):
        calls["count"] += 1
        if calls["count"] == 4:  # files 0 and 1 have one window each; this is the second window of file 2
            raise KeyboardInterrupt
        return original_forward(self, *forward_args, **forward_kwargs)

    monkeypatch.setattr(AudioToTextPipeline, "_forward", interrupted_forward)
    assert caption(*args, "--output", output) == 130
    monkeypatch.setattr(AudioToTextPipeline, "_forward", original_forward)
    done_before = read_records(output)
    assert [Path(record["path"]).name for record in done_before] == ["0.wav", "1.wav"]
    with open(output, "a", encoding="utf-8") as handle:  # as if killed while writing a line
        handle.write('{"path": "' + str(folder / "2.wav") + '", "capt')

    original_preprocess = AudioToTextPipeline.preprocess
    started = []

    def recording_preprocess(self, inputs, **kwargs):
        started.append(Path(inputs).name)
        return original_preprocess(self, inputs, **kwargs)

    monkeypatch.setattr(AudioToTextPipeline, "preprocess", recording_preprocess)
    assert caption(*args, "--output", output) == 1
    assert started == ["2.wav", "3.wav", "4.wav", "5-broken.wav"]
    assert read_records(output)[:2] == done_before
    assert records_by_path(output) == records_by_path(reference)

    # A third run only retries the failed file; its error line is replaced, not duplicated.
    started.clear()
    assert caption(*args, "--output", output) == 1
    assert started == ["5-broken.wav"]
    assert records_by_path(output) == records_by_path(reference)


def test_progress_bar_on_stderr(model_dir, tmp_path, capsys):
    write_audio(tmp_path / "a.wav", tone(1.0))
    assert (
        main(["caption", str(tmp_path / "a.wav"), "--model", str(model_dir), "--output", str(tmp_path / "o.jsonl")])
        == 0
    )
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "100%" in captured.err and "1/1" in captured.err and "<" in captured.err  # elapsed<remaining (ETA)


def test_usage_errors(model_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert caption(tmp_path / "empty", "--model", model_dir, "--output", tmp_path / "o.jsonl") == 2
    assert "no audio files found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        caption(tmp_path, "--model", model_dir, "--output", tmp_path / "o.jsonl", "--batch-size", "0")
    # Bad window settings stop the run before any input, instead of failing every input.
    write_audio(tmp_path / "a.wav", tone(1.0))
    assert caption(tmp_path / "a.wav", "--model", model_dir, "--output", tmp_path / "o.jsonl", "--window-s", "5") == 2
    assert "longer than the model's 1 s window" in capsys.readouterr().err
    assert caption(tmp_path / "a.wav", "--model", model_dir, "--output", tmp_path / "o.jsonl", "--hop-s", "0") == 2
    assert "`hop_s` must be in (0, window_s=1]" in capsys.readouterr().err
    assert read_records(tmp_path / "o.jsonl") == []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launcher_command(launcher: str) -> list[str]:
    """The README's launch commands for 2 CPU processes."""
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"] + [
            "-m",
            "transformers_blap.cli",
        ]
    accelerate = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    return (
        accelerate
        + ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
        + [
            "--no_python",
            "blap",
        ]
    )


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_sharded_run_merges_whatever_a_shard_failed(model_dir, captioner, tmp_path, launcher):
    folder = tmp_path / "music"
    good = [write_audio(folder / f"{i}.wav", tone(0.5 + 0.4 * i, frequency=150.0 * (i + 1))) for i in range(4)]
    zero_bytes = folder / "zero.wav"
    zero_bytes.write_bytes(b"")
    nan_wav = write_audio(
        folder / "nan.wav", np.array([0.0, 0.5, np.nan, 0.1] * 400, dtype=np.float32), subtype="FLOAT"
    )
    # Rank 0 takes inputs 0, 2, 4; rank 1 takes 1, 3, 5: the zero-byte and NaN files and good[3].
    inputs = [str(path) for path in (good[0], zero_bytes, good[1], nan_wav, good[2], good[3])]
    (tmp_path / "inputs.txt").write_text("\n".join(inputs) + "\n")
    output = tmp_path / "captions.jsonl"
    # 50,000 records of another run, so that the merge takes a while (it was killed midway when a failed rank exited).
    others = [
        {"path": f"/elsewhere/{i}.wav", "caption": f"song {i}", "windows": [], "duration": 1.0, "error": None}
        for i in range(50_000)
    ]
    output.write_text("".join(json.dumps(record) + "\n" for record in others))
    # Rank 1 had finished good[3] in an earlier, interrupted run: it is not redone.
    precomputed = {"path": inputs[5], "caption": "precomputed", "windows": [], "duration": 2.0, "error": None}
    Path(f"{output}.part-1-of-2").write_text(json.dumps(precomputed) + "\n")

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    completed = subprocess.run(
        launcher_command(launcher)
        + ["caption", str(tmp_path / "inputs.txt"), "--model", str(model_dir), "--output", str(output)]
        + ["--batch-size", "2", "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 1, completed.stderr[-3000:]  # failed inputs, not a killed process
    for bad in (zero_bytes, nan_wav):  # reported once, by rank 0, after the merge
        assert completed.stderr.count(f"blap caption: failed: {bad}:") == 1, completed.stderr[-3000:]
    assert not re.search(r"File .*transformers_blap", completed.stderr)  # no traceback from our processes
    assert re.search(r"rank 0/2: 100%.* 3/3 ", completed.stderr), completed.stderr[-3000:]
    assert re.search(r"rank 1/2: 100%.* 2/2 ", completed.stderr), completed.stderr[-3000:]

    records = read_records(output)
    assert records[:50_000] == others
    assert [record["path"] for record in records[50_000:]] == inputs  # merged in input order, one line each
    assert not list(tmp_path.glob("captions.jsonl.part-*"))
    merged = records_by_path(output)
    assert merged[inputs[5]] == precomputed
    assert "the file is empty (0 bytes)" in merged[str(zero_bytes)]["error"]
    assert "NaN or Inf samples" in merged[str(nan_wav)]["error"]
    for path in inputs[0], inputs[2], inputs[4]:
        assert merged[path]["caption"] == captioner(path)[0]["generated_text"]


def test_blap_command_lists_its_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for command in ("caption", "push", "convert-original", "evaluate", "setup-metrics"):
        assert f"    {command}" in help_text, command
