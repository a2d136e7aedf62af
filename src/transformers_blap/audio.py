"""
Audio input for BLAP: decode anything to mono float32 at the model's rate, and cut long tracks into timed windows.

Policies (also in the README):

- **Decoding.** Files, bytes and file objects are read with soundfile (libsndfile: WAV, FLAC, OGG/Vorbis/Opus, MP3,
  AIFF, ...) and, when libsndfile does not know the container, with PyAV (FFmpeg: M4A/AAC, WebM, MP4 audio, ...).
- **Sample rate.** Audio is resampled with soxr ("HQ") to the requested rate. Raw arrays and tensors carry no rate, so
  `source_sampling_rate` is required for them: nothing is silently assumed.
- **Channels.** Multichannel audio is downmixed to mono by averaging the channels.
- **Integer PCM.** Integer samples are scaled to [-1, 1] (int16 / 2**15, int32 / 2**31, uint8 centred at 128, ...).
- **Long tracks.** `iter_windows` decodes and resamples block by block and yields `window_s` windows every `hop_s`
  seconds, so a long file never sits whole in memory; `split_windows` does the same for an in-memory waveform. A
  remainder of at least `min_tail_s` after the last full window gets its own window, aligned to end at the track's end
  (so it is `window_s` of real audio, never a repeat-padded scrap); a shorter remainder is merged into the last window,
  which then runs up to `min_tail_s` longer than `window_s`. A track no longer than one window is one window.
- **Bad input.** Missing files, empty files, non-audio data, unknown containers, streams without audio, fragments too
  short to decode, truncated files, sample rate 0, empty audio and NaN/Inf samples raise `AudioDecodeError` (a
  `ValueError`) with one line naming the input and the cause.
- **Silence.** Audio whose peak stays below `SILENCE_PEAK_DBFS` (-60 dBFS, i.e. |sample| < 0.001) is valid input;
  the pipeline and `blap caption` flag it `"silent"` in their output.

This module imports only the standard library, numpy, torch, soundfile and soxr (PyAV lazily, for containers
libsndfile cannot read), so it can ship as Hub remote code beside the feature extractor.
"""

import io
import os
import re
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import soundfile
import soxr
import torch

DEFAULT_SAMPLING_RATE = 48_000
"""BLAP's audio rate in Hz."""
DEFAULT_WINDOW_S = 10.0
"""BLAP's window in seconds (480,000 samples at 48 kHz)."""
DEFAULT_MIN_TAIL_S = 3.0
"""A remainder shorter than this after the last full window is merged into it instead of getting its own window."""
SILENCE_PEAK_DBFS = -60.0
"""Audio whose peak |sample| stays below this level (dB relative to full scale: 0.001) is flagged "silent"."""
RESAMPLE_QUALITY = "HQ"
"""soxr quality recipe used for every resampling."""

_BLOCK_FRAMES = 1 << 17  # frames read per block when streaming with soundfile (2.7 s at 48 kHz)
_FRAGMENT_BYTES = 16_384  # undecodable data of a known format shorter than this is called "too short to decode"
_AUDIO_MAGIC = {
    b"RIFF": "a WAV file",
    b"RF64": "a WAV file",
    b"fLaC": "a FLAC file",
    b"OggS": "an OGG file",
    b"ID3": "an MP3 file",
    b"FORM": "an AIFF file",
}
_MAX_CHANNELS = 64  # a 2-D array with more entries than this on both axes is not (samples, channels) audio
_INTEGER_SCALE = {
    np.dtype(np.int8): (0.0, 2.0**7),
    np.dtype(np.uint8): (128.0, 2.0**7),
    np.dtype(np.int16): (0.0, 2.0**15),
    np.dtype(np.uint16): (2.0**15, 2.0**15),
    np.dtype(np.int32): (0.0, 2.0**31),
    np.dtype(np.uint32): (2.0**31, 2.0**31),
    np.dtype(np.int64): (0.0, 2.0**63),
}


class AudioDecodeError(ValueError):
    """
    An audio input could not be turned into samples. The message names the input and the cause.

    Args:
        source_name (`str`): how the input is named in messages (a path, `"<bytes>"`, `"<numpy array ...>"`, ...).
        reason (`str`): what is wrong and, where useful, what was expected.
    """

    def __init__(self, source_name: str, reason: str):
        super().__init__(f"Cannot use audio {source_name}: {reason}")
        self.source_name = source_name
        self.reason = reason


