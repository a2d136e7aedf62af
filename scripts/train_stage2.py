#!/usr/bin/env python
"""
BLAP stage 2 / caption fine-tuning with `BlapStage2Trainer`.

Fine-tune a converted release on a new caption set (like the paper's MusicCaps fine-tune):

    python scripts/train_stage2.py --model_name_or_path path/to/blap --train_file train.csv --output_dir out

Stage 2 from a stage-1 checkpoint:

    python scripts/train_stage2.py --model_name_or_path path/to/stage1 \
        --language_model_name_or_path path/to/flan-t5-xl --train_file train.jsonl --output_dir out \
        --bf16 --model_dtype bfloat16

Every `Seq2SeqTrainingArguments` option works (`--eval_file ... --eval_strategy steps --metric_for_best_model cider_d
--load_best_model_at_end --early_stopping_patience 3`, `--gradient_accumulation_steps`, `--gradient_checkpointing`,
`--deepspeed configs/deepspeed/zero2.json`, `--push_to_hub`, ...); one JSON file with all arguments works too. Run it
under `torchrun` / `accelerate launch` for several GPUs or nodes (see configs/).
"""

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
import transformers
from transformers import AutoTokenizer, EarlyStoppingCallback, HfArgumentParser, set_seed

from blap_cli import quiet_third_party_startup
from transformers_blap import BlapFeatureExtractor, BlapProcessor

# bitsandbytes (imported by peft) logs an optional-kernel warning at import on some CPUs: dropped, nothing else.
quiet_third_party_startup()

from transformers_blap.training import (  # noqa: E402
    LORA_TARGET_MODULES,
    STAGE2_PHRASE_DROP_PROBABILITY,
    BlapDataCollator,
    BlapStage2Trainer,
    BlapStage2TrainingArguments,
    PhraseDropping,
    add_lora,
    load_stage2_model,
)
from transformers_blap.training.launch import (  # noqa: E402
    CaptionDataArguments,
    StartupError,
    check_push_settings,
    checkpoint_to_resume,
    load_caption_splits,
    startup_errors_as_one_line,
    write_data_report,
)

logger = logging.getLogger("train_stage2")

PROGRAM = "train_stage2.py"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
GENERATION_OPTIONS = ("num_beams", "max_new_tokens", "min_length", "repetition_penalty")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={
            "help": "The checkpoint to start from: a converted release or stage-2 model, or a stage-1 checkpoint"
            " (then also pass --language_model_name_or_path)."
        }
    )
    language_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A Flan-T5 folder or Hub id (e.g. google/flan-t5-xl): replaces the checkpoint's language model."
        },
    )
    processor_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Where the BlapProcessor is; defaults to the model, or to the model's feature extractor plus the"
            " language model's tokenizer when --language_model_name_or_path is given."
        },
    )
    model_dtype: str = field(
        default="float32",
        metadata={"help": "dtype of the frozen weights: float32 or bfloat16 (the trained weights stay float32)."},
    )
    prompt: str | None = field(default=None, metadata={"help": "Instruction given to the LLM; default: processor's."})
    max_txt_len: int | None = field(default=None, metadata={"help": "Caption length limit in tokens."})
    num_beams: int | None = field(
        default=None, metadata={"help": "Beams of the trained model's captions (default: the model's, BLAP's 10)."}
    )
    max_new_tokens: int | None = field(default=None, metadata={"help": "Caption length limit (BLAP's default: 40)."})
    min_length: int | None = field(default=None, metadata={"help": "Minimum caption length (BLAP's default: 30)."})
    repetition_penalty: float | None = field(
        default=None, metadata={"help": "Repetition penalty of the trained model's captions."}
    )
    use_lora: bool = field(default=False, metadata={"help": "Add a LoRA adapter to the LLM's attention q and v."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default=LORA_TARGET_MODULES, metadata={"help": "Regular expression (full match) of the LoRA target modules."}
    )


@dataclass
class DataArguments(CaptionDataArguments):
    phrase_dropping: bool = field(
        default=True, metadata={"help": "The release's stage-2 caption de-biasing (drop 'upbeat', ...)."}
    )
    phrase_drop_probability: float = field(default=STAGE2_PHRASE_DROP_PROBABILITY)
    eval_window: str = field(default="first", metadata={"help": "Evaluation window of long clips: first or center."})
    eval_metrics: str = field(
        default="ngram",
        metadata={
            "help": "Caption metrics in evaluation: `ngram` (BLEU@1-4, METEOR, ROUGE-L, CIDEr-D), `paper`, `all` or a"
            " comma-separated list from transformers_blap.evaluation.ALL_METRICS (SPICE and FENSE need"
            " `blap setup-metrics`). Checked before training."
        },
    )
    num_logged_captions: int = field(default=5, metadata={"help": "Sample captions logged at each evaluation."})
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without improving metric_for_best_model."}
    )


def caption_scorer(names: str):
    """
    The `CaptionScorer` for `--eval_metrics`, built before training: unknown names, a missing Java and missing SPICE /
    FENSE downloads fail here, not at the first evaluation.
    """
    from transformers_blap.evaluation import (
        ALL_METRICS,
        NGRAM_METRICS,
        PAPER_METRICS,
        CaptionScorer,
        MissingMetricResourceError,
    )

    presets = {"ngram": NGRAM_METRICS, "paper": PAPER_METRICS, "all": ALL_METRICS}
    selected = presets.get(names.strip()) or tuple(name.strip() for name in names.split(",") if name.strip())
    unknown = [name for name in selected if name not in ALL_METRICS]
    if unknown or not selected:
        raise StartupError(
            f"--eval_metrics {names!r}: unknown metric(s) {unknown}; pass ngram, paper, all or a comma-separated list"
            f" of {', '.join(ALL_METRICS)}."
        )
    try:
        return CaptionScorer(selected)
    except MissingMetricResourceError as error:
        raise StartupError(f"--eval_metrics {names}: {error}") from error


