"""
The training scripts as a user runs them: resume after a crash, stage 1 to captions, the bf16 recipe, every data
layout in both stages, unreadable audio, start-up errors as one line.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import GenerationConfig, HfArgumentParser, T5ForConditionalGeneration, T5TokenizerFast, pipeline

from transformers_blap import (
    BlapForConditionalGeneration,
    BlapForRepresentationLearning,
    BlapProcessor,
    BlapStage1Processor,
    build_qformer_tokenizer,
)
from transformers_blap.training import (
    BlapDataCollator,
    BlapStage2TrainingArguments,
    check_audio_files,
    checkpoint_to_resume,
    configure_stage2_trainable,
    load_caption_dataset,
    load_stage2_model,
)
from transformers_blap.training.launch import StartupError
from transformers_blap.training.stage1 import BlapStage1Collator, BlapStage1TrainingArguments

from stage2_utils import deterministic_model, write_clip_dataset
from tiny import tiny_feature_extractor, tiny_processor, tiny_stage1_config

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {stage: REPO / "scripts" / f"train_stage{stage}.py" for stage in (1, 2)}
COMMON = ["--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--per_device_train_batch_size", "2"]


def _run(stage: int, argv: list[str]):
    """`python scripts/train_stageN.py argv...`, in this process."""
    import runpy

    return runpy.run_path(str(SCRIPTS[stage]), run_name=f"train_stage{stage}")["main"](argv)


def _subprocess(argv: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, env=env, timeout=600, cwd=REPO, check=False
    )


def _losses(output_dir: Path) -> list[tuple[int, float]]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]


@pytest.fixture
def stage2_base(tmp_path, t5_tokenizer_dir) -> Path:
    deterministic_model().save_pretrained(tmp_path / "base")
    tiny_processor(t5_tokenizer_dir).save_pretrained(tmp_path / "base")
    return tmp_path / "base"


@pytest.fixture
def stage1_start(tmp_path, fixture_dir) -> Path:
    torch.manual_seed(0)
    BlapForRepresentationLearning(tiny_stage1_config()).save_pretrained(tmp_path / "stage1-start")
    processor = BlapStage1Processor(
        tiny_feature_extractor(), build_qformer_tokenizer(fixture_dir / "bert-base-uncased")
    )
    processor.save_pretrained(tmp_path / "stage1-start")
    return tmp_path / "stage1-start"


def _train_csv(tmp_path: Path, num_clips: int = 8) -> Path:
    """Clips of 1.5 s (random 1 s windows) with two captions each (a random one per step): training draws randoms."""
    write_clip_dataset(tmp_path / "clips", num_clips=num_clips, seconds=1.5)
    rows = "".join(f"clips/clip{i}.wav,an upbeat song {i},calm piano number {i}\n" for i in range(num_clips))
    (tmp_path / "train.csv").write_text("audio,caption_1,caption_2\n" + rows)
    return tmp_path / "train.csv"


# ------------------------------------------------------------------------------------------------------ resume


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_rerunning_the_command_after_sigkill_resumes_and_matches_an_uninterrupted_run(stage, request, tmp_path):
    start = request.getfixturevalue("stage1_start" if stage == 1 else "stage2_base")
    train = _train_csv(tmp_path)
    model_option = "--model" if stage == 1 else "--model_name_or_path"

    def command(output_dir: Path) -> list[str]:
        return [
            str(SCRIPTS[stage]), model_option, str(start), "--train_file", str(train), "--output_dir", str(output_dir),
            "--max_steps", "3", "--save_steps", "2", "--logging_steps", "1", "--seed", "3", *COMMON,
        ]  # fmt: skip

    _run(stage, command(tmp_path / "straight")[1:])
    expected = _losses(tmp_path / "straight")
    assert [step for step, _ in expected] == [1, 2, 3]

    output = tmp_path / "crashed"
    killed = _subprocess([str(REPO / "tests" / "kill_after_checkpoint.py"), "2", *command(output)])
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (output / "checkpoint-2" / "trainer_state.json").is_file() and not (output / "checkpoint-3").exists()
    rerun = _subprocess(command(output))  # the identical command
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Resuming from {output / 'checkpoint-2'}" in rerun.stdout + rerun.stderr
    assert _losses(output) == expected
    if stage == 1:
        return

    # --resume_from_checkpoint into the same folder.
    _run(2, [*command(output)[1:], "--resume_from_checkpoint", str(output / "checkpoint-2")])
    assert _losses(output) == expected
    assert sorted(path.name for path in output.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]


def test_checkpoint_to_resume_chooses_the_last_complete_checkpoint_and_refuses_to_overwrite(tmp_path):
    def args(**kwargs):
        return BlapStage2TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], **kwargs)

    assert checkpoint_to_resume(args()) is None  # a new folder
    for step, complete in ((1, True), (10, True), (12, False)):
        (tmp_path / "out" / f"checkpoint-{step}").mkdir(parents=True)
        if complete:
            (tmp_path / "out" / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert checkpoint_to_resume(args()) == str(tmp_path / "out" / "checkpoint-10")  # by step, torn ones skipped
    assert checkpoint_to_resume(args(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-1"))).endswith("-1")
    with pytest.raises(StartupError, match="checkpoint-12: not a complete checkpoint"):
        checkpoint_to_resume(args(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-12")))
    with pytest.raises(StartupError, match="contradict"):
        checkpoint_to_resume(
            args(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-1"), overwrite_output_dir=True)
        )
    assert checkpoint_to_resume(args(overwrite_output_dir=True)) is None
    assert not list((tmp_path / "out").glob("checkpoint-*"))  # a later rerun cannot resume the old run
    (tmp_path / "out" / "model.safetensors").write_bytes(b"")
    with pytest.raises(StartupError, match="already holds a trained model .* --overwrite_output_dir"):
        checkpoint_to_resume(args())
    # Both scripts' parsers take the flag (transformers 5 removed its own).
    for arguments in (BlapStage1TrainingArguments, BlapStage2TrainingArguments):
        (parsed,) = HfArgumentParser(arguments).parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path / "out"), "--overwrite_output_dir", "--use_cpu"]
        )
        assert parsed.overwrite_output_dir and checkpoint_to_resume(parsed) is None


# ---------------------------------------------------------------------------------------- stage 1 to captions


@pytest.mark.slow
def test_stage1_to_captions_in_three_commands(tmp_path, stage1_start, t5_tokenizer_dir):
    T5ForConditionalGeneration.save_pretrained(deterministic_model(seed=2).language_model, tmp_path / "flan-t5")
    T5TokenizerFast.from_pretrained(t5_tokenizer_dir).save_pretrained(tmp_path / "flan-t5")
    train = _train_csv(tmp_path, num_clips=4)
    _run(1, ["--model", str(stage1_start), "--train_file", str(train), "--output_dir", str(tmp_path / "s1"),
             "--max_steps", "1", *COMMON])  # fmt: skip
    # A stage-1 start carries BLAP's generation defaults (transformers would give it none).
    defaults = load_stage2_model(tmp_path / "s1", tmp_path / "flan-t5").generation_config
    assert (defaults.num_beams, defaults.max_new_tokens, defaults.min_length) == (10, 40, 30)

    results = _run(2, [
        "--model_name_or_path", str(tmp_path / "s1"), "--language_model_name_or_path", str(tmp_path / "flan-t5"),
        "--train_file", str(train), "--eval_file", str(train), "--max_eval_samples", "2",
        "--output_dir", str(tmp_path / "s2"), "--max_steps", "1", "--eval_strategy", "steps", "--eval_steps", "1",
        "--predict_with_generate", "--eval_metrics", "bleu_1",
        "--num_beams", "3", "--max_new_tokens", "6", "--min_length", "2", "--repetition_penalty", "1.3", *COMMON,
    ])  # fmt: skip
    assert "eval_bleu_1" in results
    saved = GenerationConfig.from_pretrained(tmp_path / "s2")
    assert (saved.num_beams, saved.max_new_tokens, saved.min_length, saved.repetition_penalty) == (3, 6, 2, 1.3)

    captioner = pipeline("audio-to-text", model=str(tmp_path / "s2"), device="cpu")
    stage1 = BlapForRepresentationLearning.from_pretrained(tmp_path / "s1")
    saved_tokenizer = BlapProcessor.from_pretrained(tmp_path / "s2").tokenizer  # the language model's
    assert saved_tokenizer.vocab_size == T5TokenizerFast.from_pretrained(t5_tokenizer_dir).vocab_size
    torch.testing.assert_close(  # the frozen audio encoder (BatchNorm statistics included) is stage 1's
        captioner.model.audio_encoder.state_dict()["audio_encoder.batch_norm.running_mean"],
        stage1.audio_encoder.state_dict()["audio_encoder.batch_norm.running_mean"],
    )
    assert not torch.equal(captioner.model.query_tokens, stage1.query_tokens)  # trained on from stage 1's
    assert captioner.model.generation_config.num_beams == 3  # the saved defaults caption
    [result] = captioner(str(tmp_path / "clips" / "clip0.wav"))
    assert isinstance(result["generated_text"], str)  # (the tiny model's caption after one step may be empty)


def test_generate_accepts_a_generation_config_of_nones_and_bf16_weights_with_a_float32_qformer(tmp_path):
    model = deterministic_model().eval()
    features = torch.randn(2, 1, 101, 16)
    # transformers 5's `GenerationConfig()` leaves num_beams, max_length, ... as None: the model's defaults fill in.
    with_nones = model.generate(input_features=features, generation_config=GenerationConfig(max_new_tokens=3))
    assert torch.equal(with_nones, model.generate(input_features=features, max_new_tokens=3))
    assert with_nones.shape == (2, 4)

    model.save_pretrained(tmp_path / "model")
    bf16 = BlapForConditionalGeneration.from_pretrained(tmp_path / "model", dtype=torch.bfloat16)
    assert bf16.qformer.dtype == torch.float32 and bf16.language_model.dtype == torch.bfloat16
    assert bf16.generate(input_features=features, max_new_tokens=3).shape == (2, 4)
    configure_stage2_trainable(bf16)  # the trained projection in float32 beside the bfloat16 T5, as in training
    assert bf16.language_projection.weight.dtype == torch.float32
    assert bf16.generate(input_features=features, max_new_tokens=3).shape == (2, 4)  # no autocast here


@pytest.mark.slow
def test_the_readme_bf16_recipe_trains_and_evaluates_with_generation(tmp_path, stage2_base):
    train = _train_csv(tmp_path, num_clips=4)
    results = _run(2, [
        "--model_name_or_path", str(stage2_base), "--train_file", str(train), "--eval_file", str(train),
        "--output_dir", str(tmp_path / "out"), "--bf16", "--model_dtype", "bfloat16", "--predict_with_generate",
        "--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "2", "--eval_metrics", "bleu_1,cider_d",
        *COMMON,
    ])  # fmt: skip
    assert np.isfinite(results["train_loss"]) and {"eval_bleu_1", "eval_cider_d", "eval_loss"} <= set(results)
    model = BlapForConditionalGeneration.from_pretrained(tmp_path / "out")
    assert model.qformer.dtype == torch.float32


# ------------------------------------------------------------------------------------------------------- data


def _layouts(tmp_path: Path) -> dict[str, str]:
    """The same three clips and captions in every layout the training scripts read."""
    clips = write_clip_dataset(tmp_path / "clips", num_clips=3)
    names = [Path(path).name for path in clips["audio"]]
    captions = [["calm piano", "soft keys"], ["loud drums"], ["a violin solo", "strings"]]
    layouts = {}
    (tmp_path / "one.csv").write_text(
        "audio,caption\n" + "".join(f'clips/{n},"{json.dumps(c).replace(chr(34), chr(34) * 2)}"\n'
                                   for n, c in zip(names, captions))
    )  # fmt: skip
    layouts["csv, JSON list cell"] = str(tmp_path / "one.csv")
    (tmp_path / "numbered.csv").write_text(
        "audio,caption_1,caption_2\n" + "".join(f"clips/{n},{c[0]},{c[1] if len(c) > 1 else ''}\n"
                                                for n, c in zip(names, captions))
    )  # fmt: skip
    layouts["csv, caption_1 caption_2"] = str(tmp_path / "numbered.csv")
    (tmp_path / "pairs.csv").write_text(
        "audio,caption\n" + "".join(f"clips/{n},{caption}\n" for n, c in zip(names, captions) for caption in c)
    )
    layouts["csv, one row per pair"] = str(tmp_path / "pairs.csv")
    (tmp_path / "list.jsonl").write_text(
        "".join(json.dumps({"audio": f"clips/{n}", "captions": c}) + "\n" for n, c in zip(names, captions))
    )
    layouts["jsonl, captions list"] = str(tmp_path / "list.jsonl")
    folder = tmp_path / "audiofolder"
    folder.mkdir()
    (folder / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"../clips/{n}", "caption": c}) + "\n" for n, c in zip(names, captions))
    )
    layouts["folder, metadata.jsonl"] = str(folder)
    sidecar = tmp_path / "sidecar"
    sidecar.mkdir()
    for name, caption in zip(names, captions):
        (sidecar / name).write_bytes((tmp_path / "clips" / name).read_bytes())
        (sidecar / name).with_suffix(".txt").write_text("\n".join(caption))
    layouts["folder, .txt beside each clip"] = str(sidecar)
    saved = datasets.Dataset.from_dict({"audio": clips["audio"], "caption_1": [c[0] for c in captions],
                                        "caption_2": [c[1] if len(c) > 1 else None for c in captions]})  # fmt: skip
    saved.cast_column("audio", datasets.Audio()).save_to_disk(tmp_path / "saved")
    layouts["datasets save_to_disk, Audio column"] = str(tmp_path / "saved")
    return layouts


def test_every_caption_layout_reads_the_same_for_both_stages(tmp_path, t5_tokenizer_dir, fixture_dir):
    expected = [["calm piano", "soft keys"], ["loud drums"], ["a violin solo", "strings"]]
    stage1 = BlapStage1Collator(
        BlapStage1Processor(tiny_feature_extractor(), build_qformer_tokenizer(fixture_dir / "bert-base-uncased"))
    )
    stage2 = BlapDataCollator(tiny_processor(t5_tokenizer_dir))
    for layout, source in _layouts(tmp_path).items():
        dataset = load_caption_dataset(source)
        assert dataset["captions"] == expected, layout
        rows = [dataset[index] for index in range(3)]
        assert stage1(rows)["input_ids"].shape[0] == 3, layout
        assert stage2(rows)["labels"].shape[0] == 3, layout


def _write_bad_clips(tmp_path: Path) -> Path:
    write_clip_dataset(tmp_path / "clips", num_clips=4)
    (tmp_path / "clips" / "clip1.wav").write_text("not audio")
    sf.write(tmp_path / "clips" / "clip2.wav", np.zeros(0, np.float32), 16_000)  # no samples
    rows = "".join(f"clips/clip{i}.wav,caption {i}\n" for i in range(4))
    (tmp_path / "train.csv").write_text("audio,caption\n" + rows)
    return tmp_path / "train.csv"


def test_unreadable_audio_is_listed_before_training_or_skipped_and_counted(tmp_path, stage2_base):
    train = _write_bad_clips(tmp_path)
    dataset = load_caption_dataset(str(train))
    with pytest.raises(ValueError, match=r"2 of 4 audio files cannot be read: .*clip1\.wav.*clip2\.wav"):
        check_audio_files(dataset, max_workers=4)
    kept, report = check_audio_files(dataset, skip_bad_audio=True, max_workers=4)
    assert [Path(path).name for path in kept["audio"]] == ["clip0.wav", "clip3.wav"]
    assert report["skipped_unreadable"] == 2 and report["clips"] == 2

    argv = ["--model_name_or_path", str(stage2_base), "--train_file", str(train), "--max_steps", "1", *COMMON]
    with pytest.raises(
        SystemExit, match=r"^train_stage2.py: error: 2 of 4 audio files cannot be read: .*skip_bad_audio"
    ):
        _run(2, [*argv, "--output_dir", str(tmp_path / "refused")])
    assert not (tmp_path / "refused" / "model.safetensors").exists()
    _run(2, [*argv, "--output_dir", str(tmp_path / "out"), "--skip_bad_audio"])
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["train"]["skipped_unreadable"] == 2 and report["train"]["clips"] == 2
    assert json.loads((tmp_path / "out" / "trainer_state.json").read_text())["global_step"] == 1


# ------------------------------------------------------------------------------------------------ start-up errors


@pytest.mark.parametrize(
    ("stage", "options", "message"),
    [
        (2, ["--eval_metrics", "bleu_9"], r"--eval_metrics 'bleu_9': unknown metric\(s\) \['bleu_9'\]"),
        (2, ["--eval_metrics", "all"], r"need files that are not on this machine: .*setup"),
        (2, ["--push_to_hub"], r"--push_to_hub needs --hub_model_id"),
        (1, ["--push_to_hub", "--hub_model_id", "you/blap"], r"--push_to_hub: the Hub is switched off"),
        (2, ["--resume_from_checkpoint", "nowhere/checkpoint-3"], r"nowhere/checkpoint-3: not a complete checkpoint"),
        (1, ["--train_file", "missing.csv"], r"Data file or folder not found: missing.csv"),
        (2, ["--model_dtype", "float16"], r"--model_dtype must be one of \['bfloat16', 'float32'\]"),
    ],
)
def test_startup_errors_are_one_line_naming_cause_and_remedy(stage, options, message, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("BLAP_METRICS_CACHE", str(tmp_path / "no-metrics"))
    write_clip_dataset(tmp_path / "clips", num_clips=2)
    (tmp_path / "train.csv").write_text("audio,caption\nclips/clip0.wav,a\nclips/clip1.wav,b\n")
    model_option = ["--model", "unused"] if stage == 1 else ["--model_name_or_path", "unused"]
    data = [] if "--train_file" in options else ["--train_file", str(tmp_path / "train.csv"), "--eval_file",
                                                 str(tmp_path / "train.csv")]  # fmt: skip
    if stage == 1:
        data = data[:2]
    with pytest.raises(SystemExit) as raised:
        _run(stage, [*model_option, *data, "--output_dir", str(tmp_path / "out"), *COMMON, *options])
    text = str(raised.value)
    assert text.startswith(f"train_stage{stage}.py: error: ") and "\n" not in text
    assert __import__("re").search(message, text), text
