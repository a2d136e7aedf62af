"""
transformers_blap: BLAP music captioning as a Hugging Face transformers model.

Importing the package loads the model core (configuration, feature extraction, processing, modeling, the pipeline,
audio decoding) and registers it with transformers' Auto* classes and the "audio-to-text" pipeline task. The tooling
above it (training, evaluation, conversion, publishing, the `blap` command) loads when it is used: its public names are
importable from here lazily (PEP 562, as transformers does), or from their modules.
"""

import importlib
from typing import Any

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForSpeechSeq2Seq, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .audio import (
    AudioDecodeError,
    AudioWindow,
    audio_duration,
    iter_windows,
    load_audio,
    select_track_caption,
    split_windows,
    track_caption_index,
    window_bounds,
)
from .configuration_blap import DEFAULT_PROMPT, BlapConfig, OriginalReleaseError
from .feature_extraction_blap import BlapFeatureExtractor
from .modeling_blap import (
    BlapForConditionalGeneration,
    BlapForConditionalGenerationModelOutput,
    BlapForRepresentationLearning,
    BlapPreTrainedModel,
    BlapRepresentationLearningOutput,
)
from .pipeline_audio_to_text import AudioToTextPipeline
from .precision import has_native_bf16, resolve_dtype
from .processing_blap import BlapProcessor, BlapStage1Processor, build_qformer_tokenizer

# Public names of the tooling, by module: `transformers_blap.X` imports that module on first use.
_LAZY_EXPORTS = {
    "original_release_folder": "conversion",
    "push_folder": "hub",
    "render_model_card": "hub",
    "BlapStage2Trainer": "training",
    "BlapStage2TrainingArguments": "training",
    "run_evaluation": "evaluation",
}

__all__ = [
    "AudioDecodeError",
    "AudioWindow",
    "audio_duration",
    "iter_windows",
    "load_audio",
    "select_track_caption",
    "split_windows",
    "track_caption_index",
    "window_bounds",
    "DEFAULT_PROMPT",
    "AudioToTextPipeline",
    "BlapConfig",
    "BlapFeatureExtractor",
    "BlapForConditionalGeneration",
    "BlapForConditionalGenerationModelOutput",
    "BlapForRepresentationLearning",
    "BlapPreTrainedModel",
    "BlapProcessor",
    "BlapRepresentationLearningOutput",
    "BlapStage1Processor",
    "OriginalReleaseError",
    "build_qformer_tokenizer",
    "has_native_bf16",
    "resolve_dtype",
    *_LAZY_EXPORTS,
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY_EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_EXPORTS))


# Make "blap" a model type that the Auto* classes resolve once this package is imported.
AutoConfig.register(BlapConfig.model_type, BlapConfig, exist_ok=True)
AutoFeatureExtractor.register(BlapConfig, BlapFeatureExtractor, exist_ok=True)
AutoProcessor.register(BlapConfig, BlapProcessor, exist_ok=True)
AutoModelForSpeechSeq2Seq.register(BlapConfig, BlapForConditionalGeneration, exist_ok=True)
# Stage 1 (embeddings, retrieval, zero-shot tagging) is the "blap" AutoModel, as ClapModel is for "clap".
AutoModel.register(BlapConfig, BlapForRepresentationLearning, exist_ok=True)
PIPELINE_REGISTRY.register_pipeline(
    "audio-to-text", pipeline_class=AudioToTextPipeline, pt_model=AutoModelForSpeechSeq2Seq, type="multimodal"
)
