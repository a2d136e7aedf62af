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
from .configuration_blap import DEFAULT_PROMPT, BlapConfig, auto_config_with_original_release
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
    "build_qformer_tokenizer",
    "has_native_bf16",
    "resolve_dtype",
]

# Make "blap" a model type that the Auto* classes resolve once this package is imported.
from transformers import (  # noqa: E402
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForSpeechSeq2Seq,
    AutoProcessor,
)
from transformers.pipelines import PIPELINE_REGISTRY  # noqa: E402

from .hub import install_hub_support  # noqa: E402

AutoConfig.register(BlapConfig.model_type, BlapConfig, exist_ok=True)
# The authors' release (.ckpt + original config.json) is read through its converted folder (conversion/release.py).
if not getattr(AutoConfig.from_pretrained, "reads_original_release", False):
    AutoConfig.from_pretrained = auto_config_with_original_release(AutoConfig.__dict__["from_pretrained"])
AutoFeatureExtractor.register(BlapConfig, BlapFeatureExtractor, exist_ok=True)
AutoProcessor.register(BlapConfig, BlapProcessor, exist_ok=True)
AutoModelForSpeechSeq2Seq.register(BlapConfig, BlapForConditionalGeneration, exist_ok=True)
# Stage 1 (embeddings, retrieval, zero-shot tagging) is the "blap" AutoModel, as ClapModel is for "clap".
AutoModel.register(BlapConfig, BlapForRepresentationLearning, exist_ok=True)
PIPELINE_REGISTRY.register_pipeline(
    "audio-to-text", pipeline_class=AudioToTextPipeline, pt_model=AutoModelForSpeechSeq2Seq, type="multimodal"
)
# save_pretrained / push_to_hub write remote code, the custom pipeline entry and the model card (see hub.py).
install_hub_support()
