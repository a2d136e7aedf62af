"""BlapFeatureExtractor: parity with the original front end, policies, determinism, devices, any finite input."""

import threading

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from transformers_blap.audio import load_audio, resample
from transformers_blap.feature_extraction_blap import BlapFeatureExtractor

RATE = 48_000
WINDOW = 480_000


@pytest.fixture(scope="module")
def feature_extractor() -> BlapFeatureExtractor:
    return BlapFeatureExtractor()


def noise(seconds: float, rate: int = RATE, seed: int = 0, amplitude: float = 0.1) -> np.ndarray:
    return (amplitude * np.random.default_rng(seed).standard_normal(int(round(seconds * rate)))).astype(np.float32)


def test_matches_the_original_front_end_on_the_fixture(fixture_dir, feature_extractor):
    reference = load_file(fixture_dir / "reference_outputs.safetensors")["log_mel"]
    paths = [fixture_dir / "audio" / f"clip{i}.wav" for i in range(2)]
    clips = [sf.read(path, dtype="float32")[0] for path in paths]
    features = feature_extractor(clips, sampling_rate=RATE)["input_features"]
    assert features.shape == reference.shape == (2, 1, 1001, 64)
    assert (features - reference).abs().max().item() < 1e-3
    # the same through the audio module, and through the batched (accelerator) code path
    loaded = feature_extractor([load_audio(path) for path in paths], sampling_rate=RATE)["input_features"]
    torch.testing.assert_close(loaded, features, rtol=0, atol=0)
    batched = feature_extractor._log_mel(
        torch.from_numpy(np.stack(clips)), feature_extractor.mel_projection
    ).unsqueeze(1)
    assert (batched - reference).abs().max().item() < 1e-3


def test_deterministic_and_independent_of_the_batch(feature_extractor):
    clips = [noise(10.0, seed=0), noise(3.0, seed=1), noise(25.0, seed=2)]
    first = feature_extractor(clips, sampling_rate=RATE)["input_features"]
    again = feature_extractor(clips, sampling_rate=RATE)["input_features"]
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    for index, clip in enumerate(clips):
        alone = feature_extractor(clip, sampling_rate=RATE)["input_features"]
        torch.testing.assert_close(alone[0], first[index], rtol=0, atol=0)


