"""transformers_blap: BLAP music captioning as a Hugging Face transformers model."""

from .configuration_blap import DEFAULT_PROMPT, BlapConfig
from .feature_extraction_blap import BlapFeatureExtractor

__all__ = ["DEFAULT_PROMPT", "BlapConfig", "BlapFeatureExtractor"]
