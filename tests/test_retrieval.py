"""Uses of a stage-1 model beyond training: embeddings, text-to-music retrieval, zero-shot tagging."""

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer, pipeline

from transformers_blap import BlapConfig, BlapForRepresentationLearning, BlapStage1Processor, build_qformer_tokenizer

from tiny import tiny_feature_extractor, tiny_stage1_config


@pytest.fixture(scope="module")
def bert_dir(fixture_dir):
    return fixture_dir / "bert-base-uncased"


@pytest.fixture(scope="module")
def processor(bert_dir) -> BlapStage1Processor:
    return BlapStage1Processor(tiny_feature_extractor(), build_qformer_tokenizer(bert_dir), max_txt_len=8)


@pytest.fixture(scope="module")
def model() -> BlapForRepresentationLearning:
    torch.manual_seed(0)
    model = BlapForRepresentationLearning(tiny_stage1_config()).eval()
    with torch.no_grad():  # spread the embeddings apart (at initialisation they nearly coincide)
        for name, param in model.named_parameters():
            if name != "temperature":
                param.add_(0.3 * torch.randn_like(param))
    return model


def _clips(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.2 * rng.standard_normal(8_000 + 4_000 * i)).astype(np.float32) for i in range(n)]


def test_qformer_tokenizer_has_dec_and_no_segment_ids(bert_dir):
    tokenizer = build_qformer_tokenizer(bert_dir)
    assert tokenizer.bos_token == "[DEC]" and tokenizer.bos_token_id == BlapConfig().qformer_dec_token_id == 30522
    assert len(tokenizer) == BlapConfig().qformer_config.vocab_size == 30523
    encoded = tokenizer(["calm piano", "a [DEC] token"])
    assert set(encoded) == {"input_ids", "attention_mask"}
    assert encoded["input_ids"][0][0] == tokenizer.cls_token_id and 30522 in encoded["input_ids"][1]
    with pytest.raises(ValueError, match="build it with `build_qformer_tokenizer`"):
        BlapStage1Processor(tiny_feature_extractor(), AutoTokenizer.from_pretrained(bert_dir))


def test_processor_audio_text_and_round_trip(processor, tmp_path):
    inputs = processor(
        audio=_clips(2), sampling_rate=16_000, text=["calm solo piano", "a" + " very" * 20 + " long one"]
    )
    assert inputs["input_features"].shape == (2, 1, 101, 16)
    assert inputs["input_ids"].shape == (2, 8) and inputs["input_ids"][1, -1] == processor.tokenizer.sep_token_id
    assert set(processor(text="jazz")) == {"input_ids", "attention_mask"}
    assert set(processor(audio=_clips(1), sampling_rate=16_000)) == {"input_features"}
    with pytest.raises(ValueError, match="needs `audio`, `text` or both"):
        processor()
    with pytest.raises(ValueError, match="sampling_rate"):
        processor(audio=_clips(1), sampling_rate=0)
    processor.save_pretrained(tmp_path)
    loaded = BlapStage1Processor.from_pretrained(tmp_path)
    assert loaded.max_txt_len == 8 and loaded.tokenizer.bos_token_id == 30522
    assert loaded.feature_extractor.to_dict() == processor.feature_extractor.to_dict()
    assert torch.equal(loaded(text=["calm solo piano"])["input_ids"], processor(text=["calm solo piano"])["input_ids"])


def test_similarity_is_the_cosine_of_the_best_matching_query():
    audio = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [-1.0, 0.0]]])  # 2 clips x 2 queries
    text = torch.tensor([[1.0, 0.0], [0.0, -1.0], [0.8, 0.6]])
    expected = torch.tensor([[1.0, 0.0, 0.8], [0.6, -0.0, 0.96]])
    torch.testing.assert_close(BlapForRepresentationLearning.similarity(audio, text), expected)
    with pytest.raises(ValueError, match="num_query_tokens"):
        BlapForRepresentationLearning.similarity(audio[:, 0], text)


def test_text_to_music_retrieval(model, processor):
    clips = _clips(4)
    queries = ["calm solo piano", "distorted guitars", "a choir"]
    with torch.no_grad():
        audio = model.get_audio_embeddings(**processor(audio=clips, sampling_rate=16_000))
        text = model.get_text_embeddings(**processor(text=queries))
        scores = model.similarity(audio, text)  # (4 clips, 3 queries)
        # Batch invariance: a clip or a query embedded alone gets the same vector.
        alone = model.get_audio_embeddings(**processor(audio=clips[2:3], sampling_rate=16_000))
        text_alone = model.get_text_embeddings(**processor(text=queries[1]))
        out = model(**processor(audio=clips, sampling_rate=16_000, text=queries))
    assert scores.shape == (4, 3) and scores.abs().max() <= 1 + 1e-6
    assert len(set(scores.argmax(0).tolist()) | set(scores.argmin(0).tolist())) > 1  # the scores discriminate
    torch.testing.assert_close(alone[0], audio[2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text_alone[0], text[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits_per_audio, scores / model.temperature, atol=1e-5, rtol=1e-5)


def test_zero_shot_tagging_with_the_stock_pipeline(model, processor, tmp_path):
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert isinstance(AutoModel.from_pretrained(tmp_path), BlapForRepresentationLearning)
    classifier = pipeline("zero-shot-audio-classification", model=str(tmp_path))
    clip = _clips(1, seed=3)[0]
    labels = ["rock", "jazz", "ambient", "techno"]
    result = classifier(clip, candidate_labels=labels, hypothesis_template="This is a {} song.")
    assert [entry["label"] for entry in result] != [] and sorted(entry["label"] for entry in result) == sorted(labels)
    scores = [entry["score"] for entry in result]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-5
    with torch.no_grad():
        inputs = processor(audio=[clip], sampling_rate=16_000, text=[f"This is a {label} song." for label in labels])
        expected = model(**inputs).logits_per_audio[0].softmax(0)
    by_label = {entry["label"]: entry["score"] for entry in result}
    torch.testing.assert_close(torch.tensor([by_label[label] for label in labels]), expected, atol=1e-5, rtol=1e-4)
