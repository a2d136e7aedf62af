import io
import json

import numpy as np
import pytest
import torch
from transformers import pipeline

from transformers_blap import AudioToTextPipeline, BlapForConditionalGeneration, BlapProcessor
from transformers_blap.audio import (
    SILENCE_PEAK_DBFS,
    AudioDecodeError,
    load_audio,
    select_track_caption,
    split_windows,
    window_bounds,
)

from blap_testing import RATE, save_tiny_blap, tone, write_audio


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, t5_tokenizer_dir):
    return save_tiny_blap(tmp_path_factory.mktemp("tiny-blap"), t5_tokenizer_dir)


@pytest.fixture(scope="module")
def captioner(model_dir):
    return pipeline("audio-to-text", model=str(model_dir), device="cpu")


def direct_captions(model_dir, waveform, rate, window_s=1.0, hop_s=None, min_tail_s=0.3, prompt=None):
    """Window captions computed without the pipeline: load_audio + split_windows + processor + generate."""
    model = BlapForConditionalGeneration.from_pretrained(model_dir)
    processor = BlapProcessor.from_pretrained(model_dir)
    samples = load_audio(waveform, RATE, source_sampling_rate=rate)
    windows = []
    for window in split_windows(samples, RATE, window_s, hop_s, min_tail_s):
        inputs = processor(audio=window.samples, sampling_rate=RATE, text=prompt)
        caption = processor.batch_decode(model.generate(**inputs), skip_special_tokens=True)[0]
        windows.append({"start": window.start_s, "end": window.end_s, "caption": caption.strip()})
    return windows


def test_task_resolves_to_the_package_pipeline(captioner, model_dir):
    # The saved folder also carries a custom pipeline entry for trust_remote_code; it must not get in the way.
    assert "custom_pipelines" in json.loads((model_dir / "config.json").read_text())
    assert type(captioner) is AudioToTextPipeline
    assert type(captioner.model) is BlapForConditionalGeneration
    assert isinstance(captioner.processor, BlapProcessor)
    assert captioner.device.type == "cpu"


@pytest.mark.parametrize(
    ("seconds", "rate", "prompt"),
    [(3.5, RATE, None), (2.2, 44_100, None), (0.3, RATE, "Describe the drums.")],
)
def test_windows_and_captions_match_direct_generation(captioner, model_dir, seconds, rate, prompt):
    waveform = tone(seconds, rate=rate, frequency=330.0)
    result = captioner(waveform, sampling_rate=rate, prompt=prompt)
    expected = direct_captions(model_dir, waveform, rate, prompt=prompt)
    assert len(result) == 1
    assert result[0]["windows"] == expected
    captions = [window["caption"] for window in expected]
    assert all(captions)
    assert result[0]["generated_text"] == select_track_caption(captions)
    assert result[0]["windows"][-1]["end"] == pytest.approx(seconds, abs=1e-3)


def test_window_options(captioner, model_dir):
    waveform = tone(1.3, frequency=500.0)
    result = captioner(waveform, sampling_rate=RATE, window_s=0.5, hop_s=0.25, min_tail_s=0.1)[0]
    bounds = window_bounds(waveform.shape[0], RATE, 0.5, 0.25, 0.1)
    assert [(w["start"], w["end"]) for w in result["windows"]] == [(s / RATE, e / RATE) for s, e in bounds]
    assert result["windows"] == direct_captions(model_dir, waveform, RATE, window_s=0.5, hop_s=0.25, min_tail_s=0.1)


def test_every_input_kind_gives_the_same_result(captioner, tmp_path):
    waveform = tone(2.4, frequency=700.0)
    path = write_audio(tmp_path / "clip.wav", waveform, subtype="FLOAT")  # lossless: same samples as the array
    data = path.read_bytes()
    expected = captioner(waveform, sampling_rate=RATE)
    inputs = {
        "path str": str(path),
        "pathlib.Path": path,
        "bytes": data,
        "file object": io.BytesIO(data),
        "torch tensor": torch.from_numpy(waveform),
        "datasets decoded": {"array": waveform, "sampling_rate": RATE},
        "datasets decode=False, path": {"path": str(path), "bytes": None},
        "datasets decode=False, bytes": {"path": None, "bytes": data},
        "asr-style dict": {"raw": waveform, "sampling_rate": RATE},
    }
    for kind, source in inputs.items():
        assert captioner(source, sampling_rate=RATE if kind == "torch tensor" else None) == expected, kind
    # A list mixing them: one result list per input, windows batched across inputs.
    batched = captioner([str(path), data, {"array": waveform, "sampling_rate": RATE}], batch_size=4)
    assert batched == [expected] * 3


