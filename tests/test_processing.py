import numpy as np
import pytest
import torch
from transformers import AutoFeatureExtractor, AutoProcessor

from transformers_blap import BlapFeatureExtractor, BlapProcessor

from tiny import tiny_config, tiny_processor


@pytest.fixture
def processor(t5_tokenizer_dir):
    return tiny_processor(t5_tokenizer_dir)


def _clips(n: int = 2, seconds: float = 1.0, rate: int = 16_000) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(int(seconds * rate * (i + 1) / n))).astype(np.float32) for i in range(n)]


def test_returns_features_and_default_prompt(processor):
    inputs = processor(audio=_clips(2), sampling_rate=16_000)
    assert set(inputs) == {"input_features", "input_ids", "attention_mask"}
    assert inputs["input_features"].shape == (2, 1, 101, 16)
    expected = processor.tokenizer(processor.prompt)["input_ids"]
    assert inputs["input_ids"].tolist() == [expected, expected]
    assert expected[-1] == processor.tokenizer.eos_token_id


def test_custom_prompt_single_and_per_clip(processor):
    one = processor(audio=_clips(2), sampling_rate=16_000, text="Describe the drums.")
    assert one["input_ids"][0].tolist() == one["input_ids"][1].tolist()
    assert processor.decode(one["input_ids"][0], skip_special_tokens=True) == "Describe the drums."
    per_clip = processor(audio=_clips(2), sampling_rate=16_000, text=["A.", "Describe the guitar solo."])
    assert per_clip["input_ids"].shape[0] == 2
    assert per_clip["attention_mask"][0].sum() < per_clip["attention_mask"][1].sum()


def test_captions_become_labels_with_ignored_padding(processor):
    inputs = processor(audio=_clips(2), sampling_rate=16_000, captions=["calm jazz", "a loud rock song with drums"])
    labels, mask = inputs["labels"], inputs["decoder_attention_mask"]
    assert labels.shape == mask.shape
    assert (labels[mask == 0] == -100).all() and (labels[mask == 1] >= 0).all()
    assert processor.batch_decode(labels.masked_fill(labels == -100, 0), skip_special_tokens=True) == [
        "calm jazz",
        "a loud rock song with drums",
    ]


def test_bad_inputs_raise_clear_errors(processor):
    with pytest.raises(ValueError, match="`sampling_rate` must be a positive integer"):
        processor(audio=_clips(1), sampling_rate=0)
    with pytest.raises(ValueError, match="`text` has 3 entries but the audio batch has 2"):
        processor(audio=_clips(2), sampling_rate=16_000, text=["a", "b", "c"])
    with pytest.raises(ValueError, match="`captions` is one string but the batch has 2"):
        processor(audio=_clips(2), sampling_rate=16_000, captions="one caption")
    with pytest.raises(ValueError, match="NaN or Inf"):
        processor(audio=np.array([0.0, np.nan, 0.1], dtype=np.float32), sampling_rate=16_000)
    with pytest.raises(ValueError, match="needs `audio`"):
        processor()


def test_save_load_round_trip_and_auto_classes(processor, tmp_path):
    processor.prompt = "Provide a music caption for this audio clip."
    processor.save_pretrained(tmp_path)
    tiny_config().save_pretrained(tmp_path)
    for loaded in (BlapProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert isinstance(loaded, BlapProcessor)
        assert loaded.prompt == processor.prompt
        assert loaded.feature_extractor.to_dict() == processor.feature_extractor.to_dict()
        a = processor(audio=_clips(2), sampling_rate=16_000)
        b = loaded(audio=_clips(2), sampling_rate=16_000)
        assert torch.equal(a["input_features"], b["input_features"])
        assert torch.equal(a["input_ids"], b["input_ids"])
    assert isinstance(AutoFeatureExtractor.from_pretrained(tmp_path), BlapFeatureExtractor)


def test_feature_extractor_matches_original_front_end(fixture_dir):
    import soundfile as sf
    from safetensors.torch import load_file

    reference = load_file(fixture_dir / "reference_outputs.safetensors")["log_mel"]
    clips = [sf.read(fixture_dir / "audio" / f"clip{i}.wav", dtype="float32")[0] for i in range(2)]
    features = BlapFeatureExtractor()(clips, sampling_rate=48_000)["input_features"]
    assert features.shape == (2, 1, 1001, 64)
    assert (features - reference).abs().max().item() < 1e-3
