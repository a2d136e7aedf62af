"""The evaluation loop with a tiny BLAP: resumable predictions, failures recorded, report and Table 1 printout."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from transformers_blap import BlapForConditionalGeneration
from transformers_blap.evaluation import (
    PAPER_METRICS,
    PUBLISHED_TABLE1,
    MissingMetricResourceError,
    caption_metrics,
    load_musiccaps,
)
from transformers_blap.evaluation.loop import (
    default_predictions_path,
    prediction_fingerprint,
    read_predictions,
    run_evaluation,
    weights_sha256,
)

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


@pytest.fixture
def paper_table1(fixture_dir):
    """The paper's Table 1 as shared beside the fixtures (../shared/paper/table1.json)."""
    return json.loads((fixture_dir.parents[1] / "paper" / "table1.json").read_text())


def test_report_predictions_and_table(captioner, musiccaps, capsys, paper_table1):
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
    lines = printed.strip().splitlines()
    title = lines.index("MusicCaps - eval, 2 clips scored (x100)")
    header, *published, ours, source = lines[title + 1 :]
    assert header.split() == ["Model", "BLEU@1", "BLEU@4", "FENSE", "SPIDEr", "SPICE"]
    assert ours.split()[0] == "tiny-blap" and ours.split()[3] == f"{100 * report['metrics']['fense']:.1f}"
    assert source.startswith("Published rows: Lanzend") and "Table 1" in source
    # Every published MusicCaps row of the paper's Table 1, numbers exactly as in the paper (the shared copy).
    paper = paper_table1["benchmarks"]["musiccaps"]
    columns = ["bleu_1", "bleu_4", "fense", "spider", "spice"]
    expected_rows = [[name, "(published)", *(f"{paper[name][column]:.1f}" for column in columns)] for name in paper]
    assert [row.split() for row in published] == expected_rows
    assert [row[0] for row in expected_rows] == ["Pengi", "Qwen-Audio", "Salmonn", "LP-MusicCaps", "BLAP"]
    assert report["published_table1"]["rows"] == paper and "Table 1" in report["published_table1"]["source"]


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


def test_predictions_of_two_models_and_two_settings_share_one_file(captioner, musiccaps, capsys):
    benchmark, report_path = musiccaps
    predictions = default_predictions_path(report_path)
    model_a, processor, calls = captioner
    torch.manual_seed(1)
    model_b = BlapForConditionalGeneration(tiny_config()).eval()
    other_settings = {**FAST, "num_beams": 1}
    runs = {
        "a-fast": (model_a, FAST),
        "b-fast": (model_b, FAST),
        "a-greedy": (model_a, other_settings),
    }
    identities = {name: prediction_fingerprint(model, processor, settings) for name, (model, settings) in runs.items()}
    assert len({identity["fingerprint"] for identity in identities.values()}) == 3
    assert identities["a-fast"]["weights_sha256"] == weights_sha256(model_a) != weights_sha256(model_b)

    def evaluate(name):
        model, settings = runs[name]
        return run_evaluation(
            model,
            processor,
            benchmark,
            report_path,
            batch_size=2,
            generate_kwargs=settings,
            metrics=PAPER_METRICS,
            scorer_kwargs=STAND_IN_SCORER_KWARGS,
            model_name=name,
        )

    reports = {}
    for name in ("a-fast", "b-fast", "a-greedy"):
        calls.clear()
        reports[name] = evaluate(name)
        assert sum(calls) == (2 if name.startswith("a") else 0)  # model a counts its calls: both clips again
        printed = capsys.readouterr().out
        if name != "a-fast":
            assert "0 captions of this model and settings reused; 2 clips captioned by another model" in printed
        assert reports[name]["predictions_reused"] == 0
    # Each line names what made it; the report's scores are those of its own model's captions.
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    for record in records:
        assert {"fingerprint", "model", "weights_sha256", "generation", "prompt"} <= set(record)
    for name, report in reports.items():
        assert report["model"] == name and report["fingerprint"] == identities[name]["fingerprint"]
        assert report["generation"]["num_beams"] == runs[name][1]["num_beams"]
        mine = {
            r["clip_id"]: r["caption"] for r in records if r["fingerprint"] == report["fingerprint"] and "caption" in r
        }
        assert all(r["model"] == name for r in records if r["fingerprint"] == report["fingerprint"])
        references = [clip.references for clip in benchmark.clips if clip.clip_id in mine]
        expected = caption_metrics(list(mine.values()), references, metrics=PAPER_METRICS, **STAND_IN_SCORER_KWARGS)
        assert report["metrics"] == pytest.approx(expected, abs=1e-12)
    assert reports["a-fast"]["metrics"] != reports["b-fast"]["metrics"]

    # Back to model a with its first settings: its own lines are reused, nothing is captioned again.
    calls.clear()
    again = evaluate("a-fast")
    assert calls == [] and again["metrics"] == reports["a-fast"]["metrics"] and again["predictions_reused"] == 2
    assert "2 captions of this model and settings reused" in capsys.readouterr().out
    # Lines without a fingerprint (an older file) are not trusted: those clips are captioned again.
    predictions.write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "fingerprint"}) + "\n" for r in records)
    )
    calls.clear()
    assert evaluate("a-fast")["metrics"] == reports["a-fast"]["metrics"] and sum(calls) == 2


def test_readme_shows_the_papers_table1(paper_table1):
    page = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    titles = {
        "musiccaps": "MusicCaps",
        "song_describer": "Song Describer",
        "yt8m_musictextclips": "YouTube8M-MusicTextClips",
    }
    for benchmark, rows in paper_table1["benchmarks"].items():
        for system, scores in rows.items():
            cells = " | ".join(f"{scores[name]:.1f}" for name in ("bleu_1", "bleu_4", "fense", "spider", "spice"))
            assert f"| {titles[benchmark]} | {system} | {cells} |" in page
    assert PUBLISHED_TABLE1 == paper_table1["benchmarks"]
