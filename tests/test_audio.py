"""Audio in: decoding, resampling, downmix, integer PCM, bad inputs, timed windows, whole-track caption rule."""

import io
import struct
from pathlib import Path

import av
import datasets
import numpy as np
import pytest
import soundfile as sf
import torch

from transformers_blap.audio import (
    AudioDecodeError,
    audio_duration,
    iter_windows,
    load_audio,
    resample,
    select_track_caption,
    split_windows,
    track_caption_index,
    window_bounds,
)
from transformers_blap.feature_extraction_blap import BlapFeatureExtractor

RATE = 48_000


def tone(seconds: float, rate: int, frequency: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    """A sine, float32, `(num_samples,)`."""
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def music_like(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Two tones plus a little noise, float32, `(num_samples,)` or `(num_samples, channels)`."""
    rng = np.random.default_rng(seed)
    mono = tone(seconds, rate, 440.0, 0.2) + tone(seconds, rate, 1000.0, 0.1)
    if channels == 1:
        return mono + 0.01 * rng.standard_normal(mono.shape[0]).astype(np.float32)
    gains = np.linspace(1.0, 0.5, channels, dtype=np.float32)
    return mono[:, None] * gains + 0.01 * rng.standard_normal((mono.shape[0], channels)).astype(np.float32)


def encode_with_pyav(path: Path, waveform: np.ndarray, rate: int, container: str, codec: str) -> None:
    """Encode mono float32 audio with FFmpeg (for containers libsndfile cannot write, e.g. M4A/AAC)."""
    with av.open(str(path), "w", format=container) as output:
        stream = output.add_stream(codec, rate=rate, layout="mono")
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, waveform.shape[0], frame_size):
            chunk = waveform[None, start : start + frame_size].copy()
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)


def dominant_frequency(waveform: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform * np.hanning(waveform.shape[0])))
    return float(np.fft.rfftfreq(waveform.shape[0], 1 / rate)[np.argmax(spectrum)])


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """Media written by the test: a 2 s 440 Hz stereo tone at 44.1 kHz in several formats, and bad files."""
    root = tmp_path_factory.mktemp("media")
    stereo = np.stack([tone(2.0, 44_100), 0.5 * tone(2.0, 44_100)], axis=1)
    files = {}
    for name, fmt, subtype in [
        ("wav", "WAV", "PCM_16"),
        ("flac", "FLAC", "PCM_16"),
        ("ogg", "OGG", "VORBIS"),
        ("mp3", "MP3", "MPEG_LAYER_III"),
    ]:
        files[name] = root / f"tone.{name}"
        sf.write(files[name], stereo, 44_100, format=fmt, subtype=subtype)
    files["m4a"] = root / "tone.m4a"
    encode_with_pyav(files["m4a"], stereo.mean(axis=1), 44_100, "ipod", "aac")
    files["truncated_mp3"] = root / "truncated.mp3"
    files["truncated_mp3"].write_bytes(files["mp3"].read_bytes()[: files["mp3"].stat().st_size // 2])
    files["fragment_mp3"] = root / "fragment.mp3"  # the first kilobyte of an MP3: nothing decodable
    files["fragment_mp3"].write_bytes(files["mp3"].read_bytes()[:1000])
    files["zero_bytes_wav"] = root / "zero.wav"
    files["zero_bytes_wav"].write_bytes(b"")
    files["text_wav"] = root / "notes.wav"
    files["text_wav"].write_text("These are my notes, not a recording.\n" * 20)
    files["unknown"] = root / "blob.xyz"
    files["unknown"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    files["empty_wav"] = root / "empty.wav"
    sf.write(files["empty_wav"], np.zeros(0, dtype=np.float32), RATE, subtype="FLOAT")
    files["nan_wav"] = root / "nan.wav"
    sf.write(files["nan_wav"], np.array([0.0, 0.5, np.nan, 0.1], dtype=np.float32), RATE, subtype="FLOAT")
    files["rate0_wav"] = root / "rate0.wav"
    header = bytearray(files["wav"].read_bytes())
    header[24:28] = struct.pack("<I", 0)  # the fmt chunk's sample rate field
    files["rate0_wav"].write_bytes(bytes(header))
    files["video_mp4"] = root / "video_only.mp4"
    with av.open(str(files["video_mp4"]), "w", format="mp4") as output:
        stream = output.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return files


# Decoding, resampling, downmix


@pytest.mark.parametrize("name", ["wav", "flac", "ogg", "mp3", "m4a"])
def test_every_format_decodes_to_mono_float32_at_the_model_rate(media, name):
    waveform = load_audio(media[name])
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert abs(waveform.shape[0] / RATE - 2.0) < 0.05  # lossy codecs add at most a frame of padding
    assert abs(dominant_frequency(waveform, RATE) - 440.0) < 2.0
    expected_rms = 0.75 * 0.3 / np.sqrt(2)  # mean of the channels (1 and 0.5) of a 0.3 sine
    rms = float(np.sqrt(np.mean(waveform[RATE // 10 : -RATE // 10] ** 2)))
    assert rms == pytest.approx(expected_rms, rel=0.05)
    assert abs(audio_duration(media[name]) - 2.0) < 0.05


def test_lossless_decode_matches_the_signal(media):
    expected = resample(0.75 * tone(2.0, 44_100), 44_100, RATE)
    for name in ["wav", "flac"]:
        np.testing.assert_allclose(load_audio(media[name]), expected, atol=1e-4)  # 16-bit quantisation


def test_every_kind_of_source_gives_the_same_samples(media):
    path = media["flac"]
    data = path.read_bytes()
    reference = load_audio(path)
    with open(path, "rb") as handle:
        from_file = load_audio(handle)
    sources = [str(path), data, bytearray(data), io.BytesIO(data), {"bytes": data, "path": None}, {"path": str(path)}]
    for source in sources:
        np.testing.assert_array_equal(load_audio(source), reference)
    np.testing.assert_array_equal(from_file, reference)


def test_datasets_audio_values(media):
    dataset = datasets.Dataset.from_dict({"audio": [str(media["flac"])]}).cast_column(
        "audio", datasets.Audio(decode=False)
    )
    value = dataset[0]["audio"]
    assert set(value) == {"bytes", "path"}
    np.testing.assert_array_equal(load_audio(value), load_audio(media["flac"]))
    array_value = {"array": tone(1.0, 16_000).astype(np.float64), "sampling_rate": 16_000}
    np.testing.assert_allclose(load_audio(array_value), resample(tone(1.0, 16_000), 16_000, RATE), atol=1e-6)


def test_decoder_objects_with_get_all_samples():
    """`datasets` 5.x yields torchcodec decoders: anything with `get_all_samples()` -> (data (C, N), sample_rate)."""

    class Samples:
        data = torch.from_numpy(np.stack([tone(1.0, RATE), np.zeros(RATE, dtype=np.float32)]))
        sample_rate = RATE

    class Decoder:
        def get_all_samples(self):
            return Samples()

    np.testing.assert_allclose(load_audio(Decoder()), 0.5 * tone(1.0, RATE), atol=1e-7)


def test_resampling_keeps_pitch_and_length():
    for rate in [8_000, 22_050, 44_100, 96_000]:
        waveform = load_audio(tone(1.5, rate, 1000.0), source_sampling_rate=rate)
        assert waveform.shape[0] == round(1.5 * RATE)
        inner = slice(RATE // 10, -RATE // 10)  # away from the edges of the resampling filter
        np.testing.assert_allclose(waveform[inner], tone(1.5, RATE, 1000.0)[inner], atol=2e-3)


def test_multichannel_is_downmixed_by_mean(tmp_path):
    left, right = tone(1.0, RATE, 440.0), tone(1.0, RATE, 660.0, 0.1)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), RATE, subtype="FLOAT")
    expected = (left + right) / 2
    np.testing.assert_allclose(load_audio(path), expected, atol=1e-7)
    channels_last = np.stack([left, right], axis=1)
    np.testing.assert_allclose(load_audio(channels_last, source_sampling_rate=RATE), expected, atol=1e-7)
    np.testing.assert_allclose(load_audio(channels_last.T, source_sampling_rate=RATE), expected, atol=1e-7)
    np.testing.assert_allclose(
        load_audio(torch.from_numpy(channels_last.T.copy()), source_sampling_rate=RATE), expected, atol=1e-7
    )


def test_integer_pcm_is_scaled(tmp_path):
    pcm = (tone(0.5, RATE, 440.0, 0.5) * 32767).astype(np.int16)
    path = tmp_path / "pcm16.wav"
    sf.write(path, pcm, RATE, subtype="PCM_16")
    np.testing.assert_allclose(load_audio(path), pcm / 32768.0, atol=1e-7)
    np.testing.assert_allclose(load_audio(pcm, source_sampling_rate=RATE), pcm / 32768.0, atol=1e-7)
    pcm32 = pcm.astype(np.int32) << 16
    np.testing.assert_allclose(load_audio(pcm32, source_sampling_rate=RATE), pcm / 32768.0, atol=1e-7)
    unsigned = np.array([0, 128, 255], dtype=np.uint8)
    np.testing.assert_allclose(load_audio(unsigned, source_sampling_rate=RATE), [-1.0, 0.0, 127 / 128], atol=1e-7)


def test_start_and_duration_read_a_slice(tmp_path, media):
    waveform = music_like(5.0, RATE)
    path = tmp_path / "five.flac"
    sf.write(path, waveform, RATE, subtype="PCM_24")
    whole = load_audio(path)
    np.testing.assert_array_equal(load_audio(path, start_s=1.25, duration_s=2.0), whole[60_000:156_000])
    np.testing.assert_array_equal(load_audio(path, start_s=4.0), whole[192_000:])
    sliced = load_audio(waveform, source_sampling_rate=RATE, start_s=1.0, duration_s=0.5)
    np.testing.assert_array_equal(sliced, waveform[RATE : RATE + RATE // 2])
    with pytest.raises(AudioDecodeError, match="no audio samples in the requested range"):
        load_audio(path, start_s=6.0)
    # through FFmpeg (M4A), at the source rate so that no resampling blurs the edges
    whole = load_audio(media["m4a"], sampling_rate=44_100)
    sliced = load_audio(media["m4a"], sampling_rate=44_100, start_s=0.5, duration_s=1.0)
    np.testing.assert_array_equal(sliced, whole[22_050:66_150])


def test_silence_and_a_short_clip_are_valid_inputs(tmp_path):
    feature_extractor = BlapFeatureExtractor()
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(10 * 44_100, dtype=np.int16), 44_100, subtype="PCM_16")
    short = tmp_path / "short.flac"
    sf.write(short, tone(0.2, 44_100), 44_100)
    for path, seconds in [(silence, 10.0), (short, 0.2)]:
        waveform = load_audio(path)
        assert waveform.shape[0] == round(seconds * RATE)
        features = feature_extractor(waveform, sampling_rate=RATE)["input_features"]
        assert features.shape == (1, 1, 1001, 64) and torch.isfinite(features).all()
    assert (feature_extractor(load_audio(silence), sampling_rate=RATE)["input_features"] == -100.0).all()


# Bad input: a clear error naming the input


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("text_wav", "not audio: not a recognised audio file or container"),
        ("unknown", "not audio: not a recognised audio file or container"),
        ("truncated_mp3", "truncated"),
        ("fragment_mp3", "too short to decode: 1000 bytes that begin like an MPEG audio"),
        ("zero_bytes_wav", r"the file is empty \(0 bytes\)"),
        ("empty_wav", "no audio samples"),
        ("nan_wav", "NaN or Inf samples"),
        ("rate0_wav", "sample rate of 0 Hz"),
        ("video_mp4", "no audio stream"),
    ],
)
def test_bad_files_raise_a_clear_error_naming_the_file(media, name, reason):
    path = media[name]
    for source in [path, path.read_bytes()]:
        expected_name = str(path) if isinstance(source, Path) else f"<{path.stat().st_size} bytes>"
        with pytest.raises(AudioDecodeError, match=reason) as error:
            load_audio(source)
        assert expected_name in str(error.value)
        assert "\n" not in str(error.value) and "does not exist" not in str(error.value)  # one line, no false cause
        with pytest.raises(AudioDecodeError, match=reason):
            list(iter_windows(source))


def test_missing_file(tmp_path):
    with pytest.raises(AudioDecodeError, match=r"missing\.wav'?: no such file"):
        load_audio(tmp_path / "missing.wav")


@pytest.mark.parametrize(
    ("samples", "kwargs", "reason"),
    [
        (np.zeros(0, dtype=np.float32), {"source_sampling_rate": RATE}, "no audio samples"),
        (np.array([0.0, np.nan], dtype=np.float32), {"source_sampling_rate": RATE}, r"NaN or Inf samples \(first at"),
        (torch.tensor([0.0, float("inf")]), {"source_sampling_rate": RATE}, "NaN or Inf samples"),
        (np.zeros(100, dtype=np.float32), {}, "pass `source_sampling_rate`"),
        (np.zeros(100, dtype=np.float32), {"source_sampling_rate": 0}, "positive integer sample rate in Hz, got 0"),
        (np.zeros(100, dtype=np.float32), {"source_sampling_rate": 44_100.5}, "positive integer sample rate"),
        (np.zeros((3, 3), dtype=np.float32), {"source_sampling_rate": RATE}, "cannot tell channels from samples"),
        (np.zeros((2, 2, 100), dtype=np.float32), {"source_sampling_rate": RATE}, "1-D or 2-D"),
        (np.array(["a", "b"]), {"source_sampling_rate": RATE}, "float or integer PCM"),
        ({"array": np.zeros(10), "sampling_rate": 0}, {}, "positive integer sample rate in Hz, got 0"),
        ({"foo": 1}, {}, "must hold `array` and `sampling_rate`"),
        (12345, {}, "expected a path, bytes"),
    ],
)
def test_bad_samples_raise_a_clear_error_naming_the_input(samples, kwargs, reason):
    with pytest.raises(AudioDecodeError, match=reason) as error:
        load_audio(samples, **kwargs)
    assert str(error.value).startswith("Cannot use audio <")


def test_output_rate_must_be_positive():
    with pytest.raises(ValueError, match="`sampling_rate` must be a positive integer"):
        load_audio(np.zeros(10, dtype=np.float32), sampling_rate=0, source_sampling_rate=RATE)


# Timed windows


@pytest.mark.parametrize(
    ("seconds", "hop_s", "min_tail_s", "expected"),
    [
        (0.2, None, 3.0, [(0.0, 0.2)]),  # shorter than one window: one window, repeat-padded later
        (10.0, None, 3.0, [(0.0, 10.0)]),
        (10.5, None, 3.0, [(0.0, 10.5)]),  # tiny tail merged
        (13.0, None, 3.0, [(0.0, 10.0), (3.0, 13.0)]),  # tail of min_tail_s: own window, aligned to the end
        (30.0, None, 3.0, [(0.0, 10.0), (10.0, 20.0), (20.0, 30.0)]),
        (32.9, None, 3.0, [(0.0, 10.0), (10.0, 20.0), (20.0, 32.9)]),
        (33.0, None, 3.0, [(0.0, 10.0), (10.0, 20.0), (20.0, 30.0), (23.0, 33.0)]),
        (23.0, 5.0, 3.0, [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0), (13.0, 23.0)]),
        (22.0, 5.0, 3.0, [(0.0, 10.0), (5.0, 15.0), (10.0, 22.0)]),
        (10.5, None, 0.0, [(0.0, 10.0), (0.5, 10.5)]),  # min_tail_s=0: every remainder gets a full window
    ],
)
def test_window_rule(seconds, hop_s, min_tail_s, expected):
    rate = 100
    bounds = window_bounds(int(round(seconds * rate)), rate, 10.0, hop_s, min_tail_s)
    assert bounds == [(round(start * rate), round(end * rate)) for start, end in expected]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window_s": 0.0}, "`window_s` must be a positive"),
        ({"hop_s": 11.0}, r"`hop_s` must be in \(0, window_s=10.0\]"),
        ({"hop_s": 0.0}, "`hop_s` must be in"),
        ({"min_tail_s": -1.0}, "`min_tail_s` must be"),
    ],
)
def test_window_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        window_bounds(1000, 100, **kwargs)
    with pytest.raises(ValueError, match=message):
        iter_windows(np.zeros(1000, dtype=np.float32), 100, source_sampling_rate=100, **kwargs)


def test_95_second_track_windows_and_timestamps():
    waveform = music_like(95.0, RATE)
    windows = split_windows(waveform, RATE)
    expected = [(10.0 * k, 10.0 * k + 10.0) for k in range(9)] + [(85.0, 95.0)]
    assert [(w.start_s, w.end_s) for w in windows] == expected
    for window in windows:
        start = int(round(window.start_s * RATE))
        assert window.samples.shape == (480_000,)
        np.testing.assert_array_equal(window.samples, waveform[start : start + 480_000])
    features = BlapFeatureExtractor()([w.samples for w in windows], sampling_rate=RATE)["input_features"]
    assert features.shape == (10, 1, 1001, 64)


def test_merged_tail_window_is_cut_to_one_model_window_by_the_feature_extractor():
    waveform = music_like(22.0, RATE)
    windows = split_windows(waveform, RATE)
    assert [(w.start_s, w.end_s) for w in windows] == [(0.0, 10.0), (10.0, 22.0)]
    assert windows[-1].samples.shape == (12 * RATE,)
    feature_extractor = BlapFeatureExtractor()
    merged = feature_extractor(windows[-1].samples, sampling_rate=RATE)["input_features"]
    first_ten = feature_extractor(waveform[10 * RATE : 20 * RATE], sampling_rate=RATE)["input_features"]
    torch.testing.assert_close(merged, first_ten, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("seconds", "rate", "hop_s"), [(95.0, 44_100, None), (92.0, 22_050, None), (27.0, 48_000, 4.0)]
)
def test_streaming_windows_equal_in_memory_windows(tmp_path, seconds, rate, hop_s):
    path = tmp_path / "track.flac"
    sf.write(path, music_like(seconds, rate, channels=2), rate, subtype="PCM_24")
    streamed = list(iter_windows(path, hop_s=hop_s))
    in_memory = split_windows(load_audio(path), RATE, hop_s=hop_s)
    assert [(w.start_s, w.end_s) for w in streamed] == [(w.start_s, w.end_s) for w in in_memory]
    assert streamed[-1].end_s == pytest.approx(seconds)
    for a, b in zip(streamed, in_memory, strict=True):
        np.testing.assert_array_equal(a.samples, b.samples)


def test_streaming_through_pyav_equals_in_memory(tmp_path):
    path = tmp_path / "track.m4a"
    encode_with_pyav(path, music_like(25.0, 44_100), 44_100, "ipod", "aac")
    streamed = list(iter_windows(path))
    in_memory = split_windows(load_audio(path), RATE)
    assert len(streamed) == len(in_memory) == 3
    for a, b in zip(streamed, in_memory, strict=True):
        assert (a.start_s, a.end_s) == (b.start_s, b.end_s)
        np.testing.assert_array_equal(a.samples, b.samples)


class CountingReader(io.RawIOBase):
    """A seekable binary file that remembers the furthest byte read."""

    def __init__(self, data: bytes):
        self._data = io.BytesIO(data)
        self.furthest = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self._data.readinto(buffer)
        self.furthest = max(self.furthest, self._data.tell())
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._data.seek(offset, whence)

    def tell(self) -> int:
        return self._data.tell()


def test_streaming_reads_the_file_progressively(tmp_path):
    buffer = io.BytesIO()
    sf.write(buffer, music_like(95.0, 44_100), 44_100, format="WAV", subtype="PCM_16")
    data = buffer.getvalue()
    reader = CountingReader(data)
    windows = iter_windows(reader)
    first = next(windows)
    assert (first.start_s, first.end_s) == (0.0, 10.0)
    assert reader.furthest < len(data) / 4  # the first window came before most of the file was read
    assert len(list(windows)) == 9


# Whole-track caption


def test_track_caption_with_scores_takes_the_best_scored_window():
    captions = ["a quiet intro", "an energetic rock song with drums", "a rock song with guitars", "applause"]
    assert track_caption_index(captions, scores=[-2.0, -0.5, -0.9, -1.5]) == 1
    assert select_track_caption(captions, scores=[-2.0, -0.5, -0.9, -1.5]) == captions[1]
    # ties go to the window nearest the middle of the track, then to the earlier one
    assert track_caption_index(["a", "b", "c", "d", "e"], scores=[1.0, 1.0, 0.0, 1.0, 1.0]) == 1
    assert track_caption_index(["a", "b", "c"], scores=[1.0, 1.0, 1.0]) == 1


def test_track_caption_without_scores_takes_the_consensus():
    captions = [
        "silence and noise",
        "an upbeat rock song with electric guitars and drums",
        "a rock song with loud electric guitars and drums",
        "a rock song with drums and a male voice",
        "crowd applause",
    ]
    assert select_track_caption(captions) == captions[2]
    assert select_track_caption(["only one window"]) == "only one window"
    assert track_caption_index(["same", "same", "same"]) == 1


def test_track_caption_rule_rejects_bad_input():
    with pytest.raises(ValueError, match="`window_captions` is empty"):
        track_caption_index([])
    with pytest.raises(ValueError, match="`scores` has 1 entries but there are 2 window captions"):
        track_caption_index(["a", "b"], scores=[0.0])
    with pytest.raises(ValueError, match="`scores` must be finite"):
        track_caption_index(["a", "b"], scores=[0.0, float("nan")])
