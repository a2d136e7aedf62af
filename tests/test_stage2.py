"""Stage 2: trainable set, loss normalisation, precision, starting checkpoints, evaluation, LoRA, model card."""

import copy
import importlib.util
import json
import logging
from pathlib import Path

import huggingface_hub
import pytest
import safetensors.torch
import torch
from peft import PeftModel
from transformers import EarlyStoppingCallback, T5ForConditionalGeneration, pipeline

from transformers_blap import (
    BlapForConditionalGeneration,
    BlapForRepresentationLearning,
)
from transformers_blap.cli import main as cli_main
from transformers_blap.modeling_blap import caption_loss
from transformers_blap.training import (
    BlapDataCollator,
    BlapStage2Trainer,
    add_lora,
    configure_stage2_trainable,
    load_lora_captioner,
    load_stage2_model,
    save_lora_captioner,
    warn_if_float16,
)
from transformers_blap.training.adapter import recorded_language_model
from transformers_blap.training.stage2 import LANGUAGE_MODEL_FILES

from stage2_utils import deterministic_model, sgd_args, trainable_state, write_clip_dataset
from tiny import tiny_processor, tiny_stage1_config

STAGE2_PREFIXES = ("audio_layernorm.", "qformer.", "language_projection.")


@pytest.fixture
def processor(t5_tokenizer_dir):
    return tiny_processor(t5_tokenizer_dir)


@pytest.fixture
def clip_dataset(tmp_path):
    return write_clip_dataset(tmp_path / "clips")


def _batch(processor, dataset, size: int = 4):
    return BlapDataCollator(processor, training=False)([dataset[index] for index in range(size)])


# ------------------------------------------------------------------------------------------------- trainable set


def test_trainer_trains_exactly_the_stage2_set(processor, clip_dataset, tmp_path):
    model = deterministic_model()
    args = sgd_args(tmp_path / "out")
    trainer = BlapStage2Trainer(model, args, train_dataset=clip_dataset, processing_class=processor)
    names = [name for name, param in model.named_parameters()]
    expected = sorted(name for name in names if name == "query_tokens" or name.startswith(STAGE2_PREFIXES))
    assert trainer.trainable_parameter_names == expected
    assert {"query_tokens", "audio_layernorm.weight", "language_projection.weight"} <= set(expected)
    assert any(".crossattention." in name for name in expected)
    assert [name for name, param in model.named_parameters() if param.requires_grad] == [
        name for name in names if name in set(expected)
    ]

    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    trainer.train()
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    # Every stage-2 weight moves; nothing of the audio encoder (BatchNorm statistics included) or the LLM does.
    assert changed == set(expected)
    assert not model.audio_encoder.training


def test_configure_keeps_trainable_weights_float32_when_frozen_ones_are_bfloat16():
    model = deterministic_model().to(torch.bfloat16)
    names = configure_stage2_trainable(model)
    parameters = dict(model.named_parameters())
    assert {parameters[name].dtype for name in names} == {torch.float32}
    assert model.language_model.shared.weight.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------- loss and update


def test_caption_loss_sums_over_the_given_token_count():
    logits = torch.randn(2, 3, 7)
    labels = torch.tensor([[1, 2, -100], [3, -100, -100]])
    mean = torch.nn.functional.cross_entropy(logits[labels != -100], labels[labels != -100])
    torch.testing.assert_close(caption_loss(logits, labels), mean)
    torch.testing.assert_close(caption_loss(logits, labels, num_items_in_batch=torch.tensor(6)), mean * 3 / 6)


