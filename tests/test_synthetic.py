"""The synthetic music corpus: determinism, labels that are audible, captions that parse back, the tokenizer."""

import itertools
import json

import numpy as np
import pytest
import soundfile as sf
from transformers import AutoTokenizer

from transformers_blap import BlapFeatureExtractor
from transformers_blap.synthetic import (
    ATTRIBUTE_CLASSES,
    CLIP_SECONDS,
    INSTRUMENTS,
    RHYTHM_PATTERNS,
    SAMPLING_RATE,
    TEMPOS,
    ClipLabels,
    caption_variants,
    make_clip,
    parse_caption,
    read_metadata,
    render_clip,
    train_t5_tokenizer,
    write_audiofolder,
)


def test_clips_are_deterministic_per_seed_and_index():
    first, again = make_clip(7, seed=3), make_clip(7, seed=3)
    assert first.labels == again.labels and first.captions == again.captions
    assert len(set(first.captions)) == len(first.captions) == 3
    np.testing.assert_array_equal(first.audio, again.audio)
    other_seed = make_clip(7, seed=4)
    assert not np.array_equal(first.audio, other_seed.audio)
    assert first.audio.dtype == np.float32 and first.audio.shape == (int(CLIP_SECONDS * SAMPLING_RATE),)
    assert 0.05 < np.abs(first.audio).max() <= 1.0


def test_instrument_and_tempo_cycle_through_every_pair():
    pairs = [(c.labels.instrument, c.labels.tempo) for c in (make_clip(i, seed=0, duration_s=0.5) for i in range(15))]
    assert sorted(pairs) == sorted(itertools.product(INSTRUMENTS, TEMPOS))


def test_every_caption_phrasing_parses_back_to_its_labels():
    rng = np.random.default_rng(0)
    all_labels = [
        ClipLabels(instrument, tempo, 100.0, dynamics, key, mode, rhythm)
        for instrument, tempo, dynamics, key, mode, rhythm in itertools.product(
            *(ATTRIBUTE_CLASSES[name] for name in ("instrument", "tempo", "dynamics", "key", "mode", "rhythm"))
        )
    ]
    phrasings = set()
    for index in rng.choice(len(all_labels), size=300, replace=False):
        labels = all_labels[index]
        variants = caption_variants(labels)
        assert len(set(variants)) == len(variants) >= 12
        phrasings.update(variants)
        expected = {name: getattr(labels, name) for name in ATTRIBUTE_CLASSES}
        for caption in variants:
            assert parse_caption(caption) == expected, caption
    assert len(phrasings) > 3000


def test_parse_caption_refuses_hedged_or_missing_labels():
    parsed = parse_caption("A slow or fast piece on piano and organ.")
    assert parsed["tempo"] is None and parsed["instrument"] is None
    assert parse_caption("Some music.") == dict.fromkeys(ATTRIBUTE_CLASSES)
    assert parse_caption("A fast waltz on the flute in A minor.")["key"] == "A"
    assert parse_caption("A fast waltz on the flute in B flat major.")["key"] == "B flat"


def test_instrument_and_dynamics_change_the_sound():
    """Same notes, drums and random stream: each instrument has its own spectrum, and loud is louder than soft."""
    extractor = BlapFeatureExtractor(
        feature_size=32, sampling_rate=SAMPLING_RATE, fft_window_size=1024, hop_length=512, frequency_max=8000
    )

    def render(instrument: str, dynamics: str) -> np.ndarray:
        labels = ClipLabels(instrument, "medium", 100.0, dynamics, "D", "minor", "rock")
        return render_clip(labels, np.random.default_rng(0), duration_s=2.0)

    clips = [render(instrument, "loud") for instrument in INSTRUMENTS]
    spectra = extractor(clips, sampling_rate=SAMPLING_RATE)["input_features"][:, 0].mean(dim=1).numpy()
    shapes = spectra - spectra.mean(axis=1, keepdims=True)  # spectral shape in dB, independent of level
    for a, b in itertools.combinations(range(len(INSTRUMENTS)), 2):
        assert np.abs(shapes[a] - shapes[b]).mean() > 2.0, (INSTRUMENTS[a], INSTRUMENTS[b])
    for instrument in INSTRUMENTS:
        loud, soft = render(instrument, "loud"), render(instrument, "soft")
        assert np.sqrt(np.mean(loud**2)) > 2.5 * np.sqrt(np.mean(soft**2)), instrument


