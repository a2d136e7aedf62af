"""`blap caption-ray` on a local Ray instance with 2 CPU workers: the same records as `blap caption`, and every input
exactly once when an actor process is killed mid-run."""

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import ray
from transformers import pipeline

from transformers_blap.captioning import caption_files, read_records
from transformers_blap.cli import main

from blap_testing import save_tiny_blap, tone, write_audio

ACTOR_TITLE = "ray::MapWorker(MapBatches(Captioner))"  # the process title of a captioner actor


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, t5_tokenizer_dir):
    return save_tiny_blap(tmp_path_factory.mktemp("tiny-blap"), t5_tokenizer_dir)


def audio_files(folder: Path, count: int) -> list[str]:
    return [str(write_audio(folder / f"{i}.wav", tone(1.5, frequency=200.0 + 90.0 * i, seed=i))) for i in range(count)]


def parquet_records(folder: Path) -> dict[str, dict]:
    records = pq.read_table(folder).to_pylist()
    paths = [record["path"] for record in records]
    assert len(paths) == len(set(paths)), "one record per input"
    return {record["path"]: record for record in records}


def test_same_records_as_the_single_process_run(local_ray, model_dir, tmp_path):
    files = audio_files(tmp_path / "music", 5)
    corrupt = tmp_path / "music" / "corrupt.wav"
    corrupt.write_bytes(b"not audio at all")
    files.append(str(corrupt))
    journal = tmp_path / "single.jsonl"
    captioner = pipeline("audio-to-text", model=str(model_dir), device="cpu")
    caption_files(captioner, files, journal, batch_size=4, progress=False)
    expected = {record["path"]: record for record in read_records(journal)}

    output = tmp_path / "ray-out"
    status = main(
        ["caption-ray", *files, "--model", str(model_dir), "--output", str(output), "--num-actors", "2"]
        + ["--files-per-task", "2", "--batch-size", "4"]
    )
    assert status == 1  # the corrupt file
    records = parquet_records(output)
    assert records == expected
    assert records[str(corrupt)]["caption"] is None and "corrupt.wav" in records[str(corrupt)]["error"]
    assert all(isinstance(records[path]["caption"], str) for path in files[:-1])


def test_every_input_once_when_an_actor_is_killed(local_ray, model_dir, tmp_path):
    from transformers_blap.ray_jobs import caption_with_ray

    files = audio_files(tmp_path / "music", 10)
    output = tmp_path / "ray-out"
    killed: list[tuple[int, int]] = []  # (pid, parts written when it was killed)
    finished = threading.Event()

    def kill_an_actor_mid_run() -> None:
        while not finished.is_set() and not killed:
            parts = len(list(output.glob("*.parquet"))) if output.exists() else 0
            actors = [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""])[0] == ACTOR_TITLE]
            if parts >= 1 and actors:
                os.kill(actors[0].pid, signal.SIGKILL)
                killed.append((actors[0].pid, parts))
            time.sleep(0.02)

    killer = threading.Thread(target=kill_an_actor_mid_run)
    killer.start()
    try:
        errors = caption_with_ray(files, str(model_dir), output, num_actors=2, files_per_task=1, batch_size=2)
    finally:
        finished.set()
        killer.join()
    assert killed, "no actor process was found to kill"
    assert killed[0][1] < len(files), "the actor was killed after the run"
    assert errors == {}
    records = parquet_records(output)
    assert sorted(records) == sorted(files)
    assert all(isinstance(record["caption"], str) and record["error"] is None for record in records.values())