@dataclass(frozen=True)
class AudioWindow:
    """
    One window of a track.

    Attributes:
        start_s (`float`): where `samples` begin in the track, in seconds.
        end_s (`float`): where `samples` end in the track, in seconds.
        samples (`np.ndarray` of shape `(num_samples,)`): mono float32 audio of `[start_s, end_s)`. Usually exactly
            one window (`window_s`); shorter when the whole track is shorter than a window (the feature extractor
            repeat-pads it); up to `min_tail_s` longer when a short remainder was merged into the last window (the
            feature extractor keeps one model window of it, by its `long_audio` policy).
    """

    start_s: float
    end_s: float
    samples: np.ndarray


def load_audio(
    source: Any,
    sampling_rate: int = DEFAULT_SAMPLING_RATE,
    *,
    source_sampling_rate: int | None = None,
    start_s: float | None = None,
    duration_s: float | None = None,
) -> np.ndarray:
    """
    Decode, downmix and resample audio to mono float32 at `sampling_rate`.

    Args:
        source: a path (`str` or `Path`), encoded bytes, a binary file object, a numpy array or torch tensor of
            samples (`(num_samples,)`, `(num_samples, channels)` or `(channels, num_samples)`: the shorter axis is
            taken as channels), a `datasets` Audio value (`{"array", "sampling_rate"}` or `{"bytes", "path"}`), or a
            decoder object with `get_all_samples()` (what `datasets` 5.x yields).
        sampling_rate (`int`, *optional*, defaults to 48000): the rate of the returned samples.
        source_sampling_rate (`int`, *optional*): the rate of an array or tensor `source`, required for them; leave it
            `None` for encoded audio and `datasets` values, which state their own rate.
        start_s (`float`, *optional*): where to start reading, in seconds of the source (libsndfile seeks; FFmpeg
            containers are decoded from their start and counted, which is sample-accurate but slower for late starts).
        duration_s (`float`, *optional*): how much to read, in seconds; to the end when `None`.

    Returns:
        `np.ndarray` of shape `(num_samples,)`, float32, at `sampling_rate`.

    Raises:
        AudioDecodeError: the input cannot be decoded, is empty, has NaN/Inf samples or an invalid sample rate.
    """
    _check_rate(sampling_rate, "`sampling_rate`", "the requested output")
    name = _describe(source)
    _check_range(name, start_s, duration_s)
    samples = _in_memory_samples(source, name, source_sampling_rate)
    if samples is not None:
        waveform, rate = samples
        first = 0 if start_s is None else int(round(start_s * rate))
        last = None if duration_s is None else first + int(round(duration_s * rate))
        waveform = waveform[first:last]
        if waveform.size == 0:
            raise AudioDecodeError(name, _empty_reason(start_s, duration_s))
        return resample(waveform, rate, sampling_rate)
    with _open_encoded(source, name) as reader:
        blocks = _resampled_blocks(reader.blocks(start_s, duration_s), reader.sampling_rate, sampling_rate)
        parts = list(blocks)
    waveform = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    if waveform.size == 0:
        raise AudioDecodeError(name, _empty_reason(start_s, duration_s))
    return waveform


def audio_duration(source: Any, *, source_sampling_rate: int | None = None) -> float:
    """
    Duration of a track in seconds, read from the header where there is one (nothing is decoded for WAV, FLAC, OGG,
    MP3 with a Xing/LAME header, or an FFmpeg container that states its duration; other inputs are decoded block by
    block and counted, never held whole).

    Args:
        source: anything `load_audio` accepts.
        source_sampling_rate (`int`, *optional*): the rate of an array or tensor `source` (required for them).

    Returns:
        `float`: the duration in seconds.
    """
    name = _describe(source)
    samples = _in_memory_samples(source, name, source_sampling_rate)
    if samples is not None:
        waveform, rate = samples
        return waveform.shape[0] / rate
    with _open_encoded(source, name) as reader:
        if reader.num_frames is not None:
            return reader.num_frames / reader.sampling_rate
        return sum(block.shape[0] for block in reader.blocks(None, None)) / reader.sampling_rate