def estimate_bpm(audio: np.ndarray, hop: int = 160) -> float:
    """Tempo from the autocorrelation of the onset strength (rises of the log energy), beat periods 0.3-1.2 s."""
    frames = audio[: len(audio) // hop * hop].reshape(-1, hop)
    flux = np.maximum(np.diff(np.log(np.square(frames).mean(axis=1) + 1e-8)), 0.0)
    flux -= flux.mean()
    autocorrelation = np.correlate(flux, flux, "full")[len(flux) - 1 :]
    lags = np.arange(len(autocorrelation)) * hop / SAMPLING_RATE
    allowed = (lags > 0.3) & (lags < 1.2)
    return 60.0 / lags[allowed][np.argmax(autocorrelation[allowed])]


@pytest.mark.parametrize("rhythm", ["rock", "waltz", "disco"])
def test_the_pulse_is_at_the_labelled_tempo(rhythm):
    """
    A plain tempo estimator finds the labelled bpm in every clip, up to the usual ambiguity of metrical level (it may
    lock onto the eighth notes, every second beat, or the bar).

    Swung shuffles are left out: their triplet pulse fools this simple estimator, not the model.
    """
    for instrument in INSTRUMENTS:
        for tempo, bpm in (("slow", 58.0), ("medium", 104.0), ("fast", 170.0)):
            audio = render_clip(
                ClipLabels(instrument, tempo, bpm, "soft", "C", "major", rhythm), np.random.default_rng(1)
            )
            estimate = estimate_bpm(audio)
            levels = (2 * bpm, bpm, bpm / 2, bpm / RHYTHM_PATTERNS[rhythm]["beats"])
            assert min(abs(estimate - level) / level for level in levels) < 0.04, (instrument, bpm, estimate)


def test_write_audiofolder(tmp_path):
    root = write_audiofolder(tmp_path / "corpus", {"train": 4, "test": 2}, seed=5, duration_s=1.0)
    train, test = read_metadata(root / "train"), read_metadata(root / "test")
    assert [row["file_name"] for row in train] == [f"clip_{i:05d}.flac" for i in range(4)]
    assert [row["file_name"] for row in test] == ["clip_00004.flac", "clip_00005.flac"]
    for row, index in zip(train + test, range(6)):
        clip = make_clip(index, seed=5, duration_s=1.0)
        assert row["caption"] == clip.captions and row["instrument"] == clip.labels.instrument
        audio, rate = sf.read(row["path"], dtype="float32")
        assert rate == SAMPLING_RATE
        np.testing.assert_allclose(audio, clip.audio, atol=1 / 2**15)  # 16-bit FLAC
    with open(root / "train" / "metadata.jsonl") as handle:
        first = json.loads(handle.readline())
    assert set(first) == {"file_name", "caption", *ATTRIBUTE_CLASSES, "bpm"}

    # A split does not depend on the size of the splits after it.
    smaller = write_audiofolder(tmp_path / "smaller", {"train": 4, "test": 1}, seed=5, duration_s=1.0)
    assert [r["caption"] for r in read_metadata(smaller / "train")] == [r["caption"] for r in train]
    with pytest.raises(ValueError, match="at least one clip"):
        write_audiofolder(tmp_path / "bad", {"train": 0})


def test_caption_tokenizer(tmp_path):
    captions = [caption for i in range(40) for caption in make_clip(i, seed=0, duration_s=0.25).captions]
    prompt = "Generate an objective music description."
    tokenizer = train_t5_tokenizer(captions + [prompt], vocab_size=128)
    assert 60 < len(tokenizer) <= 128
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    for text in captions + [prompt]:
        ids = tokenizer(text)["input_ids"]
        assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    # Whole words, not letters: a caption is about one token per word.
    assert "▁piano" in tokenizer.get_vocab() and "▁moderate" in tokenizer.get_vocab()
    assert len(tokenizer(captions[0])["input_ids"]) <= len(captions[0].split()) + 4

    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(reloaded) == len(tokenizer)
    assert reloaded(captions[:5])["input_ids"] == tokenizer(captions[:5])["input_ids"]
