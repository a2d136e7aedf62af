"""Caption augmentation, caption datasets and the stage-2 data collator."""

import io
import json

import datasets
import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from transformers_blap.training import (
    AudioCaptionPreparer,
    BlapDataCollator,
    FirstWordDropping,
    PhraseDropping,
    caption_dataset,
    load_caption_dataset,
    load_caption_file,
)
from transformers_blap.training.collator import SeededExamples

from tiny import tiny_processor

RATE = 16_000


def _ramp(num_samples: int) -> np.ndarray:
    """A waveform whose sample values give their own position: sample i is i / 2**20 (exact in float32)."""
    return (np.arange(num_samples) / 2**20).astype(np.float32)


def _offset(window: np.ndarray) -> int:
    return int(round(float(window[0]) * 2**20))


@pytest.fixture
def clips(tmp_path):
    """Three float32 WAV files at 16 kHz: 0.5 s, 1 s and 3 s of a ramp."""
    paths = {}
    for name, seconds in (("short", 0.5), ("one", 1.0), ("long", 3.0)):
        path = tmp_path / f"{name}.wav"
        sf.write(path, _ramp(int(seconds * RATE)), RATE, subtype="FLOAT")
        paths[name] = path
    return paths


@pytest.fixture
def processor(t5_tokenizer_dir):
    return tiny_processor(t5_tokenizer_dir)


# ------------------------------------------------------------------------------------------------------ augmentation


def test_phrase_dropping_follows_the_release():
    always = PhraseDropping(probability=1.0)
    assert always("The low quality recording features an upbeat song.") == "features an song."
    # Phrases are removed in list order: "Upbeat" comes before "Upbeat," and leaves the comma behind.
    assert always("Upbeat, happy pop. upbeat again") == ", happy pop. again"
    never = PhraseDropping(probability=0.0)
    assert never("An upbeat   song.") == "An upbeat song."


def test_phrase_dropping_draws_once_per_occurrence_and_stops_at_the_first_miss():
    torch.manual_seed(0)
    drop = PhraseDropping(phrases=["upbeat"], probability=0.6)
    outcomes = [drop("upbeat upbeat song").count("upbeat") for _ in range(4000)]
    frequencies = np.bincount(outcomes, minlength=3) / len(outcomes)
    # Both kept: 1 - p; one removed: p (1 - p); both removed: p^2.
    np.testing.assert_allclose(frequencies, [0.36, 0.24, 0.4], atol=0.03)


def test_first_word_dropping():
    drop = FirstWordDropping(words=["This", "A"], probability=1.0)
    assert drop("This is a calm song") == "is a calm song"
    assert drop("Calm song") == "Calm song"
    assert FirstWordDropping(words=["This"], probability=0.0)("This is it") == "This is it"


def test_augmentations_reject_bad_arguments():
    with pytest.raises(ValueError, match="probability"):
        PhraseDropping(probability=1.5)
    with pytest.raises(ValueError, match="phrases"):
        PhraseDropping(phrases="upbeat")
    with pytest.raises(ValueError, match="words"):
        FirstWordDropping(words=[""])


# ------------------------------------------------------------------------------------------------------------- data


def test_load_caption_file_csv_with_several_caption_columns(tmp_path, clips):
    table = tmp_path / "data.csv"
    table.write_text(
        "audio,caption_1,caption_2,genre\n"
        "one.wav,calm piano,soft solo piano,classical\n"
        'long.wav,"[""rock song"", ""loud guitars""]",,rock\n'
    )
    dataset = load_caption_file(table)
    assert dataset.column_names == ["audio", "captions"]
    assert dataset["audio"] == [str(clips["one"].resolve()), str(clips["long"].resolve())]
    assert dataset["captions"] == [["calm piano", "soft solo piano"], ["rock song", "loud guitars"]]


def test_load_caption_file_jsonl_with_a_caption_list_and_audio_root(tmp_path, clips):
    table = tmp_path / "meta" / "data.jsonl"
    table.parent.mkdir()
    table.write_text(
        json.dumps({"file": "short.wav", "captions": ["a", "b", "c"]})
        + "\n"
        + json.dumps({"file": "one.wav", "captions": "d"})
    )
    dataset = load_caption_file(table, audio_column="file", audio_root=tmp_path)
    assert dataset["captions"] == [["a", "b", "c"], ["d"]]
    assert dataset["audio"][0] == str(clips["short"].resolve())


