"""Sentence-BERT similarity and FENSE: the formula through stand-ins, and the real loaders on tiny local models."""

from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
from transformers import BertConfig, BertModel, BertTokenizerFast

from transformers_blap.evaluation import (
    SENTENCE_METRICS,
    BertFluencyErrorDetector,
    CaptionScorer,
    caption_metrics,
)
from transformers_blap.evaluation.resources import fense_checkpoint_path, fense_encoder_dir, sbert_dir

from paper_captions import pooled_corpus

# BLAP's captions of the paper's Tables 2/3 with several references per clip, and one caption with fluency errors.
PREDICTIONS, REFERENCES = pooled_corpus("BLAP")
PREDICTIONS = [*PREDICTIONS, "a a song song with with drums drums"]
REFERENCES = [*REFERENCES, ["a rock song with loud drums"]]
VOCAB = sorted({word for text in PREDICTIONS + sum(REFERENCES, []) for word in text.lower().replace(",", " ").split()})


class BagOfWordsEncoder:
    """Stand-in SentenceEncoder: word counts over a fixed vocabulary, as a torch tensor."""

    def encode(self, sentences):
        vectors = torch.zeros(len(sentences), len(VOCAB))
        for row, sentence in enumerate(sentences):
            for word in sentence.lower().replace(",", " ").split():
                if word in VOCAB:
                    vectors[row, VOCAB.index(word)] += 1
        return vectors


class RepetitionDetector:
    """Stand-in FluencyErrorDetector: sure of an error when a word is repeated back to back."""

    def __init__(self, probability_without_error: float = 0.05):
        self.probability_without_error = probability_without_error

    def error_probabilities(self, sentences):
        probabilities = []
        for sentence in sentences:
            words = sentence.split()
            repeated = any(first == second for first, second in zip(words, words[1:]))
            probabilities.append(0.99 if repeated else self.probability_without_error)
        return np.array(probabilities)


def expected_scores(predictions, references, embed, error_probabilities):
    similarities, errors = [], []
    for prediction, clip_references, probability in zip(predictions, references, error_probabilities):
        candidate = embed([prediction])[0]
        candidate = candidate / np.linalg.norm(candidate)
        cosines = []
        for reference in clip_references:
            vector = embed([reference])[0]
            cosines.append(float(candidate @ (vector / np.linalg.norm(vector))))
        similarities.append(np.mean(cosines))
        errors.append(1.0 if probability > 0.9 else 0.0)
    similarities, errors = np.array(similarities), np.array(errors)
    return {
        "sbert_sim": similarities.mean(),
        "fluency_error_rate": errors.mean(),
        "fense": (similarities * (1 - 0.9 * errors)).mean(),
    }


def test_fense_formula_with_stand_ins():
    encoder, detector = BagOfWordsEncoder(), RepetitionDetector()
    scores = caption_metrics(
        PREDICTIONS, REFERENCES, metrics=SENTENCE_METRICS, sentence_encoder=encoder, error_detector=detector
    )
    expected = expected_scores(
        PREDICTIONS,
        REFERENCES,
        lambda texts: encoder.encode(texts).double().numpy(),
        detector.error_probabilities(PREDICTIONS),
    )
    assert list(scores) == list(SENTENCE_METRICS)
    assert scores == pytest.approx(expected, abs=1e-12)
    assert scores["fluency_error_rate"] == pytest.approx(1 / len(PREDICTIONS))
    assert scores["fense"] < scores["sbert_sim"]


def test_error_threshold_is_strict():
    scores = caption_metrics(
        ["a calm piano"],
        ["a calm piano piece"],
        metrics=["fense", "sbert_sim"],
        sentence_encoder=BagOfWordsEncoder(),
        error_detector=RepetitionDetector(probability_without_error=0.9),
    )
    assert scores["fense"] == scores["sbert_sim"]


def test_sbert_similarity_needs_no_detector(tmp_path):
    scores = caption_metrics(
        PREDICTIONS, REFERENCES, metrics=["sbert_sim"], sentence_encoder=BagOfWordsEncoder(), cache_dir=tmp_path
    )
    assert list(scores) == ["sbert_sim"]


class WrongShapeEncoder:
    def encode(self, sentences):
        return np.ones(len(sentences))


class WrongShapeDetector:
    def error_probabilities(self, sentences):
        return np.ones((len(sentences), 6))


