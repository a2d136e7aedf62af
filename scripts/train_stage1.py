"""
Stage-1 training of BLAP (BlapForRepresentationLearning: ATC + ATM + LM) with BlapStage1Trainer.

Data: `--data` names a folder, a CSV or a JSON Lines file of audio paths with one or more captions each (see
`transformers_blap.training.stage1.read_audio_captions`), or `--dataset` names any `datasets` dataset (Hub name or
`save_to_disk` folder) with an Audio (or audio-path) column and a caption column (a string or a list of strings).

Model: `--model` continues from a stage-1 checkpoint (its processor too, when saved beside it); otherwise the model
is built from pretrained parts: `--audio_encoder` (a transformers CLAP checkpoint), `--qformer` (BERT) and
`--language_model` (the T5 of stage 2; only its configuration is read).

Every `TrainingArguments` option works (`--bf16`, `--gradient_accumulation_steps`, `--activation_checkpointing`,
`--resume_from_checkpoint`, `--push_to_hub`, ...), plus the stage-1 ones of `BlapStage1TrainingArguments`
(`--train_audio_encoder false`, `--spec_augment`, ...). Example:

    python scripts/train_stage1.py --data captions.csv --output_dir blap-stage1 \\
        --per_device_train_batch_size 32 --learning_rate 1e-4 --max_steps 22500 --bf16 \\
        --first_word_drop Upbeat upbeat
"""

import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from transformers_blap import (
    BlapFeatureExtractor,
    BlapForRepresentationLearning,
    BlapStage1Processor,
    build_qformer_tokenizer,
)
from transformers_blap.training.stage1 import (
    BlapStage1Collator,
    BlapStage1Trainer,
    BlapStage1TrainingArguments,
    read_audio_captions,
)


@dataclass
class Stage1ScriptArguments:
    data: str | None = field(default=None, metadata={"help": "Folder, .csv or .jsonl of audio paths and captions."})
    dataset: str | None = field(default=None, metadata={"help": "A `datasets` dataset: Hub name or saved folder."})
    dataset_config: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    split: str = field(default="train", metadata={"help": "Training split of --dataset."})
    eval_split: str | None = field(default=None, metadata={"help": "Evaluation split of --dataset."})
    eval_fraction: float = field(default=0.0, metadata={"help": "Hold out this fraction of the clips for evaluation."})
    audio_column: str = field(default="audio", metadata={"help": "Column with the audio (path or Audio value)."})
    caption_column: str = field(default="caption", metadata={"help": "Column with a caption or a list of captions."})
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
    first_word_drop_probability: float = field(default=0.3, metadata={"help": "Probability of that drop."})


def load_data(args: Stage1ScriptArguments, seed: int):
    """The training and (optional) evaluation sets: lists of rows or `datasets.Dataset`s."""
    if (args.data is None) == (args.dataset is None):
        raise ValueError("Pass exactly one of --data (folder / CSV / JSONL) and --dataset (a `datasets` dataset).")
    if args.data is not None:
        rows = read_audio_captions(args.data, args.audio_column, args.caption_column)
        if not args.eval_fraction:
            return rows, None
        random.Random(seed).shuffle(rows)
        held_out = max(1, round(len(rows) * args.eval_fraction))
        return rows[held_out:], rows[:held_out]

    from datasets import Audio, DatasetDict, load_dataset, load_from_disk

    def prepare(dataset):
        if args.audio_column not in dataset.column_names or args.caption_column not in dataset.column_names:
            raise ValueError(
                f"--dataset needs columns {args.audio_column!r} and {args.caption_column!r};"
                f" it has {dataset.column_names}."
            )
        # Decoded by the collator (soundfile), not by `datasets` (torchcodec + FFmpeg).
        return dataset.cast_column(args.audio_column, Audio(decode=False))

    def split(name: str):
        if Path(args.dataset).is_dir():
            loaded = load_from_disk(args.dataset)
            return loaded[name] if isinstance(loaded, DatasetDict) else loaded
        return load_dataset(args.dataset, args.dataset_config, split=name)

    train = prepare(split(args.split))
    if args.eval_split:
        return train, prepare(split(args.eval_split))
    if args.eval_fraction:
        parts = train.train_test_split(test_size=args.eval_fraction, seed=seed)
        return parts["train"], parts["test"]
    return train, None


def build_model_and_processor(args: Stage1ScriptArguments):
    if args.model is not None:
        model = BlapForRepresentationLearning.from_pretrained(args.model)
        if (Path(args.model) / "processor_config.json").is_file():
            return model, BlapStage1Processor.from_pretrained(args.model)
        tokenizer_source = args.model if (Path(args.model) / "tokenizer_config.json").is_file() else args.qformer
    else:
        model = BlapForRepresentationLearning.from_pretrained_parts(
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
            f" {model.config.qformer_dec_token_id}."
        )
    return model, BlapStage1Processor(feature_extractor, tokenizer, max_txt_len=args.max_txt_len)


def main(argv: list[str] | None = None) -> BlapStage1Trainer:
    parser = HfArgumentParser((Stage1ScriptArguments, BlapStage1TrainingArguments))
    args, training_args = parser.parse_args_into_dataclasses(args=argv)
    train_dataset, eval_dataset = load_data(args, training_args.seed)
    model, processor = build_model_and_processor(args)
    trainer = BlapStage1Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=BlapStage1Collator(
            processor,
            audio_column=args.audio_column,
            caption_column=args.caption_column,
            first_word_drop=args.first_word_drop,
            first_word_drop_probability=args.first_word_drop_probability,
        ),
        processing_class=processor,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    if eval_dataset is not None:
        trainer.evaluate()
    if training_args.push_to_hub:
        trainer.push_to_hub()
    return trainer


if __name__ == "__main__":
    main(sys.argv[1:])
    # Under torchrun: leave the process group before exiting (gloo's threads can abort the exit otherwise).
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
