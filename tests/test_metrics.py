"""
Caption metrics against pycocoevalcap's own scorers on the BLAP paper's Tables 2/3 captions, input checks, SPICE
through a stand-in, missing downloads.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from transformers_blap.evaluation import (
    ALL_METRICS,
    NGRAM_METRICS,
    SETUP_COMMAND,
    CaptionScorer,
    MissingMetricResourceError,
    caption_metrics,
    resources,
)

from paper_captions import SYSTEMS, pooled_corpus, system_corpus

FAKE_SPICE = [sys.executable, str(Path(__file__).parent / "data" / "fake_spice.py")]
# Each system of the paper against the expert captions (one reference per clip), and BLAP against five references.
CORPORA = {system: system_corpus(system) for system in SYSTEMS} | {"BLAP, five references": pooled_corpus("BLAP")}


@pytest.fixture(scope="module")
def reference_meteor():
    meteor = Meteor()
    yield meteor
    with meteor.lock:
        meteor.meteor_p.stdin.close()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()


@pytest.fixture(scope="module")
def ngram_scorer():
    with CaptionScorer(NGRAM_METRICS) as scorer:
        yield scorer


def coco_scores(predictions: list[str], references: list[list[str]], meteor: Meteor) -> dict[str, float]:
    """What COCOEvalCap.evaluate does: PTB-tokenize both sides, then each pycocoevalcap scorer on the whole corpus."""
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": ref} for ref in refs] for i, refs in enumerate(references)})
    res = tokenizer.tokenize({i: [{"caption": prediction}] for i, prediction in enumerate(predictions)})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {
        "bleu_1": bleu[0],
        "bleu_2": bleu[1],
        "bleu_3": bleu[2],
        "bleu_4": bleu[3],
        "meteor": meteor.compute_score(gts, res)[0],
        "rouge_l": Rouge().compute_score(gts, res)[0],
        "cider_d": Cider().compute_score(gts, res)[0],
    }


@pytest.mark.parametrize("corpus", list(CORPORA))
def test_ngram_metrics_equal_pycocoevalcap_on_the_papers_captions(corpus, ngram_scorer, reference_meteor):
    predictions, references = CORPORA[corpus]
    ours = ngram_scorer(predictions, references)
    expected = coco_scores(predictions, references, reference_meteor)
    assert list(ours) == list(NGRAM_METRICS)
    for name in NGRAM_METRICS:
        assert ours[name] == pytest.approx(expected[name], abs=1e-6), name


def test_each_caption_is_scored_against_its_own_clip(ngram_scorer):
    # BLAP's clip-1 caption repeats its expert caption's opening ("The low quality recording features an ... electric
    # guitar"): pairing captions with the references of other clips must score lower.
    predictions, references = system_corpus("BLAP")
    paired = ngram_scorer(predictions, references)
    shifted = ngram_scorer(predictions, references[1:] + references[:1])
    for name in ("bleu_1", "bleu_4", "rouge_l", "cider_d"):
        assert paired[name] > shifted[name], name


def test_reference_strings_and_line_breaks(ngram_scorer):
    predictions, references = system_corpus("Salmonn")
    flat_references = [clip_references[0] for clip_references in references]
    broken = [prediction.replace(" ", "\n", 1).replace(" ", "\u2028", 1) for prediction in predictions]
    assert ngram_scorer(broken, flat_references) == ngram_scorer(predictions, references)


def test_cider_d_takes_document_frequencies_from_the_evaluated_references(ngram_scorer):
    predictions, references = system_corpus("BLAP")
    alone = ngram_scorer(predictions[:2], references[:2])["cider_d"]
    in_corpus = ngram_scorer(predictions, references)["cider_d"]
    per_clip = Cider().compute_score(
        PTBTokenizer().tokenize({i: [{"caption": r[0]}] for i, r in enumerate(references)}),
        PTBTokenizer().tokenize({i: [{"caption": p}] for i, p in enumerate(predictions)}),
    )[1]
    assert alone != pytest.approx(np.mean(per_clip[:2]))
    assert in_corpus == pytest.approx(np.mean(per_clip), abs=1e-9)


@settings(max_examples=5, deadline=None)
@given(
    st.lists(
        st.lists(
            st.sampled_from("soft loud piano guitar drums bass jazz rock calm fast slow song".split()), min_size=4
        ),
        min_size=1,
        max_size=4,
    )
)
def test_identical_captions_score_one(captions):
    sentences = [" ".join(words) for words in captions]
    scores = caption_metrics(sentences, sentences, metrics=["bleu_1", "bleu_4", "rouge_l"])
    assert scores["bleu_1"] == pytest.approx(1.0, abs=1e-6)
    assert scores["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["rouge_l"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    ("predictions", "references", "error", "message"),
    [
        ("a song", ["a song"], TypeError, "`predictions` must be a sequence"),
        ([], [], ValueError, "`predictions` is empty"),
        (["a", "b"], [["a"]], ValueError, "2 predictions and 1 reference entries"),
        ([3], [["a"]], TypeError, r"`predictions\[0\]` must be a string"),
        (["a"], [[]], ValueError, r"`references\[0\]` must be a caption or a non-empty list"),
        (["a"], [["ok", "  "]], ValueError, r"`references\[0\]` must contain non-empty strings"),
        (["a"], "a", TypeError, "`references` must be a sequence"),
    ],
)
def test_bad_inputs_are_named(predictions, references, error, message, ngram_scorer):
    with pytest.raises(error, match=message):
        ngram_scorer(predictions, references)


def test_unknown_metric_names():
    with pytest.raises(ValueError, match="`metrics` must be a non-empty selection"):
        CaptionScorer(["bleu", "cider"])


def test_spice_and_spider_through_a_stand_in(ngram_scorer):
    predictions, references = pooled_corpus("Qwen-Audio")
    scores = caption_metrics(predictions, references, metrics=["spice", "spider"], spice_command=FAKE_SPICE)
    assert list(scores) == ["spice", "spider"]
    # The stand-in's score: F1 of word sets on the PTB-tokenized captions.
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": ref} for ref in refs] for i, refs in enumerate(references)})
    res = tokenizer.tokenize({i: [{"caption": prediction}] for i, prediction in enumerate(predictions)})
    f_scores = []
    for i in range(len(predictions)):
        test, refs = set(res[i][0].split()), {word for ref in gts[i] for word in ref.split()}
        precision, recall = len(test & refs) / len(test), len(test & refs) / len(refs)
        f_scores.append(2 * precision * recall / (precision + recall))
    assert scores["spice"] == pytest.approx(np.mean(f_scores), abs=1e-12)
    cider_d = ngram_scorer(predictions, references)["cider_d"]
    assert scores["spider"] == pytest.approx((cider_d + scores["spice"]) / 2, abs=1e-12)


def test_spice_failure_shows_the_java_error(monkeypatch):
    monkeypatch.setenv("FAKE_SPICE_FAIL", "1")
    with pytest.raises(RuntimeError, match=r"(?s)SPICE failed \(exit status 1\).*NoClassDefFoundError"):
        caption_metrics(["a song"], ["a piano song"], metrics=["spice"], spice_command=FAKE_SPICE)


def test_missing_downloads_are_named_with_the_setup_command(tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "CORENLP_JARS", (tmp_path / "lib" / "stanford-corenlp-3.6.0.jar",))
    with pytest.raises(MissingMetricResourceError) as raised:
        CaptionScorer(ALL_METRICS, cache_dir=tmp_path / "cache")
    message = str(raised.value)
    for expected in (
        "Stanford CoreNLP 3.6.0 for SPICE",
        str(tmp_path / "lib" / "stanford-corenlp-3.6.0.jar"),
        "paraphrase-TinyBERT-L6-v2",
        "FENSE fluency-error detector checkpoint",
        str(tmp_path / "cache" / "fense" / "echecker_clotho_audiocaps_base.ckpt"),
        "bert-base-uncased",
        f"{SETUP_COMMAND} --cache-dir {tmp_path / 'cache'}",
    ):
        assert expected in message


def test_n_gram_metrics_need_no_download(tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "CORENLP_JARS", (tmp_path / "absent.jar",))
    scores = caption_metrics(
        ["a calm piano melody"], [["a soft piano piece"]], metrics=["bleu_1", "cider_d"], cache_dir=tmp_path / "empty"
    )
    assert set(scores) == {"bleu_1", "cider_d"}


def test_missing_java_is_named(monkeypatch):
    monkeypatch.setattr(resources.shutil, "which", lambda name: None)
    with pytest.raises(MissingMetricResourceError, match="no `java` is on PATH"):
        CaptionScorer(["bleu_1"])