def resample(waveform: np.ndarray, orig_sampling_rate: int, target_sampling_rate: int) -> np.ndarray:
    """
    Resample mono audio with soxr (`RESAMPLE_QUALITY`).

    Args:
        waveform (`np.ndarray` of shape `(num_samples,)`): float audio.
        orig_sampling_rate (`int`): its rate in Hz.
        target_sampling_rate (`int`): the wanted rate in Hz.

    Returns:
        `np.ndarray` of shape `(round(num_samples * target / orig),)`, float32.
    """
    _check_rate(orig_sampling_rate, "`orig_sampling_rate`", "the waveform")
    _check_rate(target_sampling_rate, "`target_sampling_rate`", "the requested output")
    waveform = np.ascontiguousarray(waveform, dtype=np.float32)
    if orig_sampling_rate == target_sampling_rate:
        return waveform
    return soxr.resample(waveform, orig_sampling_rate, target_sampling_rate, quality=RESAMPLE_QUALITY)


def window_bounds(
    num_samples: int,
    sampling_rate: int,
    window_s: float = DEFAULT_WINDOW_S,
    hop_s: float | None = None,
    min_tail_s: float = DEFAULT_MIN_TAIL_S,
) -> list[tuple[int, int]]:
    """
    Where the windows of a track lie, in samples. The rule (shared by `split_windows` and `iter_windows`):

    - a track of at most `window_s` is one window, `(0, num_samples)`;
    - otherwise windows `[k * hop, k * hop + window)` for every `k` whose window fits in the track;
    - a remainder `r` after the last of them: nothing if `r == 0`; if `r >= min_tail_s`, one more window that ends at
      the track's end, `(num_samples - window, num_samples)` (it overlaps the one before; every sample is covered by a
      full window of real audio); if `r < min_tail_s`, the last window is extended to the track's end (a short tail
      alone would be repeat-padded and captioners invent content for it).

    Args:
        num_samples (`int`): length of the track in samples.
        sampling_rate (`int`): its rate in Hz.
        window_s (`float`, *optional*, defaults to 10.0): window length in seconds.
        hop_s (`float`, *optional*): distance between window starts, `0 < hop_s <= window_s`; defaults to `window_s`.
        min_tail_s (`float`, *optional*, defaults to 3.0): the shortest remainder that gets its own window.

    Returns:
        `list[tuple[int, int]]`: `(start, end)` sample indices, in order of `start`.
    """
    window, hop, min_tail = _window_params(sampling_rate, window_s, hop_s, min_tail_s)
    if num_samples <= 0:
        raise ValueError(f"`num_samples` must be positive, got {num_samples}.")
    if num_samples <= window:
        return [(0, num_samples)]
    count = (num_samples - window) // hop + 1
    bounds = [(k * hop, k * hop + window) for k in range(count)]
    remainder = num_samples - bounds[-1][1]
    if remainder >= min_tail and remainder > 0:
        bounds.append((num_samples - window, num_samples))
    elif remainder > 0:
        bounds[-1] = (bounds[-1][0], num_samples)
    return bounds


def split_windows(
    waveform: np.ndarray,
    sampling_rate: int,
    window_s: float = DEFAULT_WINDOW_S,
    hop_s: float | None = None,
    min_tail_s: float = DEFAULT_MIN_TAIL_S,
) -> list[AudioWindow]:
    """
    Cut an in-memory mono waveform into timed windows by the rule of `window_bounds`.

    Args:
        waveform (`np.ndarray` of shape `(num_samples,)`): mono audio at `sampling_rate` (e.g. from `load_audio`).
        sampling_rate (`int`): its rate in Hz.
        window_s, hop_s, min_tail_s: see `window_bounds`.

    Returns:
        `list[AudioWindow]` whose `samples` are views of `waveform`.
    """
    waveform = np.asarray(waveform)
    if waveform.ndim != 1:
        raise ValueError(f"`waveform` must be 1-D mono audio (num_samples,), got shape {waveform.shape}.")
    if waveform.size == 0:
        raise AudioDecodeError(_describe(waveform), "it has no samples.")
    bounds = window_bounds(waveform.shape[0], sampling_rate, window_s, hop_s, min_tail_s)
    return [AudioWindow(start / sampling_rate, end / sampling_rate, waveform[start:end]) for start, end in bounds]