def test_gradient_accumulation_gives_the_update_of_one_large_batch(processor, clip_dataset, tmp_path):
    """2 micro-batches of 2 with accumulation == one batch of 4: same loss, same SGD update (token mean)."""
    # The two halves hold different numbers of caption tokens, so averaging per-micro-batch means would differ.
    labels = _batch(processor, clip_dataset)["labels"]
    assert (labels[:2] != -100).sum() != (labels[2:] != -100).sum()

    results = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        model = deterministic_model()
        start = trainable_state(model)
        args = sgd_args(
            tmp_path / f"ga{accumulation}",
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
        )
        trainer = BlapStage2Trainer(model, args, train_dataset=clip_dataset, processing_class=processor)
        trainer.train()
        update = {name: value - start[name] for name, value in trainable_state(model).items()}
        results.append((trainer.state.log_history[0]["loss"], update))

    (loss_large, update_large), (loss_accumulated, update_accumulated) = results
    assert loss_accumulated == pytest.approx(loss_large, rel=1e-5)
    for name, value in update_large.items():
        torch.testing.assert_close(update_accumulated[name], value, rtol=1e-4, atol=1e-6, msg=name)
    # The reference: the same update computed by hand from the mean loss over all 4 clips' tokens.
    model = deterministic_model()
    configure_stage2_trainable(model)
    model(**_batch(processor, clip_dataset)).loss.backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(update_large[name], -param.grad, rtol=1e-4, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------------------------ precision


def test_qformer_runs_in_float32_under_bfloat16_autocast(processor, clip_dataset):
    model = deterministic_model()
    batch = _batch(processor, clip_dataset, size=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(**batch)
    assert outputs.qformer_outputs.last_hidden_state.dtype == torch.float32
    assert outputs.language_model_inputs.dtype == torch.bfloat16  # the projection runs under autocast
    assert torch.isfinite(outputs.loss)


def test_bfloat16_model_trains_with_float32_trainables(processor, clip_dataset, tmp_path):
    model = deterministic_model()
    model.save_pretrained(tmp_path / "base")
    model = load_stage2_model(tmp_path / "base", dtype=torch.bfloat16)
    assert model.language_model.shared.weight.dtype == torch.bfloat16
    assert model.qformer.layernorm.weight.dtype == torch.float32 and model.query_tokens.dtype == torch.float32
    args = sgd_args(tmp_path / "out", bf16=True, learning_rate=0.01)
    trainer = BlapStage2Trainer(model, args, train_dataset=clip_dataset, processing_class=processor)
    assert model.language_projection.weight.dtype == torch.float32
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.state.log_history[0]["loss"]))


def test_float16_is_detected_and_warned_about(tmp_path):
    model = deterministic_model()
    with pytest.warns(UserWarning, match="Flan-T5 overflows in float16"):
        assert warn_if_float16(model, sgd_args(tmp_path, fp16=True))
    model.language_model.half()
    with pytest.warns(UserWarning, match="float16 language-model weights"):
        assert warn_if_float16(model)
    assert not warn_if_float16(deterministic_model(), sgd_args(tmp_path, bf16=True))


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_gives_the_same_gradients(processor, clip_dataset, use_reentrant):
    batch = _batch(processor, clip_dataset)
    gradients = []
    for checkpointing in (False, True):
        model = deterministic_model()
        configure_stage2_trainable(model)
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
            assert model.language_model.encoder.block[0].gradient_checkpointing
            assert model.language_model.decoder.block[0].gradient_checkpointing
            assert model.qformer.encoder.layer[0].gradient_checkpointing
        model(**batch).loss.backward()
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad})
    for name, value in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], value, msg=name)


# ------------------------------------------------------------------------------------------- starting checkpoints


def test_stage2_starts_from_a_stage1_checkpoint_and_a_flan_t5(tmp_path):
    torch.manual_seed(1)
    stage1 = BlapForRepresentationLearning(tiny_stage1_config())
    stage1.save_pretrained(tmp_path / "stage1")
    # A Flan-T5-style folder: the tiny T5 with a head that differs from its embeddings, saved untied.
    language_model = copy.deepcopy(deterministic_model(seed=2).language_model)
    with torch.no_grad():
        language_model.lm_head.weight.add_(1.0)
    T5ForConditionalGeneration.save_pretrained(language_model, tmp_path / "flan-t5")

    with pytest.raises(ValueError, match="stage-1 checkpoint.*language_model_name_or_path"):
        load_stage2_model(tmp_path / "stage1")
    # The language model's absence from the stage-1 checkpoint is expected: no load report calls it a problem.
    records = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addHandler(handler)
    try:
        model = load_stage2_model(tmp_path / "stage1", language_model_name_or_path=tmp_path / "flan-t5")
    finally:
        transformers_logger.removeHandler(handler)
    assert not records, [record.getMessage()[:200] for record in records]
    state, stage1_state = model.state_dict(), stage1.state_dict()
    shared = [key for key in state if key.startswith(("audio_encoder.", "audio_layernorm.", "qformer.", "query_"))]
    assert any(".crossattention." in key for key in shared) and "query_tokens" in shared
    for key in shared:
        torch.testing.assert_close(state[key], stage1_state[key], msg=key)
    for key, value in language_model.state_dict().items():
        torch.testing.assert_close(state[f"language_model.{key}"], value, msg=key)
    assert model.language_model.lm_head.weight is not model.language_model.shared.weight
    assert not torch.equal(model.language_model.lm_head.weight, model.language_model.shared.weight)
    assert model.config.text_config.dense_act_fn == "gelu"
    assert configure_stage2_trainable(model)  # trains from here


