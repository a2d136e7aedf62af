"""`blap index` / `blap search` and `transformers_blap.search`: text search over the windows of a music library."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from transformers_blap import BlapForRepresentationLearning, BlapStage1Processor
from transformers_blap.cli import main
from transformers_blap.search import (
    HNSW_EF_SEARCH,
    AudioSearchIndex,
    TrackEmbeddings,
    build_faiss_index,
    embed_tracks,
)

from blap_testing import save_tiny_stage1, tone, write_audio


@pytest.fixture(scope="module")
def tiny_stage1_dir(tmp_path_factory, fixture_dir) -> Path:
    return save_tiny_stage1(tmp_path_factory.mktemp("stage1"), fixture_dir)


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """Four tracks (one of 2.5 s: three 1 s windows, the last ending at the track's end) and one broken file."""
    folder = tmp_path_factory.mktemp("library")
    for number, (seconds, frequency) in enumerate([(1.0, 220.0), (2.5, 440.0), (0.6, 880.0), (1.0, 1760.0)]):
        write_audio(folder / f"track{number}.wav", tone(seconds, frequency=frequency, seed=number))
    (folder / "broken.wav").write_bytes(b"RIFF not really")
    return folder


def test_index_search_save_load_and_cli(tiny_stage1_dir, library, tmp_path, capsys):
    model = BlapForRepresentationLearning.from_pretrained(tiny_stage1_dir).eval()
    processor = BlapStage1Processor.from_pretrained(tiny_stage1_dir)
    index_dir = tmp_path / "index"
    assert main(["index", str(library), "--model", str(tiny_stage1_dir), "--output", str(index_dir)]) == 1
    out = capsys.readouterr()
    assert "4 tracks, 6 windows" in out.out and "failed: " + str(library / "broken.wav") in out.err

    index = AudioSearchIndex.load(index_dir)
    assert sorted(Path(path).name for path in index.tracks) == [f"track{n}.wav" for n in range(4)]
    assert list(index.metadata["failures"]) == [str(library / "broken.wav")]
    assert index.index.ntotal == 6 * 4  # windows x query tokens, each embedded once
    long_track = index.tracks.index(str(library / "track1.wav"))
    windows = index.window_tracks == long_track
    assert index.window_starts[windows].tolist() == [0.0, 1.0, 1.5] and index.window_ends[windows].tolist() == [
        1.0,
        2.0,
        2.5,
    ]

    # Reference: the model's own clip-text similarity of every window, best window per track.
    query = "calm solo piano"
    with torch.no_grad():
        text = processor(text=[query])
        text_embeds = model.get_text_embeddings(text["input_ids"], text["attention_mask"])
        audio_embeds = torch.cat(
            [
                torch.from_numpy(track.embeddings)
                for track in embed_tracks(model, processor, index.tracks, batch_size=2)
            ]
        )
    window_scores = model.similarity(audio_embeds, text_embeds)[:, 0].numpy()
    best = {}
    for window, score in enumerate(window_scores):
        track = index.tracks[index.window_tracks[window]]
        if track not in best or score > best[track][0]:
            best[track] = (score, float(index.window_starts[window]), float(index.window_ends[window]))
    expected = sorted(best.items(), key=lambda item: -item[1][0])[:3]

    hits = index.search(query, k=3)
    assert [hit.path for hit in hits] == [path for path, _ in expected]
    for hit, (_, (score, start, end)) in zip(hits, expected):
        assert math.isclose(hit.score, score, abs_tol=1e-5) and (hit.start, hit.end) == (start, end)
    assert len(index.search(query, k=50)) == 4  # every track once, however many are asked for

    assert main(["search", str(index_dir), query, "-k", "3", "--json"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["path"], line["start"], line["end"]) for line in printed] == [
        (hit.path, hit.start, hit.end) for hit in hits
    ]
    assert main(["search", str(tmp_path), query]) == 2
    assert "is not a search index" in capsys.readouterr().err


def test_approximate_index_agrees_with_exact_search_and_keeps_its_settings_through_save_and_load(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((50, 32)).astype(np.float32)
    vectors = centers[rng.integers(0, 50, 20_000)] + 0.3 * rng.standard_normal((20_000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.integers(0, 20_000, 50)] + 0.1 * rng.standard_normal((50, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    track = TrackEmbeddings(
        "all.wav", np.arange(20_000, dtype=np.float32), np.arange(1, 20_001, dtype=np.float32), vectors[:, None]
    )
    AudioSearchIndex.from_embeddings([track], approximate=True).save(tmp_path)
    approximate = AudioSearchIndex.load(tmp_path).index
    assert type(approximate).__name__ == "IndexHNSWFlat" and approximate.hnsw.efSearch == HNSW_EF_SEARCH
    _, truth = build_faiss_index(vectors, approximate=False).search(queries, 10)
    _, found = approximate.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found)])
    assert recall >= 0.95
    with pytest.raises(ValueError, match="non-empty"):
        build_faiss_index(np.zeros((0, 32), dtype=np.float32))


def test_import_transformers_blap_does_not_load_the_search_stack():
    code = "import sys, transformers_blap.cli; print(sorted({'faiss', 'transformers_blap.search'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