def iter_windows(
    source: Any,
    sampling_rate: int = DEFAULT_SAMPLING_RATE,
    *,
    window_s: float = DEFAULT_WINDOW_S,
    hop_s: float | None = None,
    min_tail_s: float = DEFAULT_MIN_TAIL_S,
    source_sampling_rate: int | None = None,
) -> Iterator[AudioWindow]:
    """
    Stream the windows of a track (rule of `window_bounds`) at `sampling_rate`.

    Encoded sources are decoded block by block and resampled incrementally (soxr stream, same output as one-shot
    resampling); at most about `hop_s + window_s + min_tail_s` seconds plus one block are held at a time, so an
    hour-long file never sits whole in memory. Windows are yielded as soon as they are known not to be the last one.
    Arrays and tensors are resampled whole and split.

    Args:
        source: anything `load_audio` accepts.
        sampling_rate (`int`, *optional*, defaults to 48000): the rate of the windows' samples.
        window_s, hop_s, min_tail_s: see `window_bounds`.
        source_sampling_rate (`int`, *optional*): the rate of an array or tensor `source` (required for them).

    Returns:
        `Iterator[AudioWindow]`, in order of `start_s`; the windows equal `split_windows(load_audio(source), ...)`.
        Settings and in-memory inputs are checked at the call; files are opened at the first `next`.

    Raises:
        AudioDecodeError: as `load_audio`. A file found to be truncated or corrupt partway raises when it is reached,
            after the windows before it were yielded.
    """
    _check_rate(sampling_rate, "`sampling_rate`", "the requested output")
    _window_params(sampling_rate, window_s, hop_s, min_tail_s)  # bad settings fail here, not at the first window
    name = _describe(source)
    samples = _in_memory_samples(source, name, source_sampling_rate)
    if samples is not None:
        waveform = resample(samples[0], samples[1], sampling_rate)
        return iter(split_windows(waveform, sampling_rate, window_s, hop_s, min_tail_s))
    return _stream_windows(source, name, sampling_rate, window_s, hop_s, min_tail_s)


def _stream_windows(
    source: Any, name: str, sampling_rate: int, window_s: float, hop_s: float | None, min_tail_s: float
) -> Iterator[AudioWindow]:
    """The streaming half of `iter_windows`: decode, resample and window block by block."""
    window, hop, _ = _window_params(sampling_rate, window_s, hop_s, min_tail_s)
    with _open_encoded(source, name) as reader:
        blocks = _resampled_blocks(reader.blocks(None, None), reader.sampling_rate, sampling_rate)
        buffer = np.zeros(0, dtype=np.float32)
        buffer_start = 0  # track position of buffer[0], in samples at `sampling_rate`
        index = 0  # next window to yield
        for block in blocks:
            buffer = np.concatenate([buffer, block])
            # Window `index` is a plain grid window once window `index + 1` fits: it cannot be the last one.
            while buffer_start + buffer.shape[0] >= (index + 1) * hop + window:
                start = index * hop
                yield _window_from(buffer, buffer_start, start, start + window, sampling_rate)
                index += 1
                drop = index * hop - buffer_start
                buffer, buffer_start = buffer[drop:], buffer_start + drop
        total = buffer_start + buffer.shape[0]
        if total == 0:
            raise AudioDecodeError(name, "it contains no audio samples.")
        for start, end in window_bounds(total, sampling_rate, window_s, hop_s, min_tail_s)[index:]:
            yield _window_from(buffer, buffer_start, start, end, sampling_rate)


def track_caption_index(window_captions: Sequence[str], scores: Sequence[float] | None = None) -> int:
    """
    Which window's caption stands for the whole track. The rule:

    - with `scores` (one per window, higher is better, e.g. the mean log-probability per token that beam search
      reports as `sequences_scores`): the window with the highest score;
    - without: the consensus caption, the one whose words overlap most with the other windows' captions (mean
      Jaccard similarity of lower-cased word sets), so that an odd window (intro, silence, a break) does not speak for
      the track;
    - ties go to the window nearest the middle of the track, then to the earlier one.

    Args:
        window_captions (`Sequence[str]`): one caption per window, in track order.
        scores (`Sequence[float]`, *optional*): one finite score per window.

    Returns:
        `int`: an index into `window_captions`.
    """
    count = len(window_captions)
    if count == 0:
        raise ValueError("`window_captions` is empty: a track has at least one window.")
    if scores is not None:
        values = [float(score) for score in scores]
        if len(values) != count:
            raise ValueError(f"`scores` has {len(values)} entries but there are {count} window captions.")
        if not all(np.isfinite(values)):
            raise ValueError(f"`scores` must be finite, got {values}.")
    else:
        words = [set(re.findall(r"[a-z0-9']+", caption.lower())) for caption in window_captions]
        values = []
        for i in range(count):
            similarities = [_jaccard(words[i], words[j]) for j in range(count) if j != i]
            values.append(sum(similarities) / len(similarities) if similarities else 0.0)
    middle = (count - 1) / 2
    return max(range(count), key=lambda i: (values[i], -abs(i - middle), -i))


