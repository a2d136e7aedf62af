"""
Stage-1 training of BLAP (BlapForRepresentationLearning: ATC + ATM + LM) with BlapStage1Trainer.

Data: the same options and layouts as stage 2 (`transformers_blap.training.CaptionDataArguments`): `--train_file`
names a CSV / JSON Lines file (an audio path column and `caption`, `captions` or `caption_1, caption_2, ...` columns;
one row per clip or per audio-caption pair), a folder (`metadata.csv` / `metadata.jsonl`, audio files with `.txt`
captions, or a `save_to_disk` dataset) or a Hub dataset id; `--eval_file` or `--eval_fraction` give evaluation data.
Every audio file is opened before the first step (`--skip_bad_audio` leaves unreadable ones out).

Model: `--model` continues from a stage-1 checkpoint (its processor too, when saved beside it); otherwise the model
is built from pretrained parts: `--audio_encoder` (a transformers CLAP checkpoint), `--qformer` (BERT) and
`--language_model` (the T5 of stage 2; only its configuration is read).

Every `TrainingArguments` option works (`--bf16`, `--gradient_accumulation_steps`, `--activation_checkpointing`,
`--resume_from_checkpoint`, `--push_to_hub`, ...), plus the stage-1 ones of `BlapStage1TrainingArguments`
(`--train_audio_encoder false`, `--spec_augment`, `--overwrite_output_dir`, ...). Rerunning a command continues from
the last checkpoint in `--output_dir`. Example:

    python scripts/train_stage1.py --train_file captions.csv --output_dir blap-stage1 \\
        --per_device_train_batch_size 32 --learning_rate 1e-4 --max_steps 22500 --bf16 \\
        --first_word_drop Upbeat upbeat
"""

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import HfArgumentParser, set_seed

from blap_cli import quiet_third_party_startup
from transformers_blap import (
    BlapFeatureExtractor,
    BlapForRepresentationLearning,
    BlapStage1Processor,
    build_qformer_tokenizer,
)
from transformers_blap.conversion import stage1_from_pretrained_parts

# bitsandbytes (imported by peft) logs an optional-kernel warning at import on some CPUs: dropped, nothing else.
quiet_third_party_startup()

from transformers_blap.training import STAGE1_FIRST_WORD_DROP_PROBABILITY, FirstWordDropping  # noqa: E402
from transformers_blap.training.launch import (  # noqa: E402
    CaptionDataArguments,
    check_push_settings,
    checkpoint_to_resume,
    load_caption_splits,
    startup_errors_as_one_line,
    write_data_report,
)
from transformers_blap.training.stage1 import (  # noqa: E402
    BlapStage1Collator,
    BlapStage1Trainer,
    BlapStage1TrainingArguments,
)

PROGRAM = "train_stage1.py"
logger = logging.getLogger("train_stage1")


@dataclass
class Stage1ModelArguments:
    model: str | None = field(default=None, metadata={"help": "A stage-1 checkpoint to continue from."})
    audio_encoder: str = field(default="laion/clap-htsat-unfused", metadata={"help": "transformers CLAP checkpoint."})
    qformer: str = field(default="bert-base-uncased", metadata={"help": "BERT checkpoint for the Q-Former."})
    language_model: str = field(default="google/flan-t5-xl", metadata={"help": "T5 of stage 2 (configuration only)."})
    feature_extractor: str | None = field(
        default=None, metadata={"help": "A saved BlapFeatureExtractor (default: BLAP's 48 kHz, 10 s, 64-mel one)."}
    )
    num_query_tokens: int = field(default=32, metadata={"help": "Query tokens of a new model."})
    embed_dim: int = field(default=256, metadata={"help": "Size of the shared audio-text space of a new model."})
    max_txt_len: int = field(default=64, metadata={"help": "Captions are truncated to this many tokens."})
    first_word_drop: list[str] = field(
        default_factory=list, metadata={"help": "Drop a caption's first word if it is one of these (release: 0.3)."}
    )
    first_word_drop_probability: float = field(
        default=STAGE1_FIRST_WORD_DROP_PROBABILITY, metadata={"help": "Probability of that drop."}
    )


