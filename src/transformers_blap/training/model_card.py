"""
The model cards written by the trainers: stage 1, stage 2 / fine-tuning, and LoRA fine-tuning. Each card is the
package's card (`transformers_blap.hub.render_model_card`): its facts about the model (sizes, audio front end,
generation defaults, prompt, language model) come from the trained model's configuration, generation config and
processor, the very objects saved beside it; its training sections (data, hyperparameters, evaluation table, sample
captions) come from the run; the chosen checkpoint's scores become `model-index`.
"""

import copy
import json
import re
from pathlib import Path
from typing import Any

from ..evaluation.metrics import ALL_METRICS
from ..evaluation.report import metric_display_name
from ..hub import DEFAULT_LICENSE, describe_generation, eval_result, hub_id_or_none, render_model_card
from .adapter import is_lora_model
from .launch import DATA_REPORT_NAME

# Keys of `Trainer.log` entries that are bookkeeping, not evaluation results.
_EVAL_BOOKKEEPING = ("runtime", "samples_per_second", "steps_per_second", "model_preparation_time")
# Preferred column order; other metrics follow alphabetically.
_METRIC_ORDER = (
    "loss",
    "bleu_1",
    "bleu_2",
    "bleu_3",
    "bleu_4",
    "meteor",
    "rouge_l",
    "cider_d",
    "spice",
    "spider",
    "sbert_sim",
    "fluency_error_rate",
    "fense",
    "gen_len",
)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [_format_value(cell).replace("|", "\\|").replace("\n", " ") for cell in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluation_rows(log_history: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """
    The evaluation table from `trainer.state.log_history`.

    Args:
        log_history (`list[dict]`): `Trainer` log entries.

    Returns:
        `(header, rows)`: one row per evaluated step (step, epoch, then every metric by its display name, e.g.
        BLEU@1); a step evaluated twice (the final `trainer.evaluate()` after the last in-training evaluation) is one
        row with the later values.
    """
    by_step: dict[Any, dict[str, Any]] = {}
    for entry in log_history:
        if any(key.startswith("eval_") and not key.endswith(_EVAL_BOOKKEEPING) for key in entry):
            by_step.setdefault(entry.get("step", ""), {}).update(entry)
    entries = list(by_step.values())
    metrics: list[str] = []
    for entry in entries:
        for key in entry:
            if key.startswith("eval_") and not key.endswith(_EVAL_BOOKKEEPING):
                name = key.removeprefix("eval_")
                if name not in metrics:
                    metrics.append(name)

    def order(name: str) -> tuple[int, str]:
        for index, known in enumerate(_METRIC_ORDER):
            if name == known or name.endswith("_" + known):
                return (index, name)
        return (len(_METRIC_ORDER), name)

    metrics.sort(key=order)
    rows = [
        [entry.get("step", ""), entry.get("epoch", "")] + [entry.get(f"eval_{name}", "") for name in metrics]
        for entry in entries
    ]
    return ["step", "epoch", *map(metric_display_name, metrics)], rows


def training_hyperparameters(trainer) -> dict[str, Any]:
    """
    The run's hyperparameters, from the trainer's arguments, model and collator.

    Args:
        trainer ([`BlapStage1Trainer`] or [`BlapStage2Trainer`]).

    Returns:
        `dict[str, Any]`: name -> value, in reading order.
    """
    args = trainer.args
    model = trainer.model
    collator = trainer.data_collator
    trainable = sum(param.numel() for param in model.parameters() if param.requires_grad)
    total = sum(param.numel() for param in model.parameters())
    precision = "bf16 mixed" if args.bf16 else "fp16 mixed" if args.fp16 else "fp32"
    language_model = getattr(model, "language_model", None)
    if language_model is not None:
        precision += f"; language model weights {str(language_model.dtype).removeprefix('torch.')}; Q-Former float32"
    total_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    hyperparameters: dict[str, Any] = {
        "learning_rate": args.learning_rate,
        "optimizer": f"{getattr(args.optim, 'value', args.optim)} (betas {args.adam_beta1}, {args.adam_beta2},"
        f" eps {args.adam_epsilon}, weight decay {args.weight_decay})",
        "lr_scheduler": getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type),
        "warmup_steps": args.warmup_steps,
        "max_steps": args.max_steps if args.max_steps > 0 else f"{args.num_train_epochs} epochs",
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "num_processes": args.world_size,
        "total_train_batch_size": total_batch,
        "per_device_eval_batch_size": args.per_device_eval_batch_size,
        "max_grad_norm": args.max_grad_norm,
        "precision": precision,
        "gradient_checkpointing": args.gradient_checkpointing,
        "seed": args.seed,
        "trainable_parameters": f"{trainable:,} of {total:,}",
    }
    if is_lora_model(model):
        peft_config = model.peft_config["default"]
        hyperparameters["lora"] = (
            f"r={peft_config.r}, alpha={peft_config.lora_alpha}, dropout={peft_config.lora_dropout},"
            f" target_modules={peft_config.target_modules!r}"
        )
    preparer = getattr(collator, "preparer", None)
    if preparer is not None:
        hyperparameters["audio_window_s"] = preparer.window_s
        hyperparameters["caption_augmentation"] = repr(preparer.caption_augmentation)
    processor = trainer.processing_class
    if processor is not None:
        prompt = getattr(collator, "prompt", None) or getattr(processor, "prompt", None)
        if prompt is not None:
            hyperparameters["prompt"] = prompt
        hyperparameters["max_txt_len"] = processor.max_txt_len
    if trainer.card_stage == "stage1":
        hyperparameters["train_audio_encoder"] = trainer._option("train_audio_encoder")
    if getattr(args, "predict_with_generate", False):
        generation = copy.deepcopy(model.generation_config)
        generation.num_beams = args.generation_num_beams or generation.num_beams
        generation.max_length = args.generation_max_length or generation.max_length
        hyperparameters["eval_generation"] = describe_generation(generation)
    if args.metric_for_best_model:
        hyperparameters["metric_for_best_model"] = args.metric_for_best_model
    return hyperparameters


def _dataset_summary(name: str | None, dataset: Any) -> list[Any] | None:
    if dataset is None:
        return None
    size = len(dataset) if hasattr(dataset, "__len__") else "?"
    captions: Any = "?"
    if hasattr(dataset, "column_names") and "captions" in dataset.column_names:
        captions = sum(len(row) for row in dataset["captions"])
    return [name or "(unnamed)", size, captions]


_PROCEDURES = {
    "stage1": (
        "Stage 1 of BLAP (representation learning): the Q-Former, its query tokens and the audio and text projections"
        "{audio} are trained with the audio-text contrastive, audio-text matching and audio-grounded caption"
        " generation losses."
    ),
    "stage2": (
        "Stage 2 of BLAP: the HTS-AT audio encoder and the T5 language model are frozen; the Q-Former, its query"
        " tokens, the audio LayerNorm and the projection into the language model are trained with the language"
        " model's caption loss (token mean over each optimizer step)."
    ),
}
_PROCEDURES["lora"] = _PROCEDURES["stage2"].replace(
    "are trained with", "are trained, with a LoRA adapter on the language model's attention, with"
)


def training_card_sections(trainer, datasets: list[str] | None = None, kind: str = "stage2") -> str:
    """
    The Markdown sections "Training data", "Training procedure", "Evaluation during training" and "Sample captions".

    Args:
        trainer ([`BlapStage1Trainer`] or [`BlapStage2Trainer`]) after (or during) training.
        datasets (`list[str]`, *optional*): display names of the training data and, second, the evaluation data.
        kind (`str`, *optional*, defaults to `"stage2"`): `"stage1"`, `"stage2"` or `"lora"`.

    Returns:
        `str`: Markdown.
    """
    datasets = datasets or []
    parts = ["## Training data", ""]
    rows = []
    for split, (name, dataset) in (
        ("train", (datasets[0] if datasets else None, trainer.train_dataset)),
        ("eval", (datasets[1] if len(datasets) > 1 else None, trainer.eval_dataset)),
    ):
        if isinstance(dataset, dict):
            for key, value in dataset.items():
                rows.append([f"{split} ({key})", *_dataset_summary(key, value)])
        else:
            summary = _dataset_summary(name, dataset)
            if summary is not None:
                rows.append([split, *summary])
    parts.append(_markdown_table(["split", "data", "clips", "captions"], rows) if rows else "Not recorded.")
    skipped = _skipped_audio(trainer.args.output_dir)
    if skipped:
        counts = ", ".join(f"{split} {count}" for split, count in skipped.items())
        parts += ["", f"Unreadable audio files left out (`--skip_bad_audio`): {counts}."]

    parts += ["", "## Training procedure", ""]
    train_audio = kind == "stage1" and trainer._option("train_audio_encoder")
    audio = ", and the HTS-AT audio encoder," if train_audio else " (the HTS-AT audio encoder frozen)"
    parts.append(_PROCEDURES[kind].format(audio=audio))
    parts += ["", _markdown_table(["hyperparameter", "value"], list(training_hyperparameters(trainer).items()))]
    train_logs = [entry for entry in trainer.state.log_history if "train_loss" in entry]
    if train_logs:
        final = train_logs[-1]
        parts += ["", f"Final training loss {final['train_loss']:.4f} after {final.get('step', '?')} steps."]

    parts += ["", "## Evaluation during training", ""]
    header, eval_rows = evaluation_rows(trainer.state.log_history)
    if eval_rows:
        parts.append(
            "Losses, and caption metrics of the generated captions against all reference captions of each clip"
            " (fractions; x100 gives the usual tables)."
        )
        parts += ["", _markdown_table(header, eval_rows)]
        if trainer.state.best_model_checkpoint is not None:
            parts += [
                "",
                f"Best checkpoint by `{trainer.args.metric_for_best_model}`: {trainer.state.best_metric:.4g}"
                f" ({trainer.state.best_model_checkpoint.rsplit('/', 1)[-1]}).",
            ]
    else:
        parts.append("No evaluation was run.")

    samples = getattr(trainer, "eval_samples", [])
    if samples:
        parts += ["", "## Sample captions (last evaluation)", ""]
        parts.append(
            _markdown_table(
                ["generated", "reference"], [[sample["prediction"], sample["references"][0]] for sample in samples]
            )
        )
    return "\n".join(parts) + "\n"


def _skipped_audio(output_dir: str) -> dict[str, int]:
    """Per split, the unreadable audio files a run left out, from the `data_report.json` its script wrote."""
    path = Path(output_dir, DATA_REPORT_NAME)
    if not path.is_file():
        return {}
    report = json.loads(path.read_text(encoding="utf-8"))
    return {split: entry["skipped_unreadable"] for split, entry in report.items() if entry.get("skipped_unreadable")}


def selected_evaluation(trainer) -> dict[str, Any] | None:
    """The evaluation log entry of the weights training ends with: the best checkpoint's when it was reloaded."""
    entries = [entry for entry in trainer.state.log_history if any(key.startswith("eval_") for key in entry)]
    if not entries:
        return None
    checkpoint = trainer.state.best_model_checkpoint
    if checkpoint is not None and trainer.args.load_best_model_at_end:
        step = int(checkpoint.rstrip("/").rsplit("-", 1)[-1])
        for entry in entries:
            if entry.get("step") == step:
                return entry
    return entries[-1]


_DATA_FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".arrow", ".txt")


