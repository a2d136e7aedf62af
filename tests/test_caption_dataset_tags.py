"""`blap caption --dataset` (rows of a `datasets` dataset, resumable by id) and `--tags` (zero-shot, stage 1)."""

import os

import datasets
import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import pipeline

from transformers_blap import BlapForRepresentationLearning, BlapStage1Processor, build_qformer_tokenizer
from transformers_blap.captioning import caption_dataset, load_caption_dataset, read_records
from transformers_blap.cli import main
from transformers_blap.tagging import ZeroShotTagger

from blap_testing import RATE, save_tiny_blap, tone, write_audio
from tiny import tiny_feature_extractor, tiny_stage1_config

LABELS = ["calm solo piano", "distorted guitars", "a choir", "techno", "jazz trio"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, t5_tokenizer_dir):
    return save_tiny_blap(tmp_path_factory.mktemp("tiny-blap"), t5_tokenizer_dir)


@pytest.fixture(scope="module")
def captioner(model_dir):
    return pipeline("audio-to-text", model=str(model_dir), device="cpu")


@pytest.fixture(scope="module")
def stage1_dir(tmp_path_factory, fixture_dir):
    """A tiny stage-1 model whose embeddings are spread apart (at initialisation they nearly coincide)."""
    torch.manual_seed(0)
    model = BlapForRepresentationLearning(tiny_stage1_config()).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name != "temperature":
                parameter.add_(0.3 * torch.randn_like(parameter))
    folder = tmp_path_factory.mktemp("tiny-stage1")
    model.save_pretrained(folder)
    tokenizer = build_qformer_tokenizer(fixture_dir / "bert-base-uncased")
    BlapStage1Processor(tiny_feature_extractor(), tokenizer, max_txt_len=16).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two clips of different lengths and pitches, and a file that is not audio."""
    folder = tmp_path_factory.mktemp("clips")
    good = [
        write_audio(folder / "a.wav", tone(1.5, frequency=300.0)),
        write_audio(folder / "b.flac", tone(2.5, frequency=900.0, seed=1)),
    ]
    broken = folder / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + os.urandom(200))
    return good, broken


def caption(*args) -> int:
    return main(["caption", *map(str, args), "--no-progress"])


def test_saved_dataset_by_id_resumes_and_records_broken_audio(clips, model_dir, captioner, tmp_path, capsys):
    (first, second), broken = clips
    rows = {"track_id": ["t-a", "t-b", "t-broken"], "audio": [str(first), str(second), str(broken)]}
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio()).save_to_disk(str(saved))  # embeds bytes
    output = tmp_path / "captions.jsonl"
    command = ["--dataset", saved, "--id-column", "track_id", "--model", model_dir, "--output", output]

    assert caption(*command) == 1
    records = {record["id"]: record for record in read_records(output)}
    assert sorted(records) == ["t-a", "t-b", "t-broken"]  # in the order they were done
    for row_id, path in (("t-a", first), ("t-b", second)):
        expected = captioner(str(path))[0]
        assert records[row_id]["caption"] == expected["generated_text"] and records[row_id]["error"] is None
        assert records[row_id]["windows"] == expected["windows"] and records[row_id]["path"] == path.name
    assert records["t-a"]["duration"] == pytest.approx(1.5) and records["t-b"]["duration"] == pytest.approx(2.5)
    failed = records["t-broken"]
    assert failed["caption"] is None and "broken.wav" in failed["error"] and "\n" not in failed["error"]
    assert "blap caption: failed: t-broken: " in capsys.readouterr().err

    # A run that stopped after t-a: the rerun captions t-b, retries t-broken and leaves t-a alone.
    a_line = next(line for line in output.read_text().splitlines() if '"t-a"' in line)
    b_line = next(line for line in output.read_text().splitlines() if '"t-b"' in line)
    output.write_text(a_line + "\n" + b_line[:25])  # t-a's line, then t-b's cut short by a crash
    summary = caption_dataset(
        captioner, load_caption_dataset(str(saved)), output, id_column="track_id", progress=False
    )
    assert (summary.skipped, summary.captioned, summary.failed) == (1, 1, 1)
    assert list(summary.errors) == ["t-broken"]
    rerun = {record["id"]: record for record in read_records(output)}
    assert rerun == records and len(read_records(output)) == 3
    assert output.read_text().splitlines()[0] == a_line


def test_streamed_parquet_rows_are_identified_by_index(clips, model_dir, captioner, tmp_path):
    (first, second), broken = clips
    parquet = tmp_path / "tracks.parquet"  # holds the paths (to_parquet does not embed the files)
    rows = {"audio": [str(second), str(broken), str(first)], "genre": ["x", "y", "z"]}
    datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio()).to_parquet(str(parquet))
    output = tmp_path / "captions.jsonl"
    assert caption("--dataset", parquet, "--streaming", "--model", model_dir, "--output", output) == 1
    records = sorted(read_records(output), key=lambda record: record["id"])
    expected_ids = [(0, str(second)), (1, str(broken)), (2, str(first))]
    assert [(record["id"], record["path"]) for record in records] == expected_ids
    assert records[0]["caption"] == captioner(str(second))[0]["generated_text"] and records[1]["caption"] is None
    summary = caption_dataset(captioner, load_caption_dataset(str(parquet), streaming=True), output, progress=False)
    assert (summary.skipped, summary.captioned, summary.failed) == (2, 0, 1)
    assert len(read_records(output)) == 3


def test_decoded_audio_values_and_repeated_ids(model_dir, captioner, tmp_path):
    samples = tone(1.2, frequency=600.0)
    sounds = [{"array": samples, "sampling_rate": RATE}, {"array": samples[::2], "sampling_rate": RATE // 2}]
    decoded = datasets.Dataset.from_dict({"name": ["one", "two"], "sound": sounds})
    output = tmp_path / "captions.jsonl"
    summary = caption_dataset(captioner, decoded, output, audio_column="sound", id_column="name", progress=False)
    assert summary.captioned == 2
    records = read_records(output)
    assert records[0]["caption"] == captioner({"array": samples, "sampling_rate": RATE})[0]["generated_text"]
    assert records[0]["path"] is None and records[1]["id"] == "two"
    with pytest.raises(ValueError, match="'name' is not unique: 'one'"):
        repeated = datasets.Dataset.from_dict({"name": ["one", "one"], "sound": [str(output), str(output)]})
        caption_dataset(captioner, repeated, output, audio_column="sound", id_column="name")


def test_dataset_usage_errors(clips, model_dir, tmp_path, capsys):
    (first, _), _ = clips
    parquet = tmp_path / "t.parquet"
    datasets.Dataset.from_dict({"audio": [str(first)]}).to_parquet(str(parquet))
    output = tmp_path / "o.jsonl"
    assert caption("--dataset", parquet, "--audio-column", "wav", "--model", model_dir, "--output", output) == 2
    assert "blap caption: error: the dataset has no audio column 'wav'; its columns: audio." in capsys.readouterr().err
    assert caption("--dataset", parquet, "--id-column", "key", "--model", model_dir, "--output", output) == 2
    assert "no id column 'key'" in capsys.readouterr().err
    assert caption(first, "--dataset", parquet, "--model", model_dir, "--output", output) == 2
    assert "not both and not neither" in capsys.readouterr().err
    assert caption(first, "--tags", tmp_path / "labels.txt", "--model", model_dir, "--output", output) == 2
    assert "need both --tags LABELS_FILE and --tag-model" in capsys.readouterr().err
    assert not output.exists()


def _window_samples(path, windows: list[dict]) -> list[np.ndarray]:
    """The samples of a record's windows, read from the file."""
    samples, rate = sf.read(path, dtype="float32")
    assert rate == RATE
    return [samples[round(window["start"] * rate) : round(window["end"] * rate)] for window in windows]