def test_the_language_model_can_be_a_hub_id(processor, clip_dataset, tmp_path, monkeypatch):
    """`load_stage2_model(stage1, "org/flan-t5")` reads the repository's config and safetensors weights through
    `huggingface_hub.snapshot_download` (the network boundary, faked here); a LoRA folder records the Hub id."""
    torch.manual_seed(1)
    BlapForRepresentationLearning(tiny_stage1_config()).save_pretrained(tmp_path / "stage1")
    language_model = deterministic_model(seed=2).language_model
    T5ForConditionalGeneration.save_pretrained(language_model, tmp_path / "flan-t5")
    requests = []

    def snapshot(repo_id, allow_patterns=None, **kwargs):
        requests.append((repo_id, allow_patterns))
        assert repo_id == "org/flan-t5", repo_id
        return str(tmp_path / "flan-t5")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    model = load_stage2_model(tmp_path / "stage1", language_model_name_or_path="org/flan-t5")
    assert requests == [("org/flan-t5", LANGUAGE_MODEL_FILES)]
    for key, value in language_model.state_dict().items():
        torch.testing.assert_close(model.language_model.state_dict()[key], value, msg=key)
    lora = add_lora(model, r=2, lora_alpha=4)
    save_lora_captioner(lora, tmp_path / "out")
    assert recorded_language_model(tmp_path / "out") == "org/flan-t5"
    batch = _batch(processor, clip_dataset, size=2)
    lora.eval()
    with torch.no_grad():
        torch.testing.assert_close(load_lora_captioner(tmp_path / "out")(**batch).logits, lora(**batch).logits)


# ---------------------------------------------------------------------------------------------------- evaluation


class ScriptedMetrics:
    """A caption metric returning a scripted `score` per evaluation, recording what it was given."""

    def __init__(self, scores):
        self.scores = list(scores)
        self.calls = []

    def __call__(self, predictions, references):
        self.calls.append((predictions, references))
        return {"score": self.scores[len(self.calls) - 1]}


def test_evaluation_generates_scores_against_all_references_and_logs_samples(processor, tmp_path):
    dataset = write_clip_dataset(tmp_path / "clips", num_clips=5, seconds=2.0)
    dataset = dataset.map(lambda row: {"captions": row["captions"] + ["second reference"]})
    metrics = ScriptedMetrics([0.5])
    args = sgd_args(tmp_path / "out", per_device_eval_batch_size=2)
    trainer = BlapStage2Trainer(
        deterministic_model(),
        args,
        eval_dataset=dataset,
        processing_class=processor,
        caption_metrics=metrics,
        num_logged_captions=3,
    )
    generation_config = trainer.model.generation_config.to_dict()
    assert not trainer.get_eval_dataloader().collate_fn.training  # fixed window, first caption
    assert trainer.data_collator.training
    results = trainer.evaluate()
    assert results["eval_score"] == 0.5 and "eval_loss" in results and results["eval_gen_len"] > 0
    predictions, references = metrics.calls[0]
    assert len(predictions) == 5 and all(isinstance(text, str) for text in predictions)
    assert references == dataset["captions"]
    lines = (tmp_path / "out" / "eval_captions.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    assert record["step"] == 0 and len(record["samples"]) == 3
    assert record["samples"][0] == {"prediction": predictions[0], "references": dataset["captions"][0]}
    # Seq2SeqTrainer's defaults did not leak into the model's generation config.
    assert trainer.model.generation_config.to_dict() == generation_config


def test_best_checkpoint_and_early_stopping_follow_the_chosen_metric(processor, clip_dataset, tmp_path):
    metrics = ScriptedMetrics([0.1, 0.7, 0.3, 0.2, 0.9])
    args = sgd_args(
        tmp_path / "out",
        learning_rate=0.01,
        max_steps=10,
        per_device_train_batch_size=2,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        metric_for_best_model="score",
        greater_is_better=True,
        load_best_model_at_end=True,
    )
    trainer = BlapStage2Trainer(
        deterministic_model(),
        args,
        train_dataset=clip_dataset,
        eval_dataset=clip_dataset.select(range(2)),
        processing_class=processor,
        caption_metrics=metrics,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=2)],
    )
    trainer.train()
    assert trainer.state.global_step == 4  # two evaluations without improvement after step 2
    assert trainer.state.best_metric == 0.7
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-2")
    best = BlapForConditionalGeneration.from_pretrained(trainer.state.best_model_checkpoint)
    for name, value in best.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[name], value, msg=name)


