"""Training BLAP: data collation, caption augmentation, caption datasets and the stage-1 / stage-2 trainers."""

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
from .model_card import (
    render_stage1_model_card,
    render_stage2_model_card,
    training_card_sections,
    write_model_card,
)
from .stage2 import (
    LORA_TARGET_MODULES,
    BlapStage2Trainer,
    BlapStage2TrainingArguments,
    add_lora,
    configure_stage2_trainable,
    default_caption_metrics,
    has_lora,
    load_language_model_weights,
    load_stage2_adapter,
    load_stage2_lora_folder,
    load_stage2_model,
    save_stage2_adapter,
    warn_if_float16,
)

__all__ = [
    "LORA_TARGET_MODULES",
    "STAGE1_FIRST_WORD_DROP_PROBABILITY",
    "STAGE2_DROPPED_PHRASES",
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
    "default_caption_metrics",
    "has_lora",
    "load_caption_dataset",
    "load_caption_file",
    "load_caption_folder",
    "load_caption_splits",
    "load_language_model_weights",
    "load_stage2_adapter",
    "load_stage2_lora_folder",
    "load_stage2_model",
    "render_stage1_model_card",
    "render_stage2_model_card",
    "resolve_caption_columns",
    "save_stage2_adapter",
    "training_card_sections",
    "write_model_card",
    "warn_if_float16",
]