def test_stand_ins_with_wrong_outputs_are_named():
    with pytest.raises(ValueError, match=r"encoder.encode must return an array of shape \(2, dim\)"):
        caption_metrics(["a", "b"], ["a", "b"], metrics=["sbert_sim"], sentence_encoder=WrongShapeEncoder())
    with pytest.raises(ValueError, match=r"detector.error_probabilities must return one probability per sentence"):
        caption_metrics(
            ["a", "b"],
            ["a", "b"],
            metrics=["fense"],
            sentence_encoder=BagOfWordsEncoder(),
            error_detector=WrongShapeDetector(),
        )
    with pytest.raises(TypeError, match="`sentence_encoder` must implement SentenceEncoder"):
        CaptionScorer(["sbert_sim"], sentence_encoder=object())
    with pytest.raises(TypeError, match="`error_detector` must implement FluencyErrorDetector"):
        CaptionScorer(["fense"], sentence_encoder=BagOfWordsEncoder(), error_detector="detector")


def _tiny_bert(directory: Path, seed: int) -> BertModel:
    """A 1-layer BERT with the test captions' words as vocabulary, saved with its tokenizer in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *VOCAB]) + "\n")
    BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(VOCAB) + 5,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    config.save_pretrained(directory)
    return BertModel(config).eval()


@pytest.fixture(scope="module")
def metrics_cache(tmp_path_factory):
    """A metrics cache laid out like the setup command's, holding tiny random models instead of the real ones."""
    cache = tmp_path_factory.mktemp("metrics-cache")
    sbert_source = cache / "tiny-sbert-source"
    _tiny_bert(sbert_source, seed=0).save_pretrained(sbert_source)
    SentenceTransformer(modules=[Transformer(str(sbert_source)), Pooling(16, "mean")], device="cpu").save(
        str(sbert_dir(cache))
    )

    encoder = _tiny_bert(fense_encoder_dir(cache), seed=1)
    head = torch.nn.Linear(16, 6)
    tokenizer = BertTokenizerFast.from_pretrained(fense_encoder_dir(cache))
    with torch.no_grad():
        batch = tokenizer(PREDICTIONS, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
        logits = head(encoder(**batch).last_hidden_state[:, 0])[:, -1]
        # Move the "any error" logit so that the threshold 0.9 falls between the captions' probabilities.
        head.bias[-1] += float(np.log(0.9 / 0.1) - logits.median())
        logits = head(encoder(**batch).last_hidden_state[:, 0])[:, -1]
    state_dict = {f"encoder.{key}": value for key, value in encoder.state_dict().items()}
    state_dict |= {f"clf.{key}": value for key, value in head.state_dict().items()}
    state_dict["encoder.embeddings.position_ids"] = torch.arange(64)[None]  # saved by older transformers
    fense_checkpoint_path(cache).parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"model_type": "bert-base-uncased", "num_classes": 6, "state_dict": state_dict}, fense_checkpoint_path(cache)
    )
    return cache, torch.sigmoid(logits).numpy()


def test_real_loaders_on_tiny_local_models(metrics_cache):
    cache, error_probabilities = metrics_cache
    assert 0 < (error_probabilities > 0.9).sum() < len(PREDICTIONS)
    scores = caption_metrics(PREDICTIONS, REFERENCES, metrics=SENTENCE_METRICS, cache_dir=cache)
    sbert = SentenceTransformer(str(sbert_dir(cache)), device="cpu")
    expected = expected_scores(PREDICTIONS, REFERENCES, lambda texts: sbert.encode(texts), error_probabilities)
    assert scores == pytest.approx(expected, abs=1e-5)


def test_detector_checkpoints_are_read_without_unpickling_code(metrics_cache, tmp_path):
    cache, _ = metrics_cache
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"model_type": "bert-base-uncased", "num_classes": 6, "state_dict": {}, "extra": Path("x")}, unsafe)
    with pytest.raises(ValueError, match="could not be read as a FENSE detector checkpoint with weights_only=True"):
        BertFluencyErrorDetector(unsafe, fense_encoder_dir(cache))
    not_a_checkpoint = tmp_path / "weights.ckpt"
    torch.save({"weights": torch.zeros(2)}, not_a_checkpoint)
    with pytest.raises(ValueError, match="must hold a dict with keys 'model_type', 'num_classes' and 'state_dict'"):
        BertFluencyErrorDetector(not_a_checkpoint, fense_encoder_dir(cache))