# ---------------------------------------------------------------------------------------------------------- LoRA


def _stage2_names(model: BlapForConditionalGeneration) -> list[str]:
    names = [name for name, _ in model.named_parameters()]
    return sorted(name for name in names if name == "query_tokens" or name.startswith(STAGE2_PREFIXES))


def _lora_base(tmp_path: Path) -> BlapForConditionalGeneration:
    deterministic_model().save_pretrained(tmp_path / "base")
    return BlapForConditionalGeneration.from_pretrained(tmp_path / "base")


def test_lora_trains_adapter_and_stage2_weights_and_saves_a_peft_folder(processor, clip_dataset, tmp_path):
    stage2 = _stage2_names(deterministic_model())
    model = add_lora(_lora_base(tmp_path), r=2, lora_alpha=4, lora_dropout=0.0)
    assert isinstance(model, PeftModel)
    trainer = BlapStage2Trainer(
        model, sgd_args(tmp_path / "out", learning_rate=0.1), train_dataset=clip_dataset, processing_class=processor
    )
    lora = [name for name in trainer.trainable_parameter_names if ".lora_" in name]
    copies = [name for name in trainer.trainable_parameter_names if ".lora_" not in name]
    # peft's trainable copies of the stage-2 modules (`modules_to_save`) and the query tokens; not the originals.
    assert copies == sorted(
        name if name == "query_tokens" else name.replace(".", ".modules_to_save.default.", 1) for name in stage2
    )
    # q and v of every T5 attention: 2 encoder layers x 1 + 2 decoder layers x 2 attentions, x (q, v) x (A, B).
    assert len(lora) == (2 + 4) * 2 * 2
    assert all(".SelfAttention." in name or ".EncDecAttention." in name for name in lora)
    assert all(name.split(".lora_")[0].endswith((".q", ".v")) for name in lora)
    trainer.train()
    trainer.save_model()

    out = tmp_path / "out"
    assert {"adapter_config.json", "adapter_model.safetensors", "generation_config.json"} <= {
        path.name for path in out.iterdir()
    }
    assert not list(out.glob("**/model*.safetensors"))
    saved = safetensors.torch.load_file(out / "adapter_model.safetensors")
    assert sorted(key.removeprefix("base_model.model.") for key in saved if ".lora_" not in key) == stage2
    assert len([key for key in saved if ".lora_" in key]) == len(lora)

    batch = _batch(processor, clip_dataset, size=2)
    generation = {"input_features": batch["input_features"], "input_ids": batch["input_ids"]}
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(**batch).logits
        base = BlapForConditionalGeneration.from_pretrained(tmp_path / "base").eval()
        assert not torch.allclose(base(**batch).logits, expected)
        # peft's own API opens the folder onto the base model: the trained model, query tokens included.
        reloaded = PeftModel.from_pretrained(base, out).eval()
        torch.testing.assert_close(reloaded(**batch).logits, expected)
    assert torch.equal(reloaded.generate(**generation), trainer.model.generate(**generation))

    # load_lora_captioner: the base named in the folder, merged, nothing trainable; the pipeline takes it.
    captioner_model = load_lora_captioner(out)
    assert isinstance(captioner_model, BlapForConditionalGeneration)
    assert not any(param.requires_grad for param in captioner_model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(captioner_model(**batch).logits, expected, rtol=1e-4, atol=1e-5)
    captioner = pipeline("audio-to-text", model=captioner_model, processor=str(out), device="cpu")
    trained_caption = processor.batch_decode(
        trainer.model.generate(**_batch(processor, clip_dataset, size=1)), skip_special_tokens=True
    )[0].strip()
    assert captioner(clip_dataset[0]["audio"])[0]["generated_text"] == trained_caption
    # `blap caption --model FOLDER` takes the adapter folder.
    captions = tmp_path / "captions.jsonl"
    clip = clip_dataset[0]["audio"]
    assert cli_main(["caption", clip, "--model", str(out), "--output", str(captions), "--no-progress"]) == 0
    assert [json.loads(line)["caption"] for line in captions.read_text().splitlines()] == [trained_caption]
    (tmp_path / "base").rename(tmp_path / "moved")
    with pytest.raises(OSError, match=r"not on this machine: pass `base=`"):
        load_lora_captioner(out)
    with torch.no_grad():
        moved = load_lora_captioner(out, base=tmp_path / "moved", merge=False)
        assert isinstance(moved, PeftModel)
        torch.testing.assert_close(moved(**batch).logits, expected)


def test_lora_from_a_stage1_checkpoint_records_its_language_model(processor, clip_dataset, tmp_path):
    """A LoRA run from a stage-1 checkpoint and a separate Flan-T5: the adapter's base (stage 1) has no language
    model, so the folder records where it came from, and the folder alone gives the captioner back."""
    torch.manual_seed(1)
    BlapForRepresentationLearning(tiny_stage1_config()).save_pretrained(tmp_path / "stage1")
    T5ForConditionalGeneration.save_pretrained(deterministic_model(seed=2).language_model, tmp_path / "flan-t5")
    model = add_lora(
        load_stage2_model(tmp_path / "stage1", language_model_name_or_path=tmp_path / "flan-t5"), r=2, lora_alpha=4
    )
    with torch.no_grad():  # a trained adapter and projection: nothing of the folder may be left out on reload
        for name, param in model.named_parameters():
            if ".lora_B." in name or "language_projection.modules_to_save" in name:
                param.add_(0.01 * torch.randn_like(param))
    save_lora_captioner(model, tmp_path / "out")
    processor.save_pretrained(tmp_path / "out")  # as the trainer saves it
    batch = _batch(processor, clip_dataset, size=2)
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
        torch.testing.assert_close(load_lora_captioner(tmp_path / "out")(**batch).logits, expected)
    captions = tmp_path / "captions.jsonl"
    clip = clip_dataset[0]["audio"]
    assert cli_main(["caption", clip, "--model", str(tmp_path / "out"), "--output", str(captions)]) == 0
    (record,) = [json.loads(line) for line in captions.read_text().splitlines()]
    assert record["error"] is None and record["caption"]
    (tmp_path / "flan-t5").rename(tmp_path / "moved")
    with pytest.raises(
        OSError, match=r"stage-1 checkpoint .*flan-t5\) is not on this machine: pass `language_model=`"
    ):
        load_lora_captioner(tmp_path / "out")
    with torch.no_grad():
        moved = load_lora_captioner(tmp_path / "out", language_model=tmp_path / "moved")
        torch.testing.assert_close(moved(**batch).logits, expected)


def test_lora_best_checkpoint_and_resume_read_the_adapter_back(processor, clip_dataset, tmp_path):
    model = add_lora(_lora_base(tmp_path), r=2, lora_dropout=0.0)
    args = sgd_args(
        tmp_path / "out",
        learning_rate=0.05,
        max_steps=2,
        per_device_train_batch_size=2,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        metric_for_best_model="score",
        load_best_model_at_end=True,
    )
    trainer = BlapStage2Trainer(
        model,
        args,
        train_dataset=clip_dataset,
        eval_dataset=clip_dataset.select(range(1)),
        processing_class=processor,
        caption_metrics=ScriptedMetrics([0.9, 0.1]),
    )
    trainer.train()
    best = tmp_path / "out" / "checkpoint-1"
    assert trainer.state.best_model_checkpoint == str(best)
    best_weights = _adapter_weights_by_parameter(trainer.model, best)
    last_weights = _adapter_weights_by_parameter(trainer.model, tmp_path / "out" / "checkpoint-2")
    assert not torch.equal(best_weights["query_tokens"], last_weights["query_tokens"])
    state = dict(trainer.model.get_base_model().named_parameters())
    for name, value in best_weights.items():  # LoRA weights, stage-2 copies and query tokens: the best step's
        torch.testing.assert_close(state[name], value, msg=name)

    args.load_best_model_at_end = False
    resumed = BlapStage2Trainer(
        add_lora(BlapForConditionalGeneration.from_pretrained(tmp_path / "base"), r=2, lora_dropout=0.0),
        args,
        train_dataset=clip_dataset,
        eval_dataset=clip_dataset.select(range(1)),
        processing_class=processor,
        caption_metrics=ScriptedMetrics([0.5]),
    )
    resumed.train(resume_from_checkpoint=str(best))
    assert resumed.state.global_step == 2
    state = dict(resumed.model.get_base_model().named_parameters())
    for name, value in _adapter_weights_by_parameter(resumed.model, tmp_path / "out" / "checkpoint-2").items():
        torch.testing.assert_close(state[name], value, msg=name)
        assert state[name].requires_grad, name


def _adapter_weights_by_parameter(model: PeftModel, folder: Path) -> dict[str, torch.Tensor]:
    """An adapter folder's weights by the name of the parameter they load into (the trainable copy, the adapter)."""
    names = {name for name, _ in model.get_base_model().named_parameters()}
    weights = {}
    for key, value in safetensors.torch.load_file(folder / "adapter_model.safetensors").items():
        key = key.removeprefix("base_model.model.")
        candidates = [
            key,
            key.replace(".weight", ".default.weight"),
            key.replace(".", ".modules_to_save.default.", 1),
        ]
        weights[next(name for name in candidates if name in names)] = value
    return weights


def test_lora_targets_only_the_language_model():
    with pytest.raises(ValueError, match="outside the language model"):
        add_lora(deterministic_model(), target_modules=["query", "q"])


# ---------------------------------------------------------------------------------------------------- model card


def test_push_to_hub_uploads_a_card_with_data_hyperparameters_and_evaluation(
    processor, clip_dataset, tmp_path, monkeypatch
):
    uploads = []

    def create_repo(self, repo_id, **kwargs):
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        files = sorted(path.name for path in folder.iterdir() if path.is_file())
        uploads.append({"repo_id": repo_id, "files": files, "card": (folder / "README.md").read_text()})
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/0", commit_message="", commit_description="", oid="0"
        )

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    args = sgd_args(
        tmp_path / "out",
        learning_rate=0.01,
        max_steps=2,
        per_device_train_batch_size=2,
        eval_strategy="steps",
        eval_steps=1,
        push_to_hub=True,
        hub_model_id="someone/blap-musiccaps",
        hub_strategy="end",
    )
    trainer = BlapStage2Trainer(
        deterministic_model(),
        args,
        train_dataset=clip_dataset,
        eval_dataset=clip_dataset.select(range(3)),
        processing_class=processor,
        caption_metrics=lambda predictions, references: {"bleu_1": 0.25, "cider_d": 0.125},
    )
    trainer.train()
    trainer.push_to_hub(dataset=["toy-train.csv", "toy-eval.csv"], finetuned_from="someone/blap-base")

    upload = uploads[-1]
    assert upload["repo_id"] == "someone/blap-musiccaps"
    assert {"README.md", "config.json", "model.safetensors", "generation_config.json"} <= set(upload["files"])
    card = upload["card"]
    assert card.startswith("---\n") and "library_name: transformers" in card
    assert "base_model: someone/blap-base" in card
    assert "| train | toy-train.csv | 8 | 8 |" in card and "| eval | toy-eval.csv | 3 | 3 |" in card
    assert "| learning_rate | 0.01 |" in card and "| total_train_batch_size | 2 |" in card
    assert "| step | epoch | loss | BLEU@1 | CIDEr-D | gen_len |" in card
    # model-index: the final weights' scores, x100.
    assert "name: BLEU@1\n" in card and "value: 25.0\n" in card and "value: 12.5\n" in card
    assert "| toy-eval.csv | 25.0 | 12.5 |" in card
    assert "| 2 | 0.5 |" in card and "| 0.25 | 0.125 |" in card
    assert "## Sample captions (last evaluation)" in card