def dataset_type(name: str, dataset_id: str | None = None) -> str:
    """
    The `model-index` dataset type: the Hub id when there is one, else the data's name, never a file name
    (`"data/musiccaps_eval.csv"` -> `"musiccaps_eval"`).
    """
    if dataset_id:
        return dataset_id
    path = Path(name)
    stem = path.stem if path.suffix.lower() in _DATA_FILE_SUFFIXES else path.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-") or "evaluation-data"


def eval_results(trainer, dataset_name: str, dataset_id: str | None = None) -> list[dict[str, Any]]:
    """
    `model-index` results (x100, like the paper's tables) of the final weights, from the training logs.

    Args:
        trainer ([`BlapStage2Trainer`]).
        dataset_name (`str`): the evaluation data's display name (a file name is shown without its folder).
        dataset_id (`str`, *optional*): its Hub id; otherwise the type is derived from the name ([`dataset_type`]).

    Returns:
        `list[dict]`: for [`transformers_blap.hub.render_model_card`]'s `eval_results`.
    """
    entry = selected_evaluation(trainer)
    if entry is None:
        return []
    return [
        eval_result(
            metric,
            round(100 * entry[f"eval_{metric}"], 2),
            dataset_type(dataset_name, dataset_id),
            Path(dataset_name).name,
        )
        for metric in ALL_METRICS
        if isinstance(entry.get(f"eval_{metric}"), (int, float))
    ]