def build_processor(model_args: ModelArguments) -> BlapProcessor:
    if model_args.processor_name_or_path is not None:
        processor = BlapProcessor.from_pretrained(model_args.processor_name_or_path)
    elif model_args.language_model_name_or_path is not None:
        processor = BlapProcessor(
            BlapFeatureExtractor.from_pretrained(model_args.model_name_or_path),
            AutoTokenizer.from_pretrained(model_args.language_model_name_or_path),
        )
    else:
        processor = BlapProcessor.from_pretrained(model_args.model_name_or_path)
    if model_args.prompt is not None:
        processor.prompt = model_args.prompt
    if model_args.max_txt_len is not None:
        processor.max_txt_len = model_args.max_txt_len
    return processor


def set_generation_defaults(model, model_args: ModelArguments) -> None:
    """The captioning settings given on the command line become the trained model's generation defaults."""
    given = {name: getattr(model_args, name) for name in GENERATION_OPTIONS if getattr(model_args, name) is not None}
    model.generation_config.update(**given)
    model.generation_config.validate()


def prepare(model_args: ModelArguments, data_args: DataArguments, training_args: BlapStage2TrainingArguments):
    """Everything that can fail before the first step: checkpoint, Hub settings, metrics, data, model, trainer."""
    if model_args.model_dtype not in DTYPES:
        raise StartupError(f"--model_dtype must be one of {sorted(DTYPES)}, got {model_args.model_dtype!r}.")
    checkpoint = checkpoint_to_resume(training_args) if data_args.train_file is not None else None
    check_push_settings(training_args)
    train_dataset, eval_dataset, data_report = load_caption_splits(data_args, training_args.seed)
    do_eval = training_args.do_eval or eval_dataset is not None
    scorer = caption_scorer(data_args.eval_metrics) if do_eval and training_args.predict_with_generate else None
    set_seed(training_args.seed)

    model = load_stage2_model(
        model_args.model_name_or_path,
        language_model_name_or_path=model_args.language_model_name_or_path,
        dtype=DTYPES[model_args.model_dtype],
    )
    set_generation_defaults(model, model_args)
    processor = build_processor(model_args)
    if model_args.use_lora:
        model = add_lora(
            model,
            r=model_args.lora_r,
            lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout,
            target_modules=model_args.lora_target_modules,
        )
    collator = BlapDataCollator(
        processor,
        eval_window=data_args.eval_window,
        caption_augmentation=(
            PhraseDropping(probability=data_args.phrase_drop_probability) if data_args.phrase_dropping else None
        ),
    )
    callbacks = []
    if data_args.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=data_args.early_stopping_patience))
    trainer = BlapStage2Trainer(
        model=model,
        args=training_args,
        data_collator=collator,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        caption_metrics=scorer,
        num_logged_captions=data_args.num_logged_captions,
        callbacks=callbacks,
    )
    if training_args.should_save:
        write_data_report(training_args.output_dir, data_report)
    return trainer, checkpoint, scorer


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((ModelArguments, DataArguments, BlapStage2TrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(os.path.abspath(argv[0]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)]
    )
    log_level = training_args.get_process_log_level()
    for name in ("train_stage2", "transformers_blap"):
        logging.getLogger(name).setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    logger.info("Training arguments: %s", training_args)

    with startup_errors_as_one_line(PROGRAM):
        trainer, checkpoint, scorer = prepare(model_args, data_args, training_args)
    model = trainer.model
    trainable = sum(param.numel() for param in model.parameters() if param.requires_grad)
    logger.info("Trainable: %d parameters in %d tensors.", trainable, len(trainer.trainable_parameter_names))

    results: dict = {}
    try:
        if trainer.train_dataset is not None:
            train_result = trainer.train(resume_from_checkpoint=checkpoint)
            trainer.save_model()
            metrics = train_result.metrics
            metrics["train_samples"] = len(trainer.train_dataset)
            trainer.log_metrics("train", metrics)
            trainer.save_metrics("train", metrics)
            trainer.save_state()
            results.update(metrics)
        if trainer.eval_dataset is not None:
            metrics = trainer.evaluate(metric_key_prefix="eval")
            metrics["eval_samples"] = len(trainer.eval_dataset)
            trainer.log_metrics("eval", metrics)
            trainer.save_metrics("eval", metrics)
            results.update(metrics)
    finally:
        if scorer is not None:
            scorer.close()

    sources = (data_args.train_file, data_args.eval_file)
    card = {
        "finetuned_from": model_args.model_name_or_path,
        "dataset": [Path(name).name if name else None for name in sources],
        "dataset_tags": [name for name in sources if name and not Path(name).exists()],  # Hub dataset ids
        "tags": ["lora"] if model_args.use_lora else [],
    }
    if training_args.push_to_hub:
        with startup_errors_as_one_line(PROGRAM):  # a Hub failure: one line, the trained model stays saved
            trainer.push_to_hub(**card)
    else:
        trainer.create_model_card(**card)
    return results


if __name__ == "__main__":
    main()
    # Under torchrun: leave the process group before exiting (gloo's threads can abort the exit otherwise).
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
