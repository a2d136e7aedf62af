"""`blap caption` under faults: SIGKILL at random moments, SIGINT / SIGTERM, one file named two ways, bad models."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from transformers_blap.captioning import read_records
from transformers_blap.cli import main

from blap_testing import save_tiny_blap, tone, write_audio

SRC = Path(__file__).resolve().parents[1] / "src"
KILLS = 5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, t5_tokenizer_dir):
    return save_tiny_blap(tmp_path_factory.mktemp("tiny-blap"), t5_tokenizer_dir)


def caption(*args) -> int:
    return main(["caption", *map(str, args), "--no-progress"])


def start_caption(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "transformers_blap.cli", "caption", *map(str, args), "--no-progress"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def wait_for_lines(process: subprocess.Popen, output: Path, lines: int) -> bool:
    """Wait until `output` has `lines` complete lines; `False` if the process ended first."""
    while line_count(output) < lines:
        if process.poll() is not None:
            return False
        time.sleep(0.01)
    return True


def test_signals_at_random_moments_then_rerun_equals_an_uninterrupted_run(model_dir, tmp_path):
    """SIGINT and SIGTERM end a run with one line and 130 / 143; then SIGKILL at 5 random moments; the last rerun's
    output equals an uninterrupted run's: nothing lost, nothing twice, no torn line."""
    folder = tmp_path / "music"
    for index in range(20):  # 7 signals after at most 2 more lines each: the run cannot finish before the last
        write_audio(folder / f"{index:02d}.wav", tone(1.5 + 0.5 * (index % 3), frequency=110.0 * (index + 1)))
    (folder / "99-broken.wav").write_bytes(b"RIFF" + os.urandom(100))
    args = [folder, "--model", model_dir, "--batch-size", "1"]
    reference = tmp_path / "reference.jsonl"
    assert caption(*args, "--output", reference) == 1
    expected = read_records(reference)

    output = tmp_path / "captions.jsonl"
    rng = random.Random(17)
    signals = [signal.SIGINT, signal.SIGTERM] + [signal.SIGKILL] * KILLS
    for round_index, signum in enumerate(signals):
        process = start_caption(*args, "--output", output)
        # A random moment: after 1-2 more complete lines, plus up to 0.3 s (mid-generation, mid-write, mid-decode).
        running = wait_for_lines(process, output, len(read_records(output)) + rng.randint(1, 2))
        if running:
            time.sleep(rng.uniform(0.0, 0.3))
            process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
        assert running, f"the run ended before signal {round_index + 1}: use more or longer inputs"
        if signum != signal.SIGKILL:
            assert process.returncode == 128 + signum
            done = len(read_records(output))
            assert line_count(output) == done  # whole lines only
            assert stderr.strip().splitlines()[-1] == (
                f"blap caption: interrupted after {done} of {len(expected)}; rerun the same command to continue"
            )
            assert "Traceback" not in stderr and stderr.count("interrupted") == 1
        if round_index == 3:  # as if killed in the middle of writing a line: it is detected and redone
            with open(output, "a", encoding="utf-8") as handle:
                handle.write('{"path": "' + str(folder / "13.wav") + '", "caption": "half')
    process = start_caption(*args, "--output", output)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr[-2000:]  # only the broken file failed
    lines = output.read_text(encoding="utf-8").splitlines()
    records = read_records(output)
    assert len(lines) == len(records) == len(expected)  # no duplicate, no torn line left
    assert sorted(records, key=lambda r: r["path"]) == sorted(expected, key=lambda r: r["path"])


def test_one_file_named_two_ways_is_captioned_once(model_dir, tmp_path, monkeypatch):
    music = tmp_path / "music"
    real = write_audio(music / "a.wav", tone(1.0))
    (tmp_path / "link.wav").symlink_to(real)
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "captions.jsonl"
    assert caption("music/a.wav", real, "--model", model_dir, "--output", output) == 0
    records = read_records(output)
    assert [record["path"] for record in records] == [str(real.resolve())]
    # A rerun naming it through a symlink and a relative path with `..` finds it done.
    assert caption(tmp_path / "link.wav", "music/../music/a.wav", "--model", model_dir, "--output", output) == 0
    assert read_records(output) == records


def test_unreadable_model_is_one_line_unless_debug(model_dir, tmp_path, capsys, monkeypatch):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for item in model_dir.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    weights = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # truncated download
    audio = write_audio(tmp_path / "a.wav", tone(1.0))
    args = [audio, "--model", broken, "--output", tmp_path / "o.jsonl"]
    assert caption(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"blap caption: error: cannot load the model {broken}: "), err
    monkeypatch.setenv("BLAP_DEBUG", "1")
    assert caption(*args) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    monkeypatch.delenv("BLAP_DEBUG")
    assert main(["--debug", "caption", *map(str, args)]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err