def select_track_caption(window_captions: Sequence[str], scores: Sequence[float] | None = None) -> str:
    """
    The caption that stands for the whole track: `window_captions[track_caption_index(window_captions, scores)]`.

    Args:
        window_captions (`Sequence[str]`): one caption per window, in track order.
        scores (`Sequence[float]`, *optional*): one score per window, higher is better.

    Returns:
        `str`: one of `window_captions`.
    """
    return window_captions[track_caption_index(window_captions, scores)]


def _describe(source: Any) -> str:
    """How `source` is named in error messages."""
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<numpy array of shape {source.shape}, {source.dtype}>"
    if isinstance(source, torch.Tensor):
        return f"<torch tensor of shape {tuple(source.shape)}, {source.dtype}>"
    if isinstance(source, dict):
        path = source.get("path")
        return f"<datasets Audio value {path!r}>" if path else "<datasets Audio value>"
    if hasattr(source, "read"):
        file_name = getattr(source, "name", None)
        return repr(file_name) if isinstance(file_name, str) else "<file object>"
    return f"<{type(source).__name__}>"


def _check_rate(rate: Any, what: str, of: str) -> None:
    """A sample rate must be a positive integer number of Hz."""
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise ValueError(f"{what} must be a positive integer in Hz (the rate of {of}), got {rate!r}.")


def _check_range(name: str, start_s: float | None, duration_s: float | None) -> None:
    if start_s is not None and not (np.isfinite(start_s) and start_s >= 0):
        raise AudioDecodeError(name, f"`start_s` must be a finite number of seconds >= 0, got {start_s!r}.")
    if duration_s is not None and not (np.isfinite(duration_s) and duration_s > 0):
        raise AudioDecodeError(name, f"`duration_s` must be a finite number of seconds > 0, got {duration_s!r}.")


def _empty_reason(start_s: float | None, duration_s: float | None) -> str:
    if start_s is None and duration_s is None:
        return "it contains no audio samples."
    return f"no audio samples in the requested range (start_s={start_s}, duration_s={duration_s})."


def _in_memory_samples(source: Any, name: str, source_sampling_rate: int | None) -> tuple[np.ndarray, int] | None:
    """`(mono float32 waveform, rate)` for arrays, tensors and decoded `datasets` values; `None` for encoded audio."""
    if isinstance(source, dict):
        if source.get("array") is not None:
            if source_sampling_rate is not None:
                raise AudioDecodeError(
                    name, "the value carries its own `sampling_rate`; do not pass `source_sampling_rate`."
                )
            array, rate = source["array"], source.get("sampling_rate")
            return _mono_float32(array, name, channels_first=None), _source_rate(rate, name, "its `sampling_rate`")
        if source.get("bytes") is None and source.get("path") is None:
            raise AudioDecodeError(name, "a dict must hold `array` and `sampling_rate`, or `bytes` and/or `path`.")
        return None
    if hasattr(source, "get_all_samples"):  # a decoder object as yielded by `datasets` 5.x (torchcodec)
        decoded = source.get_all_samples()
        rate = _source_rate(decoded.sample_rate, name, "its `sample_rate`")
        return _mono_float32(decoded.data, name, channels_first=True), rate
    if isinstance(source, (np.ndarray, torch.Tensor)):
        if source_sampling_rate is None:
            raise AudioDecodeError(
                name,
                "raw samples carry no sample rate: pass `source_sampling_rate` (in Hz) so that nothing is silently"
                " resampled wrong.",
            )
        rate = _source_rate(source_sampling_rate, name, "`source_sampling_rate`")
        return _mono_float32(source, name, channels_first=None), rate
    if source_sampling_rate is not None:
        raise AudioDecodeError(name, "encoded audio states its own rate; `source_sampling_rate` is only for arrays.")
    return None


