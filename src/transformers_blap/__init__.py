"""transformers_blap: BLAP music captioning as a Hugging Face transformers model."""

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
from .configuration_blap import DEFAULT_PROMPT, BlapConfig
from .feature_extraction_blap import BlapFeatureExtractor
from .modeling_blap import (
    BlapForConditionalGeneration,
    BlapForConditionalGenerationModelOutput,
    BlapForRepresentationLearning,
    BlapPreTrainedModel,
    BlapRepresentationLearningOutput,
)
from .processing_blap import BlapProcessor, BlapStage1Processor, build_qformer_tokenizer

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
    "BlapConfig",
    "BlapFeatureExtractor",
    "BlapForConditionalGeneration",
    "BlapForConditionalGenerationModelOutput",
    "BlapForRepresentationLearning",
    "BlapPreTrainedModel",
    "BlapProcessor",
    "BlapRepresentationLearningOutput",
    "BlapStage1Processor",
    "build_qformer_tokenizer",
]

# Make "blap" a model type that the Auto* classes resolve once this package is imported.
from transformers import (  # noqa: E402
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForSpeechSeq2Seq,
    AutoProcessor,
)

AutoConfig.register(BlapConfig.model_type, BlapConfig, exist_ok=True)
AutoFeatureExtractor.register(BlapConfig, BlapFeatureExtractor, exist_ok=True)
AutoProcessor.register(BlapConfig, BlapProcessor, exist_ok=True)
AutoModelForSpeechSeq2Seq.register(BlapConfig, BlapForConditionalGeneration, exist_ok=True)
# Stage 1 (embeddings, retrieval, zero-shot tagging) is the "blap" AutoModel, as ClapModel is for "clap".
AutoModel.register(BlapConfig, BlapForRepresentationLearning, exist_ok=True)