@pytest.mark.parametrize("decode", [True, False], ids=["decoded", "decode=False"])
def test_datasets_audio_column(captioner, tmp_path, decode):
    import datasets  # the `train` extra (CI installs it); imported here to keep collection fast
    from transformers.pipelines.pt_utils import KeyDataset

    paths = [str(write_audio(tmp_path / f"{i}.flac", tone(1.5, frequency=f))) for i, f in enumerate((200, 900))]
    # decoded (the default): datasets 5.x yields torchcodec decoders (the `audio` extra, FFmpeg's shared libraries)
    dataset = datasets.Dataset.from_dict({"audio": paths}).cast_column("audio", datasets.Audio(decode=decode))
    results = list(captioner(KeyDataset(dataset, "audio"), batch_size=2))
    assert results == [captioner(path) for path in paths]


def test_silence_is_flagged_and_still_captioned(captioner):
    threshold = 10 ** (SILENCE_PEAK_DBFS / 20)
    quiet = 0.9 * threshold * np.sign(tone(2.5, frequency=300.0))  # peak just below the threshold
    for waveform in (np.zeros(2 * RATE, dtype=np.float32), quiet.astype(np.float32)):
        result = captioner(waveform, sampling_rate=RATE)[0]
        assert result["warnings"] == ["silent"]
        assert result["generated_text"] and all(window["caption"] for window in result["windows"])
    # a quiet start does not make a track silent: the peak of the whole track counts
    audible = np.concatenate([np.zeros(2 * RATE, dtype=np.float32), (11 * threshold * np.ones(RATE)).astype("f4")])
    assert captioner(audible, sampling_rate=RATE)[0]["warnings"] == []
    assert captioner(tone(1.0), sampling_rate=RATE)[0]["warnings"] == []


def test_batching_across_inputs_changes_nothing(captioner):
    inputs = [
        tone(seconds, frequency=f, seed=i) for i, (seconds, f) in enumerate([(2.5, 200), (0.4, 800), (1.7, 3000)])
    ]
    one_by_one = captioner(inputs, sampling_rate=RATE, batch_size=1)
    batched = captioner(inputs, sampling_rate=RATE, batch_size=5)
    assert batched == one_by_one
    assert [len(result[0]["windows"]) for result in batched] == [3, 1, 2]
    assert len({result[0]["generated_text"] for result in batched}) > 1  # captions depend on the audio


def test_generation_options_at_init_and_call(model_dir):
    waveform = tone(1.0, frequency=440.0)
    short = pipeline("audio-to-text", model=str(model_dir), device="cpu", max_new_tokens=2, min_length=3)
    short_caption = short(waveform, sampling_rate=RATE)[0]["generated_text"]
    long_caption = short(waveform, sampling_rate=RATE, max_new_tokens=6, min_length=7)[0]["generated_text"]
    assert long_caption != short_caption and long_caption.startswith(short_caption)  # greedy: a prefix

    several = short(waveform, sampling_rate=RATE, num_beams=3, num_return_sequences=2, max_new_tokens=4)
    assert len(several) == 2
    assert all(len(result["windows"]) == 1 and result["generated_text"] for result in several)
    assert several[0]["generated_text"] != several[1]["generated_text"]


def test_bad_inputs_raise_clear_errors(captioner, tmp_path):
    with pytest.raises(ValueError, match="sampling_rate"):
        captioner(tone(1.0))
    with pytest.raises(AudioDecodeError, match="no-such-file.wav"):
        captioner(str(tmp_path / "no-such-file.wav"))
    with pytest.raises(AudioDecodeError, match="bytes"):
        captioner(b"this is not audio at all" * 20)
    with pytest.raises(ValueError, match="longer than the model's 1 s window"):
        captioner(tone(3.0), sampling_rate=RATE, window_s=2.0)
    with pytest.raises(ValueError, match="`raw` samples needs `sampling_rate`"):
        captioner({"raw": tone(1.0)})


def test_pipeline_needs_the_processor(model_dir):
    model = BlapForConditionalGeneration.from_pretrained(model_dir)
    with pytest.raises(ValueError, match="needs the model's processor"):
        AudioToTextPipeline(model=model, device="cpu")