def _source_rate(rate: Any, name: str, what: str) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise AudioDecodeError(name, f"{what} must be a positive integer sample rate in Hz, got {rate!r}.")
    return int(rate)


def _mono_float32(array: Any, name: str, channels_first: bool | None) -> np.ndarray:
    """
    Downmix and scale samples to a 1-D float32 waveform.

    `channels_first`: `True` for `(channels, num_samples)`, `None` to take the shorter axis of a 2-D array as channels.
    """
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.floating) or array.dtype in _INTEGER_SCALE):
        raise AudioDecodeError(name, f"samples must be float or integer PCM, got dtype {array.dtype}.")
    if array.ndim == 2:
        if channels_first is None:
            if array.shape[0] == array.shape[1] or min(array.shape) > _MAX_CHANNELS:
                raise AudioDecodeError(
                    name,
                    f"cannot tell channels from samples in shape {array.shape}: pass (num_samples,),"
                    " (num_samples, channels) or (channels, num_samples) with far more samples than channels.",
                )
            channels_first = array.shape[0] < array.shape[1]
        channel_axis = 0 if channels_first else 1
    elif array.ndim != 1:
        raise AudioDecodeError(name, f"samples must be 1-D or 2-D (with a channel axis), got shape {array.shape}.")
    if array.dtype in _INTEGER_SCALE:
        offset, scale = _INTEGER_SCALE[array.dtype]
        array = ((array.astype(np.float64) - offset) / scale).astype(np.float32)
    else:
        array = array.astype(np.float32, copy=False)
    if array.ndim == 2:
        array = array.mean(axis=channel_axis, dtype=np.float32)
    if array.size == 0:
        raise AudioDecodeError(name, "it contains no audio samples.")
    _check_finite(array, name, 0, 1)
    return np.ascontiguousarray(array)


def _check_finite(block: np.ndarray, name: str, offset: int, rate: int) -> None:
    """Raise if `block` (starting at sample `offset` of the source) has NaN or Inf samples."""
    bad = ~np.isfinite(block)
    if bad.any():
        where = offset + int(np.argmax(bad))
        position = f" (first at sample {where}" + (f", {where / rate:.3f} s)" if rate > 1 else ")")
        raise AudioDecodeError(name, f"it contains NaN or Inf samples{position}.")


class _SoundFileReader:
    """libsndfile decoder: exact header frame counts, sample-accurate seeking, block reads."""

    def __init__(self, handle: soundfile.SoundFile, name: str):
        self._file = handle
        self.name = name
        self.sampling_rate = int(handle.samplerate)
        self.num_frames: int | None = int(handle.frames)

    def blocks(self, start_s: float | None, duration_s: float | None) -> Iterator[np.ndarray]:
        """Mono float32 blocks at the source rate covering `[start_s, start_s + duration_s)`."""
        start = 0 if start_s is None else int(round(start_s * self.sampling_rate))
        available = max(self.num_frames - start, 0)
        wanted = available if duration_s is None else min(int(round(duration_s * self.sampling_rate)), available)
        if wanted == 0:
            return
        try:
            if start:
                self._file.seek(start)
            decoded = 0
            while decoded < wanted:
                data = self._file.read(min(_BLOCK_FRAMES, wanted - decoded), dtype="float32", always_2d=True)
                if data.shape[0] == 0:
                    break
                block = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
                _check_finite(block, self.name, start + decoded, self.sampling_rate)
                decoded += block.shape[0]
                yield block
        except (RuntimeError, soundfile.SoundFileError) as error:
            raise AudioDecodeError(self.name, f"the file is truncated or corrupt ({error}).") from error
        # Headers (WAV/FLAC sizes, the Xing/LAME frame count of an MP3) state the length: much less means truncation.
        missing = wanted - decoded
        if missing > max(0.05 * self.sampling_rate, 0.01 * wanted):
            raise AudioDecodeError(
                self.name,
                f"the file is truncated: its header announces {self.num_frames} frames but decoding stopped after"
                f" {start + decoded}.",
            )

    def close(self) -> None:
        self._file.close()