def card_kind(trainer) -> str:
    """`"stage1"`, `"lora"` (a `peft.PeftModel`) or `"stage2"`: which card a trainer's run gets."""
    if trainer.card_stage == "stage1":
        return "stage1"
    return "lora" if is_lora_model(trainer.model) else "stage2"


def render_training_card(
    trainer,
    model_name: str,
    base_model: str | None = None,
    datasets: list[str | None] | None = None,
    dataset_ids: list[str] | None = None,
    language: str | None = None,
    license: str | None = None,
    tags: list[str] | None = None,
) -> str:
    """
    A complete model card (YAML front matter + Markdown) for a run of a BLAP trainer: stage 1, stage 2 / fine-tuning,
    or LoRA ([`card_kind`]).

    Args:
        trainer ([`BlapStage1Trainer`] or [`BlapStage2Trainer`]).
        model_name (`str`): the title.
        base_model (`str`, *optional*): the checkpoint training started from; a Hub id goes into the metadata
            (otherwise the language model's Hub id, when its configuration records one).
        datasets (`list[str | None]`, *optional*): display names of the training data and, second, the evaluation
            data.
        dataset_ids (`list[str]`, *optional*): Hub ids of the data, for the metadata.
        language (`str`, *optional*), license (`str`, *optional*), tags (`list[str]`, *optional*): metadata.

    Returns:
        `str`: the card's text.
    """
    kind = card_kind(trainer)
    datasets = list(datasets or [])
    model = trainer.model
    processor = trainer.processing_class
    sections = training_card_sections(trainer, datasets, kind)
    eval_name = (datasets[1] if len(datasets) > 1 else None) or "evaluation data"
    eval_id = next((name for name in dataset_ids or [] if name == eval_name), None)
    start = f", starting from `{base_model}`" if base_model else ""
    stage = "stage-1" if kind == "stage1" else "stage-2"
    hub_base = hub_id_or_none(base_model)
    card = render_model_card(
        model.config,
        repo_id=getattr(trainer.args, "hub_model_id", None),
        model_name=model_name,
        license=license or DEFAULT_LICENSE,
        base_model=hub_base,
        datasets=dataset_ids,
        tags=list(dict.fromkeys([f"blap-{kind}" if kind != "lora" else "lora", *(tags or [])])),
        eval_results=eval_results(trainer, eval_name, eval_id) if kind != "stage1" else None,
        description=f"These weights were trained with `transformers_blap`'s {stage} trainer{start}.\n\n{sections}",
        feature_extractor=getattr(processor, "feature_extractor", None),
        generation_config=getattr(model, "generation_config", None) if kind != "stage1" else None,
        prompt=getattr(processor, "prompt", None),
        kind="captioner" if kind == "stage2" else kind,
        lora_base=base_model,
    )
    if language is not None:
        card.data.language = language
    return str(card)