def test_load_caption_file_errors_name_the_problem(tmp_path, clips):
    missing = tmp_path / "missing.csv"
    missing.write_text("audio,caption\none.wav,x\nnot_there.wav,y\n")
    with pytest.raises(FileNotFoundError, match="1 of 2 audio files.*not_there.wav"):
        load_caption_file(missing)
    no_caption = tmp_path / "nocap.csv"
    no_caption.write_text("audio,text\none.wav,x\n")
    with pytest.raises(ValueError, match="No caption column"):
        load_caption_file(no_caption)
    empty_caption = tmp_path / "empty.csv"
    empty_caption.write_text("audio,caption\none.wav,\n")
    with pytest.raises(ValueError, match="row 1 has no caption"):
        load_caption_file(empty_caption)
    with pytest.raises(ValueError, match="Unsupported data file"):
        (tmp_path / "data.txt").write_text("x")
        load_caption_file(tmp_path / "data.txt")


def test_caption_dataset_casts_audio_to_undecoded_values(clips, tmp_path):
    raw = datasets.Dataset.from_dict(
        {"audio": [str(clips["one"])], "caption": ["calm piano"], "other_caption": ["soft piano"]}
    ).cast_column("audio", datasets.Audio())
    dataset = caption_dataset(raw, caption_columns=["caption", "other_caption"])
    assert dataset.features["audio"].decode is False
    assert dataset[0]["audio"] == {"bytes": None, "path": str(clips["one"])}
    assert dataset[0]["captions"] == ["calm piano", "soft piano"]
    raw.save_to_disk(tmp_path / "saved")
    reloaded = load_caption_dataset(str(tmp_path / "saved"), caption_columns=["caption"])
    assert reloaded[0]["captions"] == ["calm piano"]


# --------------------------------------------------------------------------------------------------------- collator


