"""`evaluate` and `setup-metrics` subcommands (to be mounted as `blap evaluate` / `blap setup-metrics`)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from transformers_blap import BlapForConditionalGeneration, BlapProcessor
from transformers_blap.cli import main
from transformers_blap.evaluation.loop import weights_sha256

from tiny import tiny_config, tiny_processor

DATA = Path(__file__).parent / "data"
FAST = ["--num-beams", "2", "--max-new-tokens", "5", "--min-length", "1", "--batch-size", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, t5_tokenizer_dir):
    folder = tmp_path_factory.mktemp("tiny-blap")
    torch.manual_seed(0)
    BlapForConditionalGeneration(tiny_config()).save_pretrained(folder)
    tiny_processor(t5_tokenizer_dir).save_pretrained(folder)
    return folder


@pytest.fixture
def musiccaps_dir(tmp_path):
    audio = tmp_path / "musiccaps" / "audio"
    audio.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("aaaTestClip1.wav", "-ccTestClip3.wav"):
        soundfile.write(audio / name, 0.1 * rng.standard_normal(24_000).astype(np.float32), 16_000)
    shutil.copy(DATA / "musiccaps_sample.csv", audio.parent / "musiccaps-public.csv")
    return audio


def test_evaluate_end_to_end(saved_model, musiccaps_dir, tmp_path, capsys):
    output = tmp_path / "out" / "report.json"
    args = ["evaluate", "--model", str(saved_model), "--dataset", "musiccaps", "--audio-dir", str(musiccaps_dir)]
    assert main([*args, "--output", str(output), "--metrics", "bleu_1,cider_d", *FAST]) == 0
    report = json.loads(output.read_text())
    assert report["benchmark"]["clips_listed"] == 4 and report["benchmark"]["clips_missing_audio"] == 2
    assert report["clips_scored"] == 2 and set(report["metrics"]) == {"bleu_1", "cider_d"}
    assert report["model"] == str(saved_model) and report["generation"]["num_beams"] == 2
    assert len((tmp_path / "out" / "report.predictions.jsonl").read_text().splitlines()) == 2
    printed = capsys.readouterr().out
    assert "BLAP (published)" in printed and "26.2" in printed


def test_evaluate_takes_a_lora_folder(saved_model, musiccaps_dir, tmp_path):
    """`blap evaluate --model FOLDER` with a LoRA run's peft adapter folder captions with the adapter merged."""
    from transformers_blap.training import add_lora, load_lora_captioner, save_lora_captioner

    lora = add_lora(BlapForConditionalGeneration.from_pretrained(saved_model), r=2, lora_alpha=4)
    with torch.no_grad():  # a trained adapter: the captions must come from the adapted model
        for name, param in lora.named_parameters():
            if ".lora_B." in name:
                param.add_(0.5 * torch.randn_like(param))
    save_lora_captioner(lora, tmp_path / "lora")
    BlapProcessor.from_pretrained(saved_model).save_pretrained(tmp_path / "lora")
    args = ["evaluate", "--model", str(tmp_path / "lora"), "--dataset", "musiccaps", "--audio-dir", str(musiccaps_dir)]
    output = tmp_path / "report.json"
    assert main([*args, "--output", str(output), "--metrics", "bleu_1", *FAST]) == 0
    assert json.loads(output.read_text())["clips_scored"] == 2
    predictions = [json.loads(line) for line in (tmp_path / "report.predictions.jsonl").read_text().splitlines()]
    # The captions came from the base model with the adapter merged, not from the base model alone.
    merged = weights_sha256(load_lora_captioner(tmp_path / "lora"))
    assert merged != weights_sha256(BlapForConditionalGeneration.from_pretrained(saved_model))
    assert [record["weights_sha256"] for record in predictions] == [merged, merged]


def test_evaluate_errors_are_one_line_and_early(saved_model, musiccaps_dir, tmp_path, capsys):
    (musiccaps_dir.parent / "musiccaps-public.csv").unlink()
    base = ["evaluate", "--model", str(saved_model), "--dataset", "musiccaps", "--audio-dir", str(musiccaps_dir)]
    output = tmp_path / "report.json"
    assert main([*base, "--output", str(output), *FAST]) == 2
    assert "pass the benchmark's CSV with --csv" in capsys.readouterr().err

    csv = ["--csv", str(DATA / "musiccaps_sample.csv")]
    assert main([*base, *csv, "--output", str(output), "--metrics-cache", str(tmp_path / "empty"), *FAST]) == 2
    error = capsys.readouterr().err
    assert "FENSE fluency-error detector" in error and "blap setup-metrics --cache-dir" in error
    assert "blap evaluate --metrics ngram" in error
    assert not output.exists() and not (tmp_path / "report.predictions.jsonl").exists()

    with pytest.raises(SystemExit):
        main([*base, *csv, "--output", str(output), "--metrics", "bleu,spider"])
    assert "comma-separated list of bleu_1" in capsys.readouterr().err


def test_setup_metrics_subcommand_parses_like_the_module(monkeypatch, tmp_path):
    from transformers_blap.evaluation import setup_metrics

    seen = []
    monkeypatch.setattr(setup_metrics, "setup_sentence_bert", lambda cache_dir: seen.append(("sbert", cache_dir)))
    monkeypatch.setattr(setup_metrics, "setup_fense", lambda cache_dir: seen.append(("fense", cache_dir)))
    assert main(["setup-metrics", "--skip-spice", "--cache-dir", str(tmp_path)]) == 0
    assert seen == [("sbert", tmp_path), ("fense", tmp_path)]