def test_tags_are_the_stage1_similarity_averaged_over_windows(clips, model_dir, captioner, stage1_dir, tmp_path):
    (first, second), broken = clips
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("# moods and instruments\n" + "\n".join(LABELS) + "\n\njazz trio\n")
    output = tmp_path / "captions.jsonl"
    command = [first, second, broken, "--model", model_dir, "--output", output, "--batch-size", "2"]
    assert caption(*command, "--tags", labels_file, "--tag-model", stage1_dir, "--tag-top-k", "3") == 1
    records = {os.path.basename(record["path"]): record for record in read_records(output)}
    assert records["broken.wav"]["tags"] == [] and records["broken.wav"]["caption"] is None

    model = BlapForRepresentationLearning.from_pretrained(stage1_dir).eval()
    processor = BlapStage1Processor.from_pretrained(stage1_dir)
    texts = [f"This is a {label} song." for label in LABELS]
    for path in (first, second):
        record = records[path.name]
        assert record["caption"] == captioner(str(path))[0]["generated_text"]  # tagging leaves captions alone
        with torch.no_grad():  # the model's own forward: similarities / temperature
            audio = _window_samples(path, record["windows"])
            out = model(**processor(audio=audio, sampling_rate=RATE, text=texts))
        expected = (out.logits_per_audio * model.temperature.clamp(0.001, 0.5)).mean(0)
        best = expected.argsort(descending=True)[:3].tolist()
        assert [tag["label"] for tag in record["tags"]] == [LABELS[i] for i in best]
        torch.testing.assert_close(
            torch.tensor([tag["score"] for tag in record["tags"]]), expected[best], atol=2e-5, rtol=0
        )
    assert records["a.wav"]["tags"] != records["b.flac"]["tags"]  # the scores depend on the audio


def test_tag_selection_by_threshold_and_top_k(stage1_dir):
    model = BlapForRepresentationLearning.from_pretrained(stage1_dir)
    processor = BlapStage1Processor.from_pretrained(stage1_dir)
    window_scores = [torch.tensor([[0.3, -0.2, 0.1, 0.0, 0.5]]), torch.tensor([[0.1, 0.0, 0.05, 0.4, 0.5]])]
    # Means over the windows: 0.2, -0.1, 0.075, 0.2, 0.5.
    kept = ZeroShotTagger(model, processor, LABELS, threshold=0.1).track_tags(window_scores)
    assert [tag["label"] for tag in kept] == ["jazz trio", "calm solo piano", "techno"]
    assert [tag["score"] for tag in kept] == pytest.approx([0.5, 0.2, 0.2])
    top = ZeroShotTagger(model, processor, LABELS).track_tags(window_scores)
    assert [tag["label"] for tag in top] == ["jazz trio", "calm solo piano", "techno", "a choir", "distorted guitars"]
    with pytest.raises(ValueError, match="not both"):
        ZeroShotTagger(model, processor, LABELS, top_k=2, threshold=0.1)