def test_training_windows_are_random_and_evaluation_windows_fixed(clips):
    preparer = AudioCaptionPreparer(sampling_rate=RATE, window_s=1.0)
    torch.manual_seed(0)
    offsets = set()
    for _ in range(8):
        (window,) = preparer([{"audio": str(clips["long"]), "captions": "x"}]).waveforms
        assert window.shape == (RATE,)
        offset = _offset(window)
        np.testing.assert_array_equal(window, _ramp(3 * RATE)[offset : offset + RATE])
        offsets.add(offset)
    assert len(offsets) == 8

    first = preparer.for_evaluation()([{"audio": str(clips["long"]), "captions": "x"}]).waveforms[0]
    assert _offset(first) == 0 and first.shape == (RATE,)
    center = AudioCaptionPreparer(sampling_rate=RATE, window_s=1.0, training=False, eval_window="center")
    assert _offset(center([{"audio": str(clips["long"]), "captions": "x"}]).waveforms[0]) == RATE
    (short,) = preparer([{"audio": str(clips["short"]), "captions": "x"}]).waveforms
    assert short.shape == (RATE // 2,)  # the feature extractor repeat-pads it


def test_caption_choice_and_augmentation(clips):
    example = {"audio": str(clips["one"]), "captions": ["upbeat one", "upbeat two", "upbeat three"]}
    preparer = AudioCaptionPreparer(
        sampling_rate=RATE, window_s=1.0, caption_augmentation=PhraseDropping(phrases=["upbeat"], probability=1.0)
    )
    torch.manual_seed(0)
    picked = {preparer([example]).captions[0] for _ in range(30)}
    assert picked == {"one", "two", "three"}
    evaluation = preparer.for_evaluation()([example])
    assert evaluation.captions == ["upbeat one"]  # first caption, not augmented
    assert evaluation.references == [example["captions"]]
    assert preparer.training  # the evaluation copy left the original alone


def test_seeded_examples_draw_from_their_own_seed_and_leave_the_global_generator_alone(clips):
    """A row from `SeededExamples` gets the same window and caption whatever was drawn before (what makes a resumed
    run continue exactly as the uninterrupted one), and collating it does not move torch's global generator."""
    preparer = AudioCaptionPreparer(sampling_rate=RATE, window_s=1.0)
    rows = SeededExamples([{"audio": str(clips["long"]), "captions": [f"caption {i}" for i in range(20)]}] * 3, seed=7)

    def draws(global_seed: int) -> tuple[list[int], list[str]]:
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        batch = preparer([rows[index] for index in range(3)])
        assert torch.equal(torch.get_rng_state(), state)
        return [_offset(window) for window in batch.waveforms], batch.captions

    first = draws(0)
    assert draws(1) == first
    assert len(set(first[0])) == 3  # the rows' own seeds differ
    rows.set_epoch(1)
    assert draws(0) != first


def test_every_audio_source_decodes(clips):
    encoded = clips["one"].read_bytes()
    at_8k = _ramp(8_000)
    sources = [
        str(clips["one"]),
        clips["one"],
        encoded,
        io.BytesIO(encoded),
        {"bytes": encoded, "path": None},
        {"bytes": None, "path": str(clips["one"])},
        {"array": at_8k, "sampling_rate": 8_000},
    ]
    batch = AudioCaptionPreparer(sampling_rate=RATE, window_s=1.0, training=False)(
        [{"audio": source, "captions": "x"} for source in sources]
    )
    for waveform in batch.waveforms[:-1]:
        np.testing.assert_array_equal(waveform, _ramp(RATE))
    assert batch.waveforms[-1].shape == (RATE,)  # resampled from 8 kHz


def test_collator_output_matches_the_model_inputs(processor, clips):
    processor.max_txt_len = 6
    collator = BlapDataCollator(processor)
    examples = [
        {"audio": str(clips["one"]), "captions": ["calm piano"]},
        {"audio": str(clips["long"]), "captions": ["a very long caption that is cut after six tokens for sure"]},
    ]
    batch = collator(examples)
    assert set(batch) == {"input_features", "input_ids", "attention_mask", "labels", "decoder_attention_mask"}
    assert batch["input_features"].shape == (2, 1, 101, 16)
    assert batch["labels"].shape[1] == 6
    labels, mask = batch["labels"], batch["decoder_attention_mask"]
    assert (labels[mask == 0] == -100).all() and (mask[0] == 0).any() and mask[1].all()
    prompt_ids = processor.tokenizer(processor.prompt)["input_ids"]
    assert batch["input_ids"][0].tolist() == prompt_ids
    assert collator.training and not collator.for_evaluation().training
    with_prompt = BlapDataCollator(processor, prompt="Describe the drums.")(examples[:1])
    assert processor.decode(with_prompt["input_ids"][0], skip_special_tokens=True) == "Describe the drums."


def test_dataloader_workers_draw_different_windows(clips):
    """Each worker gets a copy of the collator: the draws must still differ between workers."""
    preparer = AudioCaptionPreparer(sampling_rate=RATE, window_s=1.0)
    rows = [{"audio": str(clips["long"]), "captions": "x"}] * 4
    torch.manual_seed(0)
    loader = DataLoader(rows, batch_size=1, num_workers=2, collate_fn=preparer)
    offsets = [_offset(batch.waveforms[0]) for batch in loader]
    assert len(set(offsets)) == 4


def test_collator_errors_name_the_example(clips, tmp_path):
    preparer = AudioCaptionPreparer(sampling_rate=RATE, window_s=1.0)
    with pytest.raises(KeyError, match="example 1 of the batch has no 'captions'"):
        preparer([{"audio": str(clips["one"]), "captions": "x"}, {"audio": str(clips["one"])}])
    with pytest.raises(TypeError, match="example 0 of the batch: captions must be"):
        preparer([{"audio": str(clips["one"]), "captions": 3}])
    with pytest.raises(ValueError, match="example 0 of the batch: no non-empty caption"):
        preparer([{"audio": str(clips["one"]), "captions": ["", " "]}])
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="broken.wav"):
        preparer([{"audio": str(broken), "captions": "x"}])
    with pytest.raises(ValueError, match="eval_window"):
        AudioCaptionPreparer(sampling_rate=RATE, eval_window="last")
    with pytest.raises(ValueError, match="empty"):
        preparer([])
