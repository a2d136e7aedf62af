"""The evaluation loop with a tiny BLAP: resumable predictions, failures recorded, report and Table 1 printout."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from transformers_blap import BlapForConditionalGeneration
from transformers_blap.evaluation import PAPER_METRICS, MissingMetricResourceError, caption_metrics, load_musiccaps
from transformers_blap.evaluation.loop import default_predictions_path, read_predictions, run_evaluation

from metric_stand_ins import STAND_IN_SCORER_KWARGS
from tiny import tiny_config, tiny_processor

DATA = Path(__file__).parent / "data"
FAST = {"num_beams": 2, "max_new_tokens": 6, "min_length": 1}


@pytest.fixture(scope="module")
def captioner(t5_tokenizer_dir):
    torch.manual_seed(0)
    model = BlapForConditionalGeneration(tiny_config()).eval()
    calls = []
    generate = model.generate

    def counting_generate(**kwargs):
        calls.append(kwargs["input_features"].shape[0])
        return generate(**kwargs)

    model.generate = counting_generate
    return model, tiny_processor(t5_tokenizer_dir), calls


def _write_audio(path: Path, seed: int, sampling_rate: int = 22_050) -> None:
    rng = np.random.default_rng(seed)
    soundfile.write(path, 0.1 * rng.standard_normal(int(1.5 * sampling_rate)).astype(np.float32), sampling_rate)


@pytest.fixture
def musiccaps(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    _write_audio(audio / "aaaTestClip1.wav", 1)
    _write_audio(audio / "[-ccTestClip3]-[0-10].flac", 2)
    (audio / "eeeTestClip5.wav").write_bytes(b"RIFF....WAVE not really")  # ddd_TestClp4 has no file
    return load_musiccaps(DATA / "musiccaps_sample.csv", audio), tmp_path / "run" / "report.json"


def _evaluate(captioner, benchmark, report_path, **kwargs):
    model, processor, _ = captioner
    kwargs.setdefault("scorer_kwargs", STAND_IN_SCORER_KWARGS)
    return run_evaluation(
        model, processor, benchmark, report_path, batch_size=2, generate_kwargs=FAST, metrics=PAPER_METRICS, **kwargs
    )


def test_report_predictions_and_table(captioner, musiccaps, capsys):
    benchmark, report_path = musiccaps
    predictions = default_predictions_path(report_path)
    report = _evaluate(captioner, benchmark, report_path, model_name="tiny-blap")

    assert json.loads(report_path.read_text()) == report
    assert report["benchmark"]["clips_listed"] == 4 and report["benchmark"]["clips_missing_audio"] == 1
    assert report["benchmark"]["missing_audio_clip_ids"] == ["ddd_TestClp4"]
    assert report["clips_scored"] == 2
    assert [failure["clip_id"] for failure in report["clips_failed"]] == ["eeeTestClip5"]
    assert report["generation"]["num_beams"] == 2 and report["generation"]["max_new_tokens"] == 6
    assert report["prompt"] == "Generate an objective music description." and report["long_audio"] == "first"

    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    captions = {record["clip_id"]: record["caption"] for record in records if "caption" in record}
    assert list(captions) == ["aaaTestClip1", "-ccTestClip3"]
    references = [[clip.references[0]] for clip in benchmark.clips[:2]]
    expected = caption_metrics(list(captions.values()), references, metrics=PAPER_METRICS, **STAND_IN_SCORER_KWARGS)
    assert report["metrics"] == pytest.approx(expected, abs=1e-12)
    assert list(report["metrics"]) == ["bleu_1", "bleu_4", "spice", "spider", "fense"]

    printed = capsys.readouterr().out
    assert "musiccaps (eval): 4 clips listed, 3 with audio, 1 missing audio" in printed
    assert "1 clips failed" in printed
    assert "MusicCaps - eval, 2 clips scored (x100)" in printed
    header, published, ours = printed.strip().splitlines()[-3:]
    assert header.split() == ["Model", "BLEU@1", "BLEU@4", "FENSE", "SPIDEr", "SPICE"]
    assert published.split() == ["BLAP", "(published)", "26.2", "3.3", "56.6", "8.8", "11.2"]
    assert ours.split()[0] == "tiny-blap" and ours.split()[3] == f"{100 * report['metrics']['fense']:.1f}"


def test_resume_generates_only_what_is_missing(captioner, musiccaps):
    benchmark, report_path = musiccaps
    predictions = default_predictions_path(report_path)
    _, _, calls = captioner
    first = _evaluate(captioner, benchmark, report_path, print_fn=None)
    first_lines = predictions.read_text().splitlines()

    calls.clear()
    again = _evaluate(captioner, benchmark, report_path, print_fn=None)
    assert calls == [] and again["metrics"] == first["metrics"]

    _write_audio(benchmark.clips[2].audio_path, 3)  # the broken file is repaired: only its clip is captioned
    with predictions.open("a") as file:
        file.write('{"benchmark": "musiccaps", "clip_id": "aaaTes')  # a line cut short by a crash
    calls.clear()
    final = _evaluate(captioner, benchmark, report_path, print_fn=None)
    assert calls == [1]
    assert final["clips_scored"] == 3 and final["clips_failed"] == []
    lines = predictions.read_text().splitlines()
    assert lines[: len(first_lines)] == first_lines and len(lines) == len(first_lines) + 2
    assert set(read_predictions(predictions, "musiccaps")) == {
        "aaaTestClip1",
        "-ccTestClip3",
        "eeeTestClip5",
    }


def test_generate_failures_are_recorded_and_the_run_goes_on(captioner, musiccaps, monkeypatch):
    benchmark, report_path = musiccaps
    model, processor, _ = captioner
    calls = []

    def fail_first(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return torch.zeros((kwargs["input_features"].shape[0], 3), dtype=torch.long)

    monkeypatch.setattr(model, "generate", fail_first)
    _write_audio(benchmark.clips[2].audio_path, 3)
    report = run_evaluation(model, processor, benchmark, report_path, batch_size=2, metrics=["bleu_1"], print_fn=None)
    assert report["clips_scored"] == 1
    assert {failure["clip_id"] for failure in report["clips_failed"]} == {"aaaTestClip1", "-ccTestClip3"}
    assert "RuntimeError: CUDA out of memory (simulated)" in report["clips_failed"][0]["error"]


def test_missing_metric_downloads_stop_the_run_before_captioning(captioner, musiccaps, tmp_path):
    benchmark, report_path = musiccaps
    predictions = default_predictions_path(report_path)
    _, _, calls = captioner
    calls.clear()
    with pytest.raises(MissingMetricResourceError, match="FENSE fluency-error detector"):
        _evaluate(captioner, benchmark, report_path, scorer_kwargs={"cache_dir": tmp_path / "empty"})
    assert calls == [] and not predictions.exists()


def test_predictions_of_another_benchmark_are_refused(captioner, musiccaps):
    benchmark, report_path = musiccaps
    predictions = default_predictions_path(report_path)
    report_path.parent.mkdir()
    predictions.write_text('{"benchmark": "song_describer", "clip_id": "1", "caption": "x"}\n')
    with pytest.raises(ValueError, match="holds predictions for benchmark 'song_describer', not 'musiccaps'"):
        _evaluate(captioner, benchmark, report_path)
