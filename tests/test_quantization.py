"""
8-bit and 4-bit loading through bitsandbytes (its CPU backend here; the same code path on a GPU).

bitsandbytes' CPU 4-bit path on CPUs with AVX-512 BF16 packs weights in blocks of 32 features and fails on any other
width ("N must be divisible by block_n"), while AVX2-only CPUs take every width: the model here has every quantized
layer 32 or 64 wide, so that the test passes on both kinds.
"""

import numpy as np
import pytest
import torch
from transformers import BitsAndBytesConfig

from transformers_blap import BlapForConditionalGeneration

from tiny import TINY_AUDIO, TINY_QFORMER, TINY_TEXT, tiny_config, tiny_processor

bnb = pytest.importorskip("bitsandbytes", reason="the `quantization` extra: pip install -e '.[quantization]'")

PACKED_BLOCK = 32  # bitsandbytes' AVX-512 BF16 4-bit block of output features


def quantizable_tiny_config():
    """`tiny_config` widened so that every Linear layer bitsandbytes quantizes is a multiple of 32 wide."""
    return tiny_config(
        audio_config={**TINY_AUDIO, "patch_embeds_hidden_size": 32, "hidden_size": 64},
        qformer_config={**TINY_QFORMER, "hidden_size": 32, "intermediate_size": 64},
        text_config={**TINY_TEXT, "d_model": 32, "d_kv": 16, "d_ff": 64},
    )


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> tuple[str, BlapForConditionalGeneration]:
    torch.manual_seed(0)
    model = BlapForConditionalGeneration(quantizable_tiny_config()).eval()
    path = tmp_path_factory.mktemp("blap")
    model.save_pretrained(path)
    return str(path), model


@pytest.fixture(scope="module")
def inputs(t5_tokenizer_dir) -> dict:
    rng = np.random.default_rng(0)
    clips = [(0.2 * rng.standard_normal(16_000)).astype(np.float32) for _ in range(2)]
    processor = tiny_processor(t5_tokenizer_dir)
    return processor(audio=clips, sampling_rate=16_000, captions=["calm jazz piano", "loud rock guitar"])


@pytest.mark.parametrize(
    ("config", "linear_class", "loss_tolerance"),
    [
        (BitsAndBytesConfig(load_in_8bit=True), "Linear8bitLt", 0.01),
        (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32), "Linear4bit", 0.05),
    ],
    ids=["8bit", "4bit"],
)
def test_quantized_loading_keeps_the_qformer_in_float32_and_captions(
    saved_model, inputs, config, linear_class, loss_tolerance
):
    path, full = saved_model
    model = BlapForConditionalGeneration.from_pretrained(path, quantization_config=config).eval()
    quantized = {name: module for name, module in model.named_modules() if type(module).__name__ == linear_class}
    widths = {(module.in_features, module.out_features) for module in quantized.values()}
    assert all(width % PACKED_BLOCK == 0 for pair in widths for width in pair), widths  # same path on every CPU
    assert "language_model.decoder.block.0.layer.0.SelfAttention.q" in quantized
    assert not any(name.startswith("qformer.") for name in quantized)
    assert {p.dtype for p in model.qformer.parameters()} | {model.query_tokens.dtype} == {torch.float32}
    assert model.get_memory_footprint() < 0.8 * full.get_memory_footprint()
    with torch.no_grad():
        loss, expected_loss = model(**inputs).loss, full(**inputs).loss
        ids = model.generate(
            **{k: v for k, v in inputs.items() if k != "labels"}, num_beams=3, max_new_tokens=5, min_length=0
        )
    assert abs(loss.item() - expected_loss.item()) <= loss_tolerance * expected_loss.item()
    assert ids.shape == (2, 6)
