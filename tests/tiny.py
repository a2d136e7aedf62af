"""Tiny BLAP configurations and components built in code, shared by the tests."""

from transformers import T5TokenizerFast

from transformers_blap import BlapConfig, BlapFeatureExtractor, BlapProcessor

TINY_AUDIO = {
    "patch_embeds_hidden_size": 8,
    "depths": [1, 1],
    "num_attention_heads": [1, 2],
    "window_size": 4,
    "spec_size": 64,
    "num_mel_bins": 16,
    "hidden_size": 16,
    "projection_dim": 8,
    "patch_stride": [4, 4],
    "enable_fusion": False,
}
TINY_QFORMER = {
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "cross_attention_frequency": 2,
}
TINY_TEXT = {
    "vocab_size": 226,
    "d_model": 16,
    "d_kv": 8,
    "d_ff": 32,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 2,
    "feed_forward_proj": "gated-gelu",
    "dense_act_fn": "gelu",
    "tie_word_embeddings": False,
    "decoder_start_token_id": 0,
}


def tiny_config(**overrides) -> BlapConfig:
    """A BLAP small enough to run forward, backward and beam search in milliseconds on CPU."""
    kwargs = {
        "audio_config": dict(TINY_AUDIO),
        "qformer_config": dict(TINY_QFORMER),
        "text_config": dict(TINY_TEXT),
        "num_query_tokens": 4,
        "embed_dim": 8,
    }
    kwargs.update(overrides)
    return BlapConfig(**kwargs)


def tiny_feature_extractor() -> BlapFeatureExtractor:
    """16 mel bins, 1 s windows at 16 kHz: log-mel (B, 1, 101, 16), within the tiny HTS-AT's 256 frames."""
    return BlapFeatureExtractor(
        feature_size=16,
        sampling_rate=16_000,
        hop_length=160,
        fft_window_size=400,
        max_length_s=1,
        frequency_min=50,
        frequency_max=7_000,
    )


def tiny_processor(tokenizer_dir) -> BlapProcessor:
    """The tiny feature extractor and the fixture's 226-token T5 sentencepiece tokenizer."""
    return BlapProcessor(tiny_feature_extractor(), T5TokenizerFast.from_pretrained(tokenizer_dir))


def tiny_stage1_config(**overrides) -> BlapConfig:
    """`tiny_config` with the Q-Former vocabulary of bert-base-uncased plus `[DEC]` (id 30522), for stage 1."""
    overrides.setdefault("qformer_config", {**TINY_QFORMER, "vocab_size": 30523})
    return tiny_config(**overrides)
