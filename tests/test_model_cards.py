"""
The cards the trainers write for tiny stage-1, stage-2 and LoRA runs: every fact checked against the configuration
files saved in the same folder; one metric-name scheme; each evaluation once; the demo card's metadata.
"""

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from transformers_blap import BlapForConditionalGeneration, BlapForRepresentationLearning, BlapStage1Processor
from transformers_blap.hub import CARD_GENERATION_FIELDS, render_folder_card
from transformers_blap.processing_blap import build_qformer_tokenizer
from transformers_blap.training import BlapStage2Trainer, add_lora

from stage2_utils import deterministic_model, sgd_args, write_clip_dataset
from tiny import tiny_feature_extractor, tiny_processor, tiny_stage1_config

REPO_ROOT = Path(__file__).resolve().parents[1]
METRICS = {"bleu_1": 0.25, "cider_d": 0.125}


def _read(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


def _check_model_facts(card: str, folder: Path, config: dict) -> None:
    """The "Model" table and the metadata against the folder's saved configs."""
    front_end = _read(folder, "processor_config.json")["feature_extractor"]
    assert (
        f"| audio front end | {front_end['sampling_rate'] / 1000:g} kHz mono, {front_end['max_length_s']:g} s windows,"
        f" {front_end['feature_size']} log-mel bins ({front_end['frequency_min']:g}-{front_end['frequency_max']:g} Hz,"
        f" n_fft {front_end['fft_window_size']}, hop {front_end['hop_length']}) |" in card
    )
    audio, qformer = config["audio_config"], config["qformer_config"]
    assert f"| audio encoder | HTS-AT, depths {audio['depths']}, {audio['hidden_size']} channels |" in card
    assert (
        f"| Q-Former | {qformer['num_hidden_layers']} layers, hidden {qformer['hidden_size']},"
        f" {config['num_query_tokens']} query tokens |" in card
    )
    for stale in ("48 kHz", "10 s windows", "64 log-mel", "num_beams=10", "flan-t5-xl"):
        assert stale not in card, stale


def _check_generation_facts(card: str, folder: Path, config: dict) -> None:
    generation = _read(folder, "generation_config.json")
    expected = ", ".join(f"{name}={generation[name]}" for name in CARD_GENERATION_FIELDS if name in generation)
    assert expected and f"Generation defaults: {expected}." in card
    assert f'Prompt: "{_read(folder, "processor_config.json")["prompt"]}".' in card
    text = config["text_config"]
    assert (
        f"| language model | T5 from `{text['_name_or_path']}`, d_model {text['d_model']}, {text['num_layers']}"
        f" encoder and {text['num_decoder_layers']} decoder layers (frozen) |" in card
    )


def _check_evaluation(card: ModelCard, eval_name: str) -> None:
    results = {(r.metric_type, r.metric_name, r.metric_config): r for r in card.data.eval_results}
    assert set(results) == {("bleu", "BLEU@1", "bleu_1"), ("cider", "CIDEr-D", "cider_d")}
    assert {r.metric_value for r in results.values()} == {25.0, 12.5}
    assert {r.dataset_type for r in results.values()} == {Path(eval_name).stem}  # a name, not the file name
    text = card.text
    assert "| step | epoch | loss | BLEU@1 | CIDEr-D | gen_len |" in text
    rows = [line for line in text.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert [row.split(" | ")[0] for row in rows] == ["| 1", "| 2"], rows  # the final evaluation of step 2 once


@pytest.fixture
def clips(tmp_path):
    return write_clip_dataset(tmp_path / "clips", num_clips=4)


def _stage2_trainer(model, clips, processor, output_dir):
    args = sgd_args(output_dir, learning_rate=0.01, max_steps=2, per_device_train_batch_size=2)
    args.eval_strategy, args.eval_steps = "steps", 1
    args.__post_init__()
    return BlapStage2Trainer(
        model,
        args,
        train_dataset=clips,
        eval_dataset=clips.select(range(1)),
        processing_class=processor,
        caption_metrics=lambda predictions, references: dict(METRICS),
    )


def test_stage2_card_states_the_folders_configs(clips, t5_tokenizer_dir, tmp_path):
    model = deterministic_model()
    model.config.text_config._name_or_path = "google/flan-t5-small"  # the language model it was built from
    processor = tiny_processor(t5_tokenizer_dir)
    processor.prompt = "Describe the music."
    out = tmp_path / "stage2"
    trainer = _stage2_trainer(model, clips, processor, out)
    trainer.train()
    trainer.save_model()
    trainer.evaluate()  # as the training script does after training: the same step evaluated again
    trainer.create_model_card(dataset=["data/train.csv", "data/musiccaps_eval.csv"])

    text = (out / "README.md").read_text()
    card = ModelCard(text)
    config = _read(out, "config.json")
    _check_model_facts(text, out, config)
    _check_generation_facts(text, out, config)
    assert card.data.base_model == config["text_config"]["_name_or_path"] == "google/flan-t5-small"
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "audio-text-to-text"
    _check_evaluation(card, "musiccaps_eval.csv")
    assert "| train | data/train.csv | 4 | 4 |" in text and "| eval | data/musiccaps_eval.csv | 1 | 1 |" in text


def test_lora_card_has_model_index_and_names_its_base(clips, t5_tokenizer_dir, tmp_path):
    deterministic_model().save_pretrained(tmp_path / "base")
    model = add_lora(
        BlapForConditionalGeneration.from_pretrained(tmp_path / "base"), r=2, lora_alpha=4, lora_dropout=0.0
    )
    processor = tiny_processor(t5_tokenizer_dir)
    out = tmp_path / "lora"
    trainer = _stage2_trainer(model, clips, processor, out)
    trainer.train()
    trainer.save_model()
    trainer.create_model_card(dataset=["train.jsonl", "eval_set.jsonl"], finetuned_from=str(tmp_path / "base"))

    text = (out / "README.md").read_text()
    card = ModelCard(text)
    config = _read(tmp_path / "base", "config.json")  # the adapter folder has no config.json: its base's
    _check_model_facts(text, out, config)
    generation = _read(out, "generation_config.json")
    expected = ", ".join(f"{name}={generation[name]}" for name in CARD_GENERATION_FIELDS if name in generation)
    assert f"Generation defaults: {expected}." in text
    assert card.data.base_model is None  # a local folder is not a Hub id; the usage names it instead
    assert f'PeftModel.from_pretrained(BlapForConditionalGeneration.from_pretrained("{tmp_path / "base"}"),' in text
    assert "lora" in card.data.tags
    _check_evaluation(card, "eval_set.jsonl")


def test_stage1_card(fixture_dir, tmp_path):
    from transformers_blap.training.stage1 import BlapStage1Collator, BlapStage1Trainer, BlapStage1TrainingArguments

    torch.manual_seed(0)
    model = BlapForRepresentationLearning(tiny_stage1_config())
    tokenizer = build_qformer_tokenizer(fixture_dir / "bert-base-uncased")
    processor = BlapStage1Processor(tiny_feature_extractor(), tokenizer)
    generator = torch.Generator().manual_seed(0)
    rows = [{"audio": (0.2 * torch.randn(16_000, generator=generator)).numpy(), "captions": ["calm piano"]}] * 2
    out = tmp_path / "stage1"
    args = BlapStage1TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=2,
        max_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        train_audio_encoder=False,
    )
    trainer = BlapStage1Trainer(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=BlapStage1Collator(processor),
        processing_class=processor,
    )
    trainer.train()
    trainer.save_model()
    trainer.create_model_card()

    text = (out / "README.md").read_text()
    card = ModelCard(text)
    config = _read(out, "config.json")
    _check_model_facts(text, out, config)
    assert "| language model | none in stage-1 weights (stage 2 adds one) |" in text
    assert "Generation defaults" not in text and "model-index" not in text
    assert card.data.pipeline_tag == "feature-extraction" and "blap-stage1" in card.data.tags
    assert "(the HTS-AT audio encoder frozen)" in text and "| train_audio_encoder | False |" in text
    assert "BlapForRepresentationLearning.from_pretrained" in text


def test_demo_card_metadata_equals_the_generated_cards():
    demo = REPO_ROOT / "demo" / "blap-synthetic"
    shipped = ModelCard((demo / "README.md").read_text()).data
    generated = render_folder_card(demo).data
    assert (shipped.library_name, shipped.pipeline_tag) == (generated.library_name, generated.pipeline_tag)