# -------------------------------------------------------------------------------------------------------- script


def _train_stage2_script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "train_stage2.py"
    spec = importlib.util.spec_from_file_location("train_stage2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_finetuning_is_one_command(processor, tmp_path):
    model = deterministic_model()
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    write_clip_dataset(tmp_path / "clips", num_clips=6, seconds=1.5)
    train = tmp_path / "train.csv"
    train.write_text(
        "audio,caption_1,caption_2\n"
        + "".join(f"clips/clip{index}.wav,an upbeat song {index},calm piano {index}\n" for index in range(4))
    )
    evaluation = tmp_path / "eval.csv"
    evaluation.write_text("audio,caption\nclips/clip4.wav,a rock song\nclips/clip5.wav,soft jazz\n")
    output = tmp_path / "out"
    results = _train_stage2_script().main(
        [
            "--model_name_or_path", str(tmp_path / "base"),
            "--train_file", str(train),
            "--output_dir", str(output),
            "--eval_file", str(evaluation),
            "--max_steps", "2",
            "--per_device_train_batch_size", "2",
            "--learning_rate", "1e-3",
            "--eval_strategy", "steps",
            "--eval_steps", "2",
            "--save_steps", "2",
            "--metric_for_best_model", "cider_d",
            "--load_best_model_at_end",
            "--early_stopping_patience", "3",
            "--eval_metrics", "bleu_1,bleu_4,meteor,rouge_l,cider_d",
            "--generation_num_beams", "1",
            "--use_cpu",
            "--report_to", "none",
            "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    assert {"train_loss", "eval_loss", "eval_bleu_1", "eval_cider_d", "eval_meteor"} <= set(results)
    assert {"config.json", "model.safetensors", "processor_config.json", "README.md", "eval_captions.jsonl"} <= {
        path.name for path in output.iterdir()
    }
    card = (output / "README.md").read_text()
    assert "| train | train.csv | 4 | 8 |" in card and "| eval | eval.csv | 2 | 2 |" in card
    assert "| step | epoch | loss | BLEU@1 | BLEU@4 | METEOR | ROUGE-L | CIDEr-D | gen_len |" in card
    assert "PhraseDropping" in card
    assert "base_model:" not in card  # a local starting point and a T5 without a Hub id: no base model claimed
    assert "- type: cider\n" in card and "name: CIDEr-D\n" in card and "## Evaluation during training" in card
    BlapForConditionalGeneration.from_pretrained(output)


@pytest.mark.slow
def test_lora_finetuning_from_the_command_line_saves_the_adapter(processor, tmp_path):
    deterministic_model().save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    write_clip_dataset(tmp_path / "clips", num_clips=2)
    train = tmp_path / "train.jsonl"
    train.write_text(
        "\n".join(json.dumps({"audio": f"clips/clip{i}.wav", "captions": ["a", "b"]}) for i in range(2)) + "\n"
    )
    output = tmp_path / "out"
    _train_stage2_script().main(
        [
            "--model_name_or_path", str(tmp_path / "base"), "--train_file", str(train), "--output_dir", str(output),
            "--use_lora", "--lora_r", "2", "--max_steps", "1", "--per_device_train_batch_size", "2",
            "--use_cpu", "--report_to", "none", "--no_phrase_dropping",
        ]
    )  # fmt: skip
    assert (output / "adapter_model.safetensors").is_file() and not (output / "model.safetensors").exists()
    card = (output / "README.md").read_text()
    assert "library_name: transformers" in card and "- lora\n" in card
    assert "| lora | r=2," in card and "caption_augmentation | None" in card
    model = load_lora_captioner(output)
    assert not any(param.requires_grad for param in model.parameters())


def test_memory_estimate_counts_parameters_and_saved_activations():
    path = Path(__file__).resolve().parents[1] / "scripts" / "estimate_memory.py"
    spec = importlib.util.spec_from_file_location("estimate_memory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = deterministic_model().config
    counts = module.parameter_counts(config)
    model = deterministic_model()
    assert counts["trainable"] == sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for p in [*model.audio_encoder.parameters(), *model.language_model.parameters()]
    )
    assert counts["language_model"] == model.language_model.num_parameters()
    sizes = {"batch_size": 2, "prompt_tokens": 5, "caption_tokens": 8}
    full = module.saved_activation_bytes(config, bf16=False, checkpointing=False, **sizes)
    checkpointed = module.saved_activation_bytes(config, bf16=False, checkpointing=True, **sizes)
    doubled = module.saved_activation_bytes(config, bf16=False, checkpointing=False, **dict(sizes, batch_size=4))
    assert 0 < checkpointed < full
    assert doubled == pytest.approx(2 * full, rel=0.05)

    with torch.no_grad(), module.PeakLiveBytes(excluded=set()) as tracker:
        first = torch.ones(256, 1024)  # 1 MiB
        second = first * 2
        del first
        third = second + 1
    assert tracker.peak == 2 * 2**20 and tracker.live == 2 * 2**20
    del second, third
    assert tracker.live == 0
