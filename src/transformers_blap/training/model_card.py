"""
The model card written at the end of stage-2 training / fine-tuning: data, hyperparameters, evaluation table, samples.

`training_card_sections` renders the training-specific Markdown; `render_stage2_model_card` puts it into the package's
model card (`transformers_blap.hub.render_model_card`, with the chosen checkpoint's scores as `model-index`), or, for
a LoRA run, into a card that explains how to load the adapter onto its base model.
"""

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCardData

from ..evaluation.metrics import ALL_METRICS
from ..evaluation.report import TABLE1_COLUMNS
from ..hub import DEFAULT_BASE_MODEL, DEFAULT_LICENSE, render_model_card

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
        `(header, rows)`: one row per evaluation (step, epoch, then every metric, without the `eval_` prefix).
    """
    entries = [
        entry
        for entry in log_history
        if any(key.startswith("eval_") and not key.endswith(_EVAL_BOOKKEEPING) for key in entry)
    ]
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
    return ["step", "epoch", *metrics], rows


def training_hyperparameters(trainer) -> dict[str, Any]:
    """
    The run's hyperparameters, from the trainer's arguments, model and collator.

    Args:
        trainer ([`BlapStage2Trainer`]).

    Returns:
        `dict[str, Any]`: name -> value, in reading order.
    """
    args = trainer.args
    model = trainer.model
    collator = trainer.data_collator
    trainable = sum(param.numel() for param in model.parameters() if param.requires_grad)
    total = sum(param.numel() for param in model.parameters())
    precision = "bf16 mixed" if args.bf16 else "fp16 mixed" if args.fp16 else "fp32"
    dtype = str(model.language_model.dtype).removeprefix("torch.")
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
        "precision": f"{precision}; language model weights {dtype}; Q-Former float32",
        "gradient_checkpointing": args.gradient_checkpointing,
        "seed": args.seed,
        "trainable_parameters": f"{trainable:,} of {total:,}",
    }
    peft_config = getattr(model, "peft_config", {}).get("default") if hasattr(model, "peft_config") else None
    if peft_config is not None:
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
        hyperparameters["prompt"] = getattr(collator, "prompt", None) or processor.prompt
        hyperparameters["max_txt_len"] = processor.max_txt_len
    if args.predict_with_generate:
        generation = model.generation_config
        beams = args.generation_num_beams or generation.num_beams
        hyperparameters["eval_generation"] = (
            f"num_beams={beams}, max_new_tokens={generation.max_new_tokens}, min_length={generation.min_length}"
        )
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


def training_card_sections(trainer, datasets: list[str] | None = None) -> str:
    """
    The Markdown sections "Training data", "Training procedure", "Evaluation" and "Sample captions".

    Args:
        trainer ([`BlapStage2Trainer`]) after (or during) training.
        datasets (`list[str]`, *optional*): display names of the training data and, second, the evaluation data.

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

    parts += ["", "## Training procedure", ""]
    parts.append(
        "Stage 2 of BLAP: the HTS-AT audio encoder and the Flan-T5 language model are frozen; the Q-Former, its query"
        " tokens, the audio LayerNorm and the projection into the language model are trained with the language"
        " model's caption loss (token mean over each optimizer step)."
    )
    parts += ["", _markdown_table(["hyperparameter", "value"], list(training_hyperparameters(trainer).items()))]
    train_logs = [entry for entry in trainer.state.log_history if "train_loss" in entry]
    if train_logs:
        final = train_logs[-1]
        parts += ["", f"Final training loss {final['train_loss']:.4f} after {final.get('step', '?')} steps."]

    parts += ["", "## Evaluation during training", ""]
    header, eval_rows = evaluation_rows(trainer.state.log_history)
    if eval_rows:
        parts.append(
            "Caption metrics of the generated captions against all reference captions of each clip (fractions;"
            " x100 gives the usual tables)."
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


def eval_results(trainer, dataset_name: str, dataset_id: str | None = None) -> list[dict[str, Any]]:
    """
    `model-index` results (x100, like the paper's tables) of the final weights, from the training logs.

    Args:
        trainer ([`BlapStage2Trainer`]).
        dataset_name (`str`): the evaluation data's display name.
        dataset_id (`str`, *optional*): its Hub id; defaults to `dataset_name`.

    Returns:
        `list[dict]`: for [`transformers_blap.hub.render_model_card`]'s `eval_results`.
    """
    entry = selected_evaluation(trainer)
    if entry is None:
        return []
    return [
        {
            "dataset_type": dataset_id or dataset_name,
            "dataset_name": dataset_name,
            "metric_type": metric,
            "metric_name": TABLE1_COLUMNS.get(metric, metric),
            "metric_value": round(100 * entry[f"eval_{metric}"], 2),
        }
        for metric in ALL_METRICS
        if isinstance(entry.get(f"eval_{metric}"), (int, float))
    ]


def render_stage2_model_card(
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
    A complete model card (YAML front matter + Markdown) for a stage-2 / fine-tuning run.

    Args:
        trainer ([`BlapStage2Trainer`]).
        model_name (`str`): the title.
        base_model (`str`, *optional*): the checkpoint training started from; a Hub id goes into the metadata
            (otherwise Flan-T5-XL, which every BLAP starts from).
        datasets (`list[str | None]`, *optional*): display names of the training data and, second, the evaluation
            data.
        dataset_ids (`list[str]`, *optional*): Hub ids of the data, for the metadata.
        language (`str`, *optional*), license (`str`, *optional*), tags (`list[str]`, *optional*): metadata.

    Returns:
        `str`: the card's text.
    """
    datasets = list(datasets or [])
    tags = list(dict.fromkeys(["blap-stage2", *(tags or [])]))
    hub_base_model = base_model if base_model and "/" in base_model and not Path(base_model).exists() else None
    sections = training_card_sections(trainer, datasets)
    lora = bool(getattr(trainer.model, "_hf_peft_config_loaded", False))
    if not lora:
        eval_name = (datasets[1] if len(datasets) > 1 else None) or "evaluation data"
        eval_id = next((name for name in dataset_ids or [] if name == eval_name), None)
        card = render_model_card(
            trainer.model.config,
            repo_id=getattr(trainer, "hub_model_id", None) or trainer.args.hub_model_id,
            model_name=model_name,
            license=license or DEFAULT_LICENSE,
            base_model=hub_base_model or DEFAULT_BASE_MODEL,
            datasets=dataset_ids,
            tags=tags,
            eval_results=eval_results(trainer, eval_name, eval_id),
            description=(
                "These weights were trained with `transformers_blap`'s stage-2 trainer"
                + (f", starting from `{base_model}`" if base_model else "")
                + ".\n\n"
                + sections
            ),
        )
        if language is not None:
            card.data.language = language
        return str(card)

    metadata = ModelCardData(
        library_name="peft",
        pipeline_tag="audio-text-to-text",
        base_model=hub_base_model,
        datasets=dataset_ids or None,
        language=language,
        license=license,
        tags=list(dict.fromkeys(["blap", "music-captioning", "audio-captioning", "lora", *tags])),
    )
    usage = (
        "This folder holds a LoRA adapter on the language model (`lora/`) and the stage-2 weights"
        " (`stage2_trainable.safetensors`) only; load them onto the model training started from:\n\n"
        "```python\nfrom transformers_blap import BlapForConditionalGeneration, BlapProcessor\n"
        "from transformers_blap.training import load_stage2_adapter\n\n"
        f'model = BlapForConditionalGeneration.from_pretrained("{base_model or "BASE_MODEL"}")\n'
        'model = load_stage2_adapter(model, "PATH_TO_THIS_FOLDER")\n'
        'processor = BlapProcessor.from_pretrained("PATH_TO_THIS_FOLDER")\n```\n'
    )
    intro = (
        f"# {model_name}\n\nA LoRA fine-tune of a BLAP music captioner (HTS-AT audio encoder, Q-Former, Flan-T5),"
        " trained with `transformers_blap`'s stage-2 trainer"
        + (f", starting from `{base_model}`" if base_model else "")
        + ".\n\n## Usage\n\n"
        + usage
    )
    return f"---\n{metadata.to_yaml()}\n---\n\n{intro}\n{sections}"


__all__ = [
    "eval_results",
    "evaluation_rows",
    "render_stage2_model_card",
    "selected_evaluation",
    "training_card_sections",
    "training_hyperparameters",
]