def test_short_audio_is_repeat_padded(feature_extractor):
    clip = noise(3.0)
    padded = np.concatenate([clip, clip, clip, np.zeros(WINDOW - 3 * clip.shape[0], dtype=np.float32)])
    torch.testing.assert_close(
        feature_extractor(clip, sampling_rate=RATE)["input_features"],
        feature_extractor(padded, sampling_rate=RATE)["input_features"],
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize(("policy", "start"), [("first", 0), ("center", (25 * RATE - WINDOW) // 2)])
def test_long_audio_keeps_one_window(policy, start):
    clip = noise(25.0)
    feature_extractor = BlapFeatureExtractor(long_audio=policy)
    torch.testing.assert_close(
        feature_extractor(clip, sampling_rate=RATE)["input_features"],
        feature_extractor(clip[start : start + WINDOW], sampling_rate=RATE)["input_features"],
        rtol=0,
        atol=0,
    )


def test_unknown_long_audio_policy():
    with pytest.raises(ValueError, match="`long_audio` must be one of"):
        BlapFeatureExtractor(long_audio="random")


def test_audio_at_another_rate_is_resampled_when_the_rate_is_given(feature_extractor):
    clip = noise(4.0, rate=44_100)
    features = feature_extractor(clip, sampling_rate=44_100)["input_features"]
    expected = feature_extractor(resample(clip, 44_100, RATE), sampling_rate=RATE)["input_features"]
    torch.testing.assert_close(features, expected, rtol=0, atol=0)


def test_device_option_and_numpy_output(feature_extractor):
    clip = noise(10.0)
    default = feature_extractor(clip, sampling_rate=RATE)["input_features"]
    on_cpu = feature_extractor(torch.from_numpy(clip), sampling_rate=RATE, device=torch.device("cpu"))
    assert on_cpu["input_features"].device.type == "cpu"
    torch.testing.assert_close(on_cpu["input_features"], default, rtol=0, atol=0)
    as_numpy = feature_extractor(clip, sampling_rate=RATE, device="cpu", return_tensors="np")["input_features"]
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32
    np.testing.assert_array_equal(as_numpy, default.numpy())


def test_worker_threads_leave_torch_thread_settings_alone(feature_extractor):
    threads = torch.get_num_threads()
    feature_extractor([noise(10.0, seed=seed) for seed in range(4)], sampling_rate=RATE)
    assert torch.get_num_threads() == threads
    seen_by_a_new_thread = []
    worker = threading.Thread(target=lambda: seen_by_a_new_thread.append(torch.get_num_threads()))
    worker.start()
    worker.join()
    assert seen_by_a_new_thread == [threads]


def test_batched_path_equals_the_per_window_path(feature_extractor):
    """Accelerators compute the whole batch at once; it must give what the CPU path gives window by window."""
    batch = torch.from_numpy(np.stack([noise(10.0, seed=seed) for seed in range(3)]))
    per_window = feature_extractor.log_mel(batch)
    batched = feature_extractor._log_mel(batch, feature_extractor.mel_projection).unsqueeze(1)
    torch.testing.assert_close(batched, per_window, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"feature_size": 16, "sampling_rate": 16_000, "hop_length": 160, "fft_window_size": 400, "frequency_max": 8e3},
    ],
)
def test_log_mel_equals_the_textbook_stft_definition(config):
    """Reflect-padded centred STFT, power, mel matmul, dB: the definition, computed plainly with torch.stft."""
    feature_extractor = BlapFeatureExtractor(**config)
    batch = torch.from_numpy(np.stack([noise(1.3, feature_extractor.sampling_rate, seed) for seed in range(2)]))
    n_fft = feature_extractor.fft_window_size
    spectrum = torch.stft(
        batch,
        n_fft,
        feature_extractor.hop_length,
        window=torch.hann_window(n_fft),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    mel = torch.matmul(spectrum.abs().square().transpose(1, 2), feature_extractor.mel_filters)
    expected = (10.0 * torch.log10(torch.clamp(mel, min=1e-10))).unsqueeze(1)
    torch.testing.assert_close(feature_extractor.log_mel(batch), expected, rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match=f"num_samples > {n_fft // 2}"):
        feature_extractor.log_mel(batch[:, : n_fft // 2])


def test_huge_finite_samples_give_finite_features(feature_extractor):
    clip = noise(10.0)
    features = feature_extractor(clip, sampling_rate=RATE)["input_features"]
    scaled = feature_extractor(clip * np.float32(1e25), sampling_rate=RATE)["input_features"]
    assert torch.isfinite(scaled).all()
    # scaling the waveform by 1e25 shifts every (unclamped) value by 500 dB
    torch.testing.assert_close(scaled, features + 500.0, rtol=0, atol=2e-3)


def test_float64_beyond_float32_range_gives_finite_features(feature_extractor):
    clip = noise(1.0)
    features = feature_extractor(clip.astype(np.float64) * 1e300, sampling_rate=RATE)["input_features"]
    expected = feature_extractor(clip, sampling_rate=RATE)["input_features"] + 6000.0  # power scaled by 1e600
    assert torch.isfinite(features).all()
    torch.testing.assert_close(features, expected, rtol=0, atol=2e-2)


def test_save_and_load_round_trip(tmp_path):
    feature_extractor = BlapFeatureExtractor(long_audio="center")
    feature_extractor(noise(1.0), sampling_rate=RATE)  # fills the cached filter banks
    feature_extractor.save_pretrained(tmp_path)
    loaded = BlapFeatureExtractor.from_pretrained(tmp_path)
    assert loaded.to_dict() == feature_extractor.to_dict()
    assert "_mel_filters" not in loaded.to_dict() and "_mel_projection" not in loaded.to_dict()


@pytest.mark.parametrize(
    ("raw_audio", "kwargs", "error", "message"),
    [
        (np.zeros(0, dtype=np.float32), {}, ValueError, "Waveform 0 is empty"),
        ([noise(1.0), np.array([0.0, np.nan], dtype=np.float32)], {}, ValueError, "Waveform 1 contains NaN or Inf"),
        (np.array([0.0, -np.inf], dtype=np.float32), {}, ValueError, "NaN or Inf"),
        (np.zeros(100, dtype=np.int16), {}, ValueError, "dtype torch.int16; pass float audio"),
        (np.zeros((2, 2, 100), dtype=np.float32), {}, ValueError, "must be 1-D"),
        ([], {}, ValueError, "empty list"),
        ("clip.wav", {}, TypeError, "`raw_audio` must be a numpy array"),
        (np.zeros(100, dtype=np.float32), {"sampling_rate": 0}, ValueError, "positive integer in Hz, got 0"),
        (np.zeros(100, dtype=np.float32), {"return_tensors": "tf"}, ValueError, "`return_tensors` must be"),
    ],
)
def test_bad_input_raises_a_clear_error(feature_extractor, raw_audio, kwargs, error, message):
    kwargs = {"sampling_rate": RATE, **kwargs}
    with pytest.raises(error, match=message):
        feature_extractor(raw_audio, **kwargs)


@st.composite
def waveforms(draw) -> tuple[np.ndarray, int]:
    """Any finite waveform of 0.1-30 s at 8-96 kHz: noise, a tone, silence, a click or a constant, any level."""
    rate = draw(st.integers(8_000, 96_000))
    length = int(draw(st.floats(0.1, 30.0)) * rate)
    kind = draw(st.sampled_from(["noise", "tone", "silence", "click", "constant"]))
    amplitude = draw(st.sampled_from([0.0, 1e-30, 1e-6, 0.5, 1.0, 3e4, 1e20, 3e38]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "noise":
        signal = rng.uniform(-1.0, 1.0, length)
    elif kind == "tone":
        signal = np.sin(2 * np.pi * draw(st.floats(20.0, rate / 2)) * np.arange(length) / rate)
    elif kind == "click":
        signal = np.zeros(length)
        signal[rng.integers(length)] = 1.0
    else:
        signal = np.full(length, 0.0 if kind == "silence" else 1.0)
    return (amplitude * signal).astype(np.float32), rate


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(waveforms())
@example((np.float32(3e38) * np.sign(noise(2.0, rate=44_100)), 44_100))  # full-scale float32, resampled
@example((np.float32(1e-30) * noise(0.1, rate=8_000), 8_000))
@example((np.zeros(int(0.1 * 96_000), dtype=np.float32), 96_000))
def test_any_finite_waveform_gives_finite_features_of_the_expected_shape(feature_extractor, waveform_and_rate):
    waveform, rate = waveform_and_rate
    assert np.isfinite(waveform).all()
    features = feature_extractor(waveform, sampling_rate=rate)["input_features"]
    assert features.shape == (1, 1, 1001, 64)
    assert torch.isfinite(features).all()


def test_features_under_inference_mode_equal_plain_features():
    # The CPU workers run in other threads; they must follow the caller's inference mode.
    extractor = BlapFeatureExtractor()
    waveforms = [np.sin(np.linspace(0, 2_000, 48_000 * (i + 1))).astype(np.float32) for i in range(3)]
    plain = extractor(waveforms, sampling_rate=48_000)["input_features"]
    with torch.inference_mode():
        inferred = extractor(waveforms, sampling_rate=48_000)["input_features"]
    assert torch.equal(plain, inferred)
