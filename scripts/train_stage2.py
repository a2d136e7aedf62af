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

import functools
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
import transformers
from transformers import AutoTokenizer, EarlyStoppingCallback, HfArgumentParser, set_seed
from transformers.trainer_utils import get_last_checkpoint

from transformers_blap import BlapFeatureExtractor, BlapProcessor
from transformers_blap.training import (
    LORA_TARGET_MODULES,
    STAGE2_PHRASE_DROP_PROBABILITY,
    BlapDataCollator,
    BlapStage2Trainer,
    BlapStage2TrainingArguments,
    PhraseDropping,
    add_lora,
    load_caption_dataset,
    load_stage2_model,
)

logger = logging.getLogger("train_stage2")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={
            "help": "The checkpoint to start from: a converted release or stage-2 model, or a stage-1 checkpoint"
            " (then also pass --language_model_name_or_path)."
        }
    )
    language_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A local Flan-T5 folder: replaces the checkpoint's language model."}
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
    use_lora: bool = field(default=False, metadata={"help": "Add a LoRA adapter to the LLM's attention q and v."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default=LORA_TARGET_MODULES, metadata={"help": "Regular expression (full match) of the LoRA target modules."}
    )


@dataclass
class DataArguments:
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training data: a CSV / JSON Lines file (an audio path column and one or more caption columns),"
            " a `save_to_disk` folder or a Hub dataset id."
        },
    )
    eval_file: str | None = field(default=None, metadata={"help": "Evaluation data, same formats."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of a Hub dataset."})
    train_split: str = field(default="train", metadata={"help": "Split of a Hub / saved dataset for training."})
    eval_split: str = field(default="validation", metadata={"help": "Split of a Hub / saved dataset for evaluation."})
    audio_column: str = field(default="audio", metadata={"help": "Column with audio paths or Audio values."})
    caption_columns: str | None = field(
        default=None, metadata={"help": "Comma-separated caption columns; default: caption, captions, caption_<n>."}
    )
    audio_root: str | None = field(default=None, metadata={"help": "Folder that relative audio paths start from."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training clips."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation clips."})
    phrase_dropping: bool = field(
        default=True, metadata={"help": "The release's stage-2 caption de-biasing (drop 'upbeat', ...)."}
    )
    phrase_drop_probability: float = field(default=STAGE2_PHRASE_DROP_PROBABILITY)
    eval_window: str = field(default="first", metadata={"help": "Evaluation window of long clips: first or center."})
    eval_metrics: str = field(
        default="ngram",
        metadata={
            "help": "Caption metrics in evaluation: `ngram` (BLEU@1-4, METEOR, ROUGE-L, CIDEr-D) or a comma-separated"
            " list from transformers_blap.evaluation.ALL_METRICS (SPICE and FENSE need their downloads)."
        },
    )
    num_logged_captions: int = field(default=5, metadata={"help": "Sample captions logged at each evaluation."})
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without improving metric_for_best_model."}
    )


def metric_function(names: str):
    """The caption-metric callable for `--eval_metrics`."""
    from transformers_blap.evaluation import NGRAM_METRICS, caption_metrics

    selected = NGRAM_METRICS if names == "ngram" else tuple(name.strip() for name in names.split(",") if name.strip())
    return functools.partial(caption_metrics, metrics=selected)


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


def load_split(data_args: DataArguments, name_or_path: str, split: str, limit: int | None) -> datasets.Dataset:
    caption_columns = data_args.caption_columns.split(",") if data_args.caption_columns else None
    dataset = load_caption_dataset(
        name_or_path,
        config_name=data_args.dataset_config_name,
        split=split,
        audio_column=data_args.audio_column,
        caption_columns=caption_columns,
        audio_root=data_args.audio_root,
    )
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((ModelArguments, DataArguments, BlapStage2TrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(os.path.abspath(argv[0]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
    if model_args.model_dtype not in DTYPES:
        raise ValueError(f"--model_dtype must be one of {sorted(DTYPES)}, got {model_args.model_dtype!r}.")
    if data_args.train_file is None and data_args.eval_file is None:
        raise ValueError("Pass --train_file (and/or --eval_file): there is nothing to train or evaluate on.")

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)]
    )
    log_level = training_args.get_process_log_level()
    for name in ("train_stage2", "transformers_blap"):
        logging.getLogger(name).setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    logger.info("Training arguments: %s", training_args)

    last_checkpoint = None
    if os.path.isdir(training_args.output_dir) and not training_args.overwrite_output_dir:
        last_checkpoint = get_last_checkpoint(training_args.output_dir)
        if last_checkpoint is not None and training_args.resume_from_checkpoint is None:
            logger.info("Resuming from %s (pass --overwrite_output_dir to start over).", last_checkpoint)
    set_seed(training_args.seed)

    model = load_stage2_model(
        model_args.model_name_or_path,
        language_model_name_or_path=model_args.language_model_name_or_path,
        dtype=DTYPES[model_args.model_dtype],
    )
    processor = build_processor(model_args)
    if model_args.use_lora:
        add_lora(
            model,
            r=model_args.lora_r,
            lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout,
            target_modules=model_args.lora_target_modules,
        )

    train_dataset = eval_dataset = None
    if data_args.train_file is not None:
        train_dataset = load_split(data_args, data_args.train_file, data_args.train_split, data_args.max_train_samples)
    if data_args.eval_file is not None:
        eval_dataset = load_split(data_args, data_args.eval_file, data_args.eval_split, data_args.max_eval_samples)
    do_train = training_args.do_train or train_dataset is not None
    do_eval = training_args.do_eval or eval_dataset is not None

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
        caption_metrics=metric_function(data_args.eval_metrics) if do_eval else None,
        num_logged_captions=data_args.num_logged_captions,
        callbacks=callbacks,
    )
    trainable = sum(param.numel() for param in model.parameters() if param.requires_grad)
    logger.info("Trainable: %d parameters in %d tensors.", trainable, len(trainer.trainable_parameter_names))

    results: dict = {}
    if do_train:
        checkpoint = training_args.resume_from_checkpoint or last_checkpoint
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()
        metrics = train_result.metrics
        metrics["train_samples"] = len(train_dataset)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        results.update(metrics)
    if do_eval:
        metrics = trainer.evaluate(metric_key_prefix="eval")
        metrics["eval_samples"] = len(eval_dataset)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        results.update(metrics)

    sources = (data_args.train_file, data_args.eval_file)
    card = {
        "finetuned_from": model_args.model_name_or_path,
        "dataset": [Path(name).name if name else None for name in sources],
        "dataset_tags": [name for name in sources if name and not Path(name).exists()],  # Hub dataset ids
        "tags": ["lora"] if model_args.use_lora else [],
    }
    if training_args.push_to_hub:
        trainer.push_to_hub(**card)
    else:
        trainer.create_model_card(**card)
    return results


if __name__ == "__main__":
    main()
    # Under torchrun: leave the process group before exiting (gloo's threads can abort the exit otherwise).
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