def write_model_card(
    trainer,
    output_dir: str | None = None,
    language: str | None = None,
    license: str | None = None,
    tags: str | list[str] | None = None,
    model_name: str | None = None,
    finetuned_from: str | None = None,
    dataset_tags: str | list[str] | None = None,
    dataset: str | list[str | None] | None = None,
) -> Path | None:
    """
    Write the run's model card to `output_dir/README.md` (default: the trainer's `output_dir`) on the main process:
    a stage-1 card for a [`BlapStage1Trainer`], a stage-2 or LoRA card for a [`BlapStage2Trainer`]. The trainers'
    `create_model_card` ([`TrainingCardMixin`], which `Trainer.push_to_hub` calls) is this function; arguments as for
    `Trainer.create_model_card`: `dataset` gives display names (training data first, evaluation data second),
    `dataset_tags` Hub dataset ids for the metadata, `finetuned_from` the starting checkpoint (default: the model's
    `name_or_path`).

    Returns:
        `Path | None`: the card written (`None` on other processes).
    """
    if not trainer.is_world_process_zero():
        return None
    output_dir = Path(output_dir or trainer.args.output_dir)
    base_model = finetuned_from if finetuned_from is not None else trainer.model.config.name_or_path or None
    card = render_training_card(
        trainer,
        model_name=model_name or output_dir.name,
        base_model=base_model,
        datasets=[dataset] if isinstance(dataset, str) else list(dataset or []),
        dataset_ids=[dataset_tags] if isinstance(dataset_tags, str) else list(dataset_tags or []),
        language=language,
        license=license,
        tags=[tags] if isinstance(tags, str) else list(tags or []),
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "README.md").write_text(card, encoding="utf-8")
    return output_dir / "README.md"


class TrainingCardMixin:
    """
    `create_model_card` for the BLAP trainers: the run's card ([`write_model_card`]). A trainer sets `card_stage`
    (`"stage1"` or `"stage2"`).
    """

    card_stage: str = "stage2"

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str | None] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        """
        Write `output_dir/README.md`: what was trained from what data, the hyperparameters, the evaluation table and
        sample captions ([`render_training_card`]). Arguments as for `Trainer.create_model_card`: `dataset` gives
        display names (training data first, evaluation data second), `dataset_tags` Hub dataset ids for the
        metadata, `finetuned_from` the starting checkpoint; `tasks` and `dataset_args` are not used.
        """
        write_model_card(self, None, language, license, tags, model_name, finetuned_from, dataset_tags, dataset)


__all__ = [
    "TrainingCardMixin",
    "card_kind",
    "dataset_type",
    "eval_results",
    "evaluation_rows",
    "render_training_card",
    "selected_evaluation",
    "training_card_sections",
    "training_hyperparameters",
    "write_model_card",
]