class _PyAVReader:
    """FFmpeg decoder (PyAV) for containers libsndfile does not read; decodes from the start and counts samples."""

    def __init__(self, container: Any, name: str):
        self._container = container
        self.name = name
        if not container.streams.audio:
            raise AudioDecodeError(name, f"it has no audio stream (container: {container.format.long_name}).")
        self._stream = container.streams.audio[0]
        self.sampling_rate = int(self._stream.codec_context.sample_rate or self._stream.rate or 0)
        if self.sampling_rate <= 0:
            raise AudioDecodeError(name, f"its audio stream declares a sample rate of {self.sampling_rate} Hz.")
        if self._stream.duration is not None and self._stream.time_base is not None:
            seconds = float(self._stream.duration * self._stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / 1_000_000  # FFmpeg's AV_TIME_BASE
        else:
            seconds = None
        self.num_frames: int | None = None if seconds is None else int(round(seconds * self.sampling_rate))

    def blocks(self, start_s: float | None, duration_s: float | None) -> Iterator[np.ndarray]:
        """Mono float32 blocks at the source rate covering `[start_s, start_s + duration_s)`."""
        import av

        start = 0 if start_s is None else int(round(start_s * self.sampling_rate))
        stop = None if duration_s is None else start + int(round(duration_s * self.sampling_rate))
        position = 0  # samples decoded so far, counted from the start of the stream
        try:
            for samples in self._decoded_frames():
                block = samples[0] if samples.shape[0] == 1 else samples.mean(axis=0, dtype=np.float32)
                first, position = position, position + block.shape[0]
                block = block[max(start - first, 0) : None if stop is None else max(stop - first, 0)]
                if block.size:
                    _check_finite(block, self.name, max(first, start), self.sampling_rate)
                    yield np.ascontiguousarray(block, dtype=np.float32)
                if stop is not None and position >= stop:
                    return
        except av.error.FFmpegError as error:
            raise AudioDecodeError(self.name, f"the file is truncated or corrupt ({error}).") from error

    def _decoded_frames(self) -> Iterator[np.ndarray]:
        """Every decoded frame as float32 `(channels, num_samples)`; integer formats are scaled by FFmpeg."""
        import av

        converter = av.AudioResampler(format="fltp")  # float planar, same layout and rate
        for frame in self._container.decode(self._stream):
            for converted in converter.resample(frame):
                yield converted.to_ndarray()
        for converted in converter.resample(None):
            yield converted.to_ndarray()

    def close(self) -> None:
        self._container.close()


@contextmanager
def _open_encoded(source: Any, name: str) -> Iterator["_SoundFileReader | _PyAVReader"]:
    """Open an encoded source with soundfile, else PyAV, with one clear error if neither can; close it afterwards."""
    if isinstance(source, dict):
        source = source["bytes"] if source.get("bytes") is not None else source["path"]
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise AudioDecodeError(name, "no such file.")
        opener = lambda: path  # noqa: E731
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        opener = lambda: io.BytesIO(data)  # noqa: E731
    elif hasattr(source, "read"):
        handle = source if getattr(source, "seekable", lambda: False)() else io.BytesIO(source.read())
        origin = handle.tell()

        def opener() -> BinaryIO:
            handle.seek(origin)
            return handle

    else:
        raise AudioDecodeError(
            name,
            "expected a path, bytes, a binary file object, a numpy array or torch tensor (with `source_sampling_rate`)"
            " or a `datasets` Audio value.",
        )
    reader = _open_reader(opener, name)
    try:
        yield reader
    finally:
        reader.close()


def _open_reader(opener: Callable[[], "str | BinaryIO"], name: str) -> "_SoundFileReader | _PyAVReader":
    """Try libsndfile, then FFmpeg; explain both failures when neither reads the data."""
    try:
        return _SoundFileReader(soundfile.SoundFile(opener()), name)
    except (RuntimeError, soundfile.SoundFileError, TypeError) as error:
        soundfile_error = str(error).split(": ", 1)[-1].rstrip(".")
    try:
        import av
    except ImportError:
        raise AudioDecodeError(
            name,
            f"libsndfile cannot read it ({soundfile_error}) and PyAV, needed for containers such as M4A/AAC, is not"
            " installed (pip install av).",
        ) from None
    try:
        container = av.open(opener(), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise AudioDecodeError(name, _unreadable_reason(opener, soundfile_error, error)) from error
    try:
        return _PyAVReader(container, name)
    except AudioDecodeError:
        container.close()
        raise


def _unreadable_reason(opener: Callable[[], "str | BinaryIO"], soundfile_error: str, av_error: Exception) -> str:
    """
    Explain why neither decoder reads the data: empty, a zero sample rate in a WAV header, too short to decode (a
    fragment of a known format), truncated or corrupt (a known format), or not audio at all.
    """
    target = opener()
    if isinstance(target, str):
        size = os.path.getsize(target)
        with open(target, "rb") as handle:
            head = handle.read(64)
    else:
        head = target.read(64)
        size = len(head) + len(target.read())
    if size == 0:
        return "the file is empty (0 bytes)."
    fmt = head.find(b"fmt ")
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE" and 0 <= fmt <= len(head) - 16:
        (rate,) = struct.unpack_from("<I", head, fmt + 12)
        if rate == 0:
            return "its WAV header declares a sample rate of 0 Hz."
    if "does not exist or is not a regular file" in soundfile_error:  # libsndfile's words for "unknown format"
        soundfile_error = "format not recognised"
    detail = (getattr(av_error, "strerror", None) or str(av_error)).rstrip(".")
    decoders = f"libsndfile: {soundfile_error}; FFmpeg: {detail}"
    known = _audio_signature(head)
    if known is not None and size < _FRAGMENT_BYTES:
        return f"too short to decode: {size} bytes that begin like {known} (a fragment or truncated file; {decoders})."
    if known is not None:
        return f"it begins like {known} but cannot be decoded: truncated or corrupt ({decoders})."
    return (
        "not audio: not a recognised audio file or container (expected WAV, FLAC, OGG, MP3, M4A/AAC or another format"
        f" that libsndfile or FFmpeg decodes; {decoders})."
    )


def _audio_signature(head: bytes) -> str | None:
    """The audio format whose magic bytes `head` starts with, if any."""
    for magic, known in _AUDIO_MAGIC.items():
        if head.startswith(magic):
            return known
    if head[4:8] == b"ftyp":
        return "an MP4/M4A file"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # MPEG audio frame sync
        return "an MPEG audio (MP3/AAC) stream"
    return None


def _resampled_blocks(blocks: Iterator[np.ndarray], orig_rate: int, target_rate: int) -> Iterator[np.ndarray]:
    """Resample a stream of mono blocks incrementally; the concatenated output equals one-shot `resample`."""
    if orig_rate == target_rate:
        yield from blocks
        return
    stream = soxr.ResampleStream(orig_rate, target_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY)
    for block in blocks:
        out = stream.resample_chunk(block, last=False)
        if out.size:
            yield out
    out = stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
    if out.size:
        yield out


def _window_params(
    sampling_rate: int, window_s: float, hop_s: float | None, min_tail_s: float
) -> tuple[int, int, int]:
    """Validate window settings; return `(window, hop, min_tail)` in samples."""
    _check_rate(sampling_rate, "`sampling_rate`", "the windows")
    hop_s = window_s if hop_s is None else hop_s
    if not (np.isfinite(window_s) and window_s > 0):
        raise ValueError(f"`window_s` must be a positive number of seconds, got {window_s!r}.")
    if not (np.isfinite(hop_s) and 0 < hop_s <= window_s):
        raise ValueError(f"`hop_s` must be in (0, window_s={window_s}] seconds, got {hop_s!r}.")
    if not (np.isfinite(min_tail_s) and min_tail_s >= 0):
        raise ValueError(f"`min_tail_s` must be a number of seconds >= 0, got {min_tail_s!r}.")
    window = int(round(window_s * sampling_rate))
    hop = int(round(hop_s * sampling_rate))
    if hop == 0:
        raise ValueError(f"`hop_s`={hop_s} is shorter than one sample at {sampling_rate} Hz.")
    return window, hop, int(round(min_tail_s * sampling_rate))


def _window_from(buffer: np.ndarray, buffer_start: int, start: int, end: int, rate: int) -> AudioWindow:
    return AudioWindow(start / rate, end / rate, buffer[start - buffer_start : end - buffer_start].copy())


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


__all__ = [
    "DEFAULT_MIN_TAIL_S",
    "DEFAULT_SAMPLING_RATE",
    "DEFAULT_WINDOW_S",
    "RESAMPLE_QUALITY",
    "SILENCE_PEAK_DBFS",
    "AudioDecodeError",
    "AudioWindow",
    "audio_duration",
    "iter_windows",
    "load_audio",
    "resample",
    "select_track_caption",
    "split_windows",
    "track_caption_index",
    "window_bounds",
]
