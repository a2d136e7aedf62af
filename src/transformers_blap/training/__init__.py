"""Training BLAP: data collation, caption augmentation, caption datasets and the stage-1 / stage-2 trainers."""

from .adapter import LORA_TARGET_MODULES, STAGE2_MODULES_TO_SAVE, is_lora_folder, is_lora_model
from .augmentation import (
    STAGE1_FIRST_WORD_DROP_PROBABILITY,
    STAGE2_DROPPED_PHRASES,
    STAGE2_PHRASE_DROP_PROBABILITY,
    FirstWordDropping,
    PhraseDropping,
)
from .collator import AudioCaptionBatch, AudioCaptionPreparer, BlapDataCollator, as_caption_list
from .data import (
    caption_dataset,
    check_audio_files,
    load_caption_dataset,
    load_caption_file,
    load_caption_folder,
    resolve_caption_columns,
)
from .launch import CaptionDataArguments, checkpoint_to_resume, load_caption_splits
from .lora import add_lora, load_lora_captioner, save_lora_captioner
from .model_card import render_training_card, training_card_sections, write_model_card
from .stage2 import (
    BlapStage2Trainer,
    BlapStage2TrainingArguments,
    configure_stage2_trainable,
    default_caption_metrics,
    load_language_model_weights,
    load_stage2_model,
    warn_if_float16,
)

__all__ = [
    "LORA_TARGET_MODULES",
    "STAGE1_FIRST_WORD_DROP_PROBABILITY",
    "STAGE2_DROPPED_PHRASES",
    "STAGE2_MODULES_TO_SAVE",
    "STAGE2_PHRASE_DROP_PROBABILITY",
    "AudioCaptionBatch",
    "AudioCaptionPreparer",
    "BlapDataCollator",
    "BlapStage2Trainer",
    "BlapStage2TrainingArguments",
    "CaptionDataArguments",
    "FirstWordDropping",
    "PhraseDropping",
    "add_lora",
    "as_caption_list",
    "caption_dataset",
    "check_audio_files",
    "checkpoint_to_resume",
    "configure_stage2_trainable",
    "is_lora_folder",
    "is_lora_model",
    "default_caption_metrics",
    "load_caption_dataset",
    "load_caption_file",
    "load_caption_folder",
    "load_caption_splits",
    "load_language_model_weights",
    "load_lora_captioner",
    "load_stage2_model",
    "render_training_card",
    "resolve_caption_columns",
    "save_lora_captioner",
    "training_card_sections",
    "write_model_card",
    "warn_if_float16",
]