def build_model_and_processor(args: Stage1ModelArguments):
    if args.model is not None:
        model = BlapForRepresentationLearning.from_pretrained(args.model)
        if (Path(args.model) / "processor_config.json").is_file():
            return model, BlapStage1Processor.from_pretrained(args.model)
        tokenizer_source = args.model if (Path(args.model) / "tokenizer_config.json").is_file() else args.qformer
    else:
        model = stage1_from_pretrained_parts(
            args.audio_encoder,
            args.qformer,
            args.language_model,
            num_query_tokens=args.num_query_tokens,
            embed_dim=args.embed_dim,
            max_txt_len=args.max_txt_len,
        )
        tokenizer_source = args.qformer
    if args.feature_extractor is not None:
        feature_extractor = BlapFeatureExtractor.from_pretrained(args.feature_extractor)
    else:
        feature_extractor = BlapFeatureExtractor()
    tokenizer = build_qformer_tokenizer(tokenizer_source)
    if tokenizer.bos_token_id != model.config.qformer_dec_token_id:
        raise ValueError(
            f"The tokenizer's [DEC] id {tokenizer.bos_token_id} differs from the model's qformer_dec_token_id"
            f" {model.config.qformer_dec_token_id}: pass the --qformer tokenizer the model was built with."
        )
    return model, BlapStage1Processor(feature_extractor, tokenizer, max_txt_len=args.max_txt_len)


def prepare(
    model_args: Stage1ModelArguments, data_args: CaptionDataArguments, training_args: BlapStage1TrainingArguments
):
    """Everything that can fail before the first step: checkpoint, Hub settings, data, model, trainer."""
    checkpoint = checkpoint_to_resume(training_args)
    check_push_settings(training_args)
    train_dataset, eval_dataset, data_report = load_caption_splits(data_args, training_args.seed)
    if train_dataset is None:
        raise ValueError("Pass --train_file: stage 1 trains.")
    set_seed(training_args.seed)
    model, processor = build_model_and_processor(model_args)
    augmentation = (
        FirstWordDropping(model_args.first_word_drop, model_args.first_word_drop_probability)
        if model_args.first_word_drop
        else None
    )
    trainer = BlapStage1Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=BlapStage1Collator(processor, caption_augmentation=augmentation),
        processing_class=processor,
    )
    if training_args.should_save:
        write_data_report(training_args.output_dir, data_report)
    return trainer, checkpoint


def main(argv: list[str] | None = None) -> BlapStage1Trainer:
    parser = HfArgumentParser((Stage1ModelArguments, CaptionDataArguments, BlapStage1TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)]
    )
    log_level = training_args.get_process_log_level()
    for name in ("train_stage1", "transformers_blap"):
        logging.getLogger(name).setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)

    with startup_errors_as_one_line(PROGRAM):
        trainer, checkpoint = prepare(model_args, data_args, training_args)
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    trainer.save_state()
    if trainer.eval_dataset is not None:
        trainer.evaluate()
    sources = (data_args.train_file, data_args.eval_file)
    card = {
        "finetuned_from": model_args.model,
        "dataset": [Path(name).name if name else None for name in sources],
        "dataset_tags": [name for name in sources if name and not Path(name).exists()],  # Hub dataset ids
    }
    if training_args.push_to_hub:
        with startup_errors_as_one_line(PROGRAM):  # a Hub failure: one line, the trained model stays saved
            trainer.push_to_hub(**card)
    else:
        trainer.create_model_card(**card)
    return trainer


if __name__ == "__main__":
    main(sys.argv[1:])
    # Under torchrun: leave the process group before exiting (gloo's threads can abort the exit otherwise).
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
