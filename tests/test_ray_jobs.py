"""`blap caption-ray` and `blap index-ray` on a local Ray instance with 2 CPU workers, from files and from a dataset:
the same records and the same index as `blap caption` / `blap index`, and every input exactly once when an actor
process is killed mid-run."""

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import datasets
import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import ray
from transformers import pipeline

from transformers_blap.captioning import caption_files, read_records
from transformers_blap.cli import main
from transformers_blap.search import AudioSearchIndex

from blap_testing import save_tiny_blap, save_tiny_stage1, tone, write_audio


def actor_title(actor_class: str) -> str:
    """The process title of a Ray Data actor of `actor_class` (`Captioner`, `Embedder`)."""
    return f"ray::MapWorker(MapBatches({actor_class}))"


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


@contextlib.contextmanager
def killing_an_actor(actor_class: str, parts: Path) -> list[tuple[int, int]]:
    """
    While the block runs, SIGKILL one actor process of `actor_class` as soon as the first Parquet part is in `parts`.

    Yields:
        the kills, `(pid, parts written when it was killed)`: one once it happened.
    """
    killed: list[tuple[int, int]] = []
    finished = threading.Event()
    title = actor_title(actor_class)

    def kill_an_actor_mid_run() -> None:
        while not finished.is_set() and not killed:
            written = len(list(parts.glob("*.parquet"))) if parts.exists() else 0
            actors = [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""])[0] == title]
            if written >= 1 and actors:
                os.kill(actors[0].pid, signal.SIGKILL)
                killed.append((actors[0].pid, written))
            time.sleep(0.02)

    killer = threading.Thread(target=kill_an_actor_mid_run)
    killer.start()
    try:
        yield killed
    finally:
        finished.set()
        killer.join()


def test_every_input_once_when_an_actor_is_killed(local_ray, model_dir, tmp_path):
    from transformers_blap.ray_jobs import caption_with_ray

    files = audio_files(tmp_path / "music", 10)
    output = tmp_path / "ray-out"
    with killing_an_actor("Captioner", output) as killed:
        errors = caption_with_ray(files, str(model_dir), output, num_actors=2, files_per_task=1, batch_size=2)
    assert killed, "no actor process was found to kill"
    assert killed[0][1] < len(files), "the actor was killed after the run"
    assert errors == {}
    records = parquet_records(output)
    assert sorted(records) == sorted(files)
    assert all(isinstance(record["caption"], str) and record["error"] is None for record in records.values())


def saved_dataset(folder: Path, files: list[str]) -> Path:
    """`files` as the `audio` column (bytes embedded) of a dataset saved with `save_to_disk`."""
    rows = {"audio": files, "title": [Path(path).stem for path in files]}
    datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio()).save_to_disk(str(folder))
    return folder


def test_caption_a_dataset_as_the_single_process_run(local_ray, model_dir, tmp_path):
    saved = saved_dataset(tmp_path / "saved", audio_files(tmp_path / "music", 4))
    journal = tmp_path / "single.jsonl"
    assert main(["caption", "--dataset", str(saved), "--model", str(model_dir), "--output", str(journal)]) == 0
    expected = {record["id"]: record for record in read_records(journal)}

    output = tmp_path / "ray-out"
    status = main(
        ["caption-ray", "--dataset", str(saved), "--model", str(model_dir), "--output", str(output)]
        + ["--num-actors", "2", "--files-per-task", "2"]
    )
    assert status == 0
    records = pq.read_table(output).to_pylist()
    assert {record["id"]: record for record in records} == expected
    assert sorted(expected) == [0, 1, 2, 3] and len(records) == 4


def index_contents(index: AudioSearchIndex) -> dict:
    """What an index holds, comparable across builds: tracks, windows and the vectors in row order."""
    return {
        "tracks": index.tracks,
        "windows": (index.window_tracks.tolist(), index.window_starts.tolist(), index.window_ends.tolist()),
        "vectors": index.index.reconstruct_n(0, index.index.ntotal),
        "failures": index.metadata["failures"],
    }


@pytest.fixture(scope="module")
def stage1_dir(tmp_path_factory, fixture_dir) -> Path:
    return save_tiny_stage1(tmp_path_factory.mktemp("stage1"), fixture_dir)


def test_index_files_and_a_dataset_as_the_single_process_run(local_ray, stage1_dir, tmp_path, capsys):
    files = [
        str(write_audio(tmp_path / "music" / f"{i}.wav", tone(seconds, frequency=220.0 * (i + 1), seed=i)))
        for i, seconds in enumerate([1.0, 2.5, 0.6, 1.0, 3.0])
    ]
    broken = tmp_path / "music" / "broken.wav"
    broken.write_bytes(b"RIFF not really")
    single, ray_files, ray_rows = tmp_path / "single", tmp_path / "ray-files", tmp_path / "ray-rows"
    pool = ["--num-actors", "2", "--files-per-task", "2"]
    assert main(["index", str(tmp_path / "music"), "--model", str(stage1_dir), "--output", str(single)]) == 1
    assert (
        main(["index-ray", str(tmp_path / "music"), "--model", str(stage1_dir), "--output", str(ray_files)] + pool)
        == 1
    )
    assert f"failed: {broken}" in capsys.readouterr().err
    saved = saved_dataset(tmp_path / "saved", files)
    assert (
        main(["index-ray", "--dataset", str(saved), "--model", str(stage1_dir), "--output", str(ray_rows)] + pool) == 0
    )

    expected = index_contents(AudioSearchIndex.load(single))
    from_files = index_contents(AudioSearchIndex.load(ray_files))
    np.testing.assert_allclose(from_files.pop("vectors"), expected["vectors"], atol=1e-6)
    assert from_files == {key: value for key, value in expected.items() if key != "vectors"}
    assert len(list((ray_files / "embeddings").glob("part-*.parquet"))) >= 3  # 6 inputs, 2 per task

    from_rows = index_contents(AudioSearchIndex.load(ray_rows))  # the rows are the files without the broken one
    np.testing.assert_allclose(from_rows.pop("vectors"), expected["vectors"], atol=1e-6)
    assert from_rows["tracks"] == ["0", "1", "2", "3", "4"] and from_rows["failures"] == {}
    assert from_rows["windows"] == expected["windows"]

    # Same neighbours: `blap search` over the Ray-built index finds the tracks the single-process index finds.
    for query in ("calm solo piano", "fast loud drums"):
        hits = [AudioSearchIndex.load(folder).search(query, k=3) for folder in (single, ray_files)]
        assert [(h.path, h.start, h.end) for h in hits[0]] == [(h.path, h.start, h.end) for h in hits[1]]
        np.testing.assert_allclose([h.score for h in hits[0]], [h.score for h in hits[1]], atol=1e-5)


def test_index_every_input_once_when_an_actor_is_killed(local_ray, stage1_dir, tmp_path):
    from transformers_blap.ray_jobs import index_with_ray

    files = audio_files(tmp_path / "music", 10)
    output = tmp_path / "index"
    with killing_an_actor("Embedder", output / "embeddings") as killed:
        index = index_with_ray(files, str(stage1_dir), output, num_actors=2, files_per_task=1)
    assert killed, "no actor process was found to kill"
    assert killed[0][1] < len(files), "the actor was killed after the run"
    assert index.tracks == files and index.metadata["failures"] == {}
    parts = pq.read_table(output / "embeddings").column("track").to_pylist()
    assert sorted(parts) == sorted(files)  # one embedding row per input, none twice
