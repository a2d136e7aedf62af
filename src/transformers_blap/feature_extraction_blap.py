"""Log-mel front end of BLAP: batched, deterministic, torch (CPU or GPU)."""

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

# `.audio` needs soundfile and soxr; transformers' remote-code loader checks the imports of this file only, so they
# are named here too: a missing one is then its "requires the following packages" error (see hub.py).
import soundfile  # noqa: F401
import soxr  # noqa: F401
import torch
from transformers.audio_utils import mel_filter_bank
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import logging

from .audio import resample

logger = logging.get_logger(__name__)

LONG_AUDIO_POLICIES = ("first", "center")
# Waveforms with a larger peak are scaled to peak 1 and their dB added back: float32 power overflows near 1e19.
_MAX_UNSCALED_PEAK = 1e6


class BlapFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Turns mono waveforms into the log-mel spectrograms HTS-AT reads, exactly like the original BLAP front end
    (torchlibrosa inside LAION CLAP): 48 kHz, `n_fft` 1024, hop 480, periodic Hann window, centred frames with reflect
    padding, power spectrum, 64 Slaney-scale mel bands with Slaney norm between 50 Hz and 14 kHz,
    `10 * log10(max(x, 1e-10))`, no `top_db` clipping. A 10 s clip gives 1001 frames.

    Unlike `transformers.ClapFeatureExtractor` it works in float32 torch, optionally on the model's device, and it is
    deterministic (the same input always gives the same features, alone or in any batch). Policies:

    - sample rate: audio at another rate is resampled with soxr when `sampling_rate` says so; without `sampling_rate`
      the audio is assumed to be at `self.sampling_rate` (a warning says so: pass it);
    - short audio (below `max_length_s`) is repeated, then zero-padded to `max_length_s` ("repeatpad", as LAION CLAP);
    - long audio is cut to one window chosen by `long_audio`: `"first"` (default) or `"center"`. To caption every
      window of a long track, split it first with `transformers_blap.audio.iter_windows` / `split_windows`;
    - input must be mono float: downmix and scale integer PCM first (`transformers_blap.audio.load_audio` does both);
      empty waveforms and NaN/Inf samples are errors. Any finite waveform gives finite features.

    On CPU the windows are computed one at a time (the working set stays in cache) by `torch.get_num_threads()`
    single-threaded workers; on other devices the whole batch is computed at once.

    Args:
        feature_size (`int`, *optional*, defaults to 64): number of mel bins.
        sampling_rate (`int`, *optional*, defaults to 48000): the rate the model expects.
        fft_window_size (`int`, *optional*, defaults to 1024): STFT size and Hann window length.
        hop_length (`int`, *optional*, defaults to 480): STFT hop in samples.
        max_length_s (`int | float`, *optional*, defaults to 10): the model's window in seconds.
        frequency_min (`float`, *optional*, defaults to 50): lowest mel band edge in Hz.
        frequency_max (`float`, *optional*, defaults to 14000): highest mel band edge in Hz.
        long_audio (`str`, *optional*, defaults to `"first"`): which window of a too-long input is kept.
        padding_value (`float`, *optional*, defaults to 0.0): value of the padding after repetition.
    """

    model_input_names = ["input_features"]

    def __init__(
        self,
        feature_size: int = 64,
        sampling_rate: int = 48_000,
        fft_window_size: int = 1024,
        hop_length: int = 480,
        max_length_s: int | float = 10,
        frequency_min: float = 50.0,
        frequency_max: float = 14_000.0,
        long_audio: str = "first",
        padding_value: float = 0.0,
        **kwargs,
    ):
        kwargs["return_attention_mask"] = False  # every window is full length after repeat-padding
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        if long_audio not in LONG_AUDIO_POLICIES:
            raise ValueError(f"`long_audio` must be one of {LONG_AUDIO_POLICIES}, got {long_audio!r}.")
        self.fft_window_size = fft_window_size
        self.hop_length = hop_length
        self.max_length_s = max_length_s
        self.frequency_min = frequency_min
        self.frequency_max = frequency_max
        self.long_audio = long_audio
        self._mel_filters: torch.Tensor | None = None
        self._mel_projection: tuple[int, int, torch.Tensor] | None = None

    @property
    def nb_max_samples(self) -> int:
        """Samples in one model window (480,000 for 10 s at 48 kHz)."""
        return int(round(self.max_length_s * self.sampling_rate))

    @property
    def num_frames(self) -> int:
        """Frames of one window's spectrogram (1001 for 10 s)."""
        return self.nb_max_samples // self.hop_length + 1

    @property
    def mel_filters(self) -> torch.Tensor:
        """Mel filter bank of shape `(fft_window_size // 2 + 1, feature_size)`, float32."""
        if self._mel_filters is None:
            filters = mel_filter_bank(
                num_frequency_bins=self.fft_window_size // 2 + 1,
                num_mel_filters=self.feature_size,
                min_frequency=self.frequency_min,
                max_frequency=self.frequency_max,
                sampling_rate=self.sampling_rate,
                norm="slaney",
                mel_scale="slaney",
            )
            self._mel_filters = torch.from_numpy(filters.astype(np.float32))
        return self._mel_filters

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("_mel_filters", None)
        output.pop("_mel_projection", None)
        return output

    def fit_to_window(self, waveform: torch.Tensor) -> torch.Tensor:
        """
        Repeat-pad a short waveform or cut one window out of a long one, following `long_audio`.

        Args:
            waveform (`torch.Tensor` of shape `(num_samples,)`): mono audio at `sampling_rate`.

        Returns:
            `torch.Tensor` of shape `(nb_max_samples,)`.
        """
        target = self.nb_max_samples
        length = waveform.shape[-1]
        if length == 0:
            raise ValueError("Empty audio: the waveform has no samples.")
        if length > target:
            start = 0 if self.long_audio == "first" else (length - target) // 2
            return waveform[start : start + target]
        if length < target:
            repeats = target // length
            waveform = waveform.repeat(repeats)
            waveform = torch.nn.functional.pad(waveform, (0, target - waveform.shape[-1]), value=self.padding_value)
        return waveform

    @property
    def mel_projection(self) -> tuple[int, int, torch.Tensor]:
        """
        The mel filter bank applied to an interleaved (real, imaginary) spectrum, restricted to the frequency bins that
        carry weight: `(first_bin, end_bin, weights)` with `weights` of shape `(2 * (end_bin - first_bin),
        feature_size)`, each filter row repeated for the real and the imaginary part. Squaring the interleaved
        spectrum and multiplying by `weights` gives the mel power without forming the power spectrum.
        """
        if self._mel_projection is None:
            used = (self.mel_filters != 0).any(dim=1).nonzero().flatten()
            first, end = int(used[0]), int(used[-1]) + 1
            weights = self.mel_filters[first:end].repeat_interleave(2, dim=0).contiguous()
            self._mel_projection = (first, end, weights)
        return self._mel_projection

    def log_mel(self, waveforms: torch.Tensor) -> torch.Tensor:
        """
        Log-mel spectrogram of a batch of windows, on the device of `waveforms`.

        Args:
            waveforms (`torch.Tensor` of shape `(batch_size, num_samples)`): float audio at `sampling_rate`.

        Returns:
            `torch.Tensor` of shape `(batch_size, 1, num_samples // hop_length + 1, feature_size)`, in dB, float32.
        """
        if waveforms.ndim != 2 or waveforms.shape[1] <= self.fft_window_size // 2:
            raise ValueError(
                "`waveforms` must have shape (batch_size, num_samples) with num_samples >"
                f" {self.fft_window_size // 2}, got {tuple(waveforms.shape)}."
            )
        waveforms = waveforms.to(torch.float32)
        projection = self.mel_projection
        if waveforms.device.type != "cpu":
            return self._log_mel(waveforms, projection).unsqueeze(1)
        features = torch.empty(waveforms.shape[0], 1, waveforms.shape[1] // self.hop_length + 1, self.feature_size)

        def compute(index: int) -> None:
            features[index, 0] = self._log_mel(waveforms[index].unsqueeze(0), projection)[0]

        self._run_on_cpu_workers(waveforms.shape[0], compute)
        return features

    @staticmethod
    def _run_on_cpu_workers(count: int, compute: Callable[[int], None]) -> None:
        """
        Call `compute(index)` for every index in `range(count)`, spread over `torch.get_num_threads()` worker threads
        that each run torch single-threaded. Each window is computed whole by one thread, so that its frames and
        spectrum (4 MB each for 10 s) stay in cache, and parallelism across windows needs no per-operation thread
        barriers, which stall whenever other processes keep the cores busy.
        """
        threads = torch.get_num_threads()
        workers = min(threads, count)
        try:
            with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                list(pool.map(compute, range(count)))
        finally:
            # A worker's `set_num_threads(1)` binds that worker, but also torch's default for threads started
            # meanwhile: put the default back (the calling thread's own setting never changed).
            torch.set_num_threads(threads)

    def _log_mel(self, waveforms: torch.Tensor, projection: tuple[int, int, torch.Tensor]) -> torch.Tensor:
        """
        `(batch_size, num_samples)` -> `(batch_size, num_frames, feature_size)` in dB: centred STFT, mel, log.
        `projection` is `self.mel_projection`.
        """
        n_fft, half = self.fft_window_size, self.fft_window_size // 2
        window = torch.hann_window(n_fft, periodic=True, device=waveforms.device)
        # Centred frames: reflect-pad by half a window (a concatenation is 10x faster than torch's reflection pad).
        padded = torch.cat([waveforms[:, 1 : half + 1].flip(-1), waveforms, waveforms[:, -half - 1 : -1].flip(-1)], -1)
        frames = padded.unfold(-1, n_fft, self.hop_length) * window  # (batch, frames, n_fft)
        spectrum = torch.view_as_real(torch.fft.rfft(frames))  # (batch, frames, n_fft // 2 + 1, 2)
        first, end, weights = projection
        interleaved = spectrum[:, :, first:end].flatten(2).square_()  # (batch, frames, 2 * used bins)
        mel = torch.matmul(interleaved, weights.to(waveforms.device))
        return 10.0 * torch.log10(torch.clamp(mel, min=1e-10))

    def __call__(
        self,
        raw_audio: np.ndarray | torch.Tensor | list[np.ndarray] | list[torch.Tensor],
        sampling_rate: int | None = None,
        return_tensors: str | None = "pt",
        device: str | torch.device | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Compute `input_features` for one waveform or a batch of waveforms.

        Args:
            raw_audio: a 1-D array `(num_samples,)`, a 2-D batch `(batch_size, num_samples)` or a list of 1-D arrays of
                any lengths; mono float audio.
            sampling_rate (`int`, *optional*): the rate of `raw_audio`; audio at another rate than
                `self.sampling_rate` is resampled (soxr). Pass it: without it the audio is assumed to be at
                `self.sampling_rate`.
            return_tensors (`str`, *optional*, defaults to `"pt"`): `"pt"` or `"np"`.
            device (`str` or `torch.device`, *optional*): where to compute (e.g. the model's device); CPU by default.

        Returns:
            [`BatchFeature`] with `input_features` of shape `(batch_size, 1, num_frames, feature_size)`.
        """
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"`return_tensors` must be 'pt' or 'np', got {return_tensors!r}.")
        if sampling_rate is None:
            logger.warning_once(
                f"No `sampling_rate` was passed to {self.__class__.__name__}: the audio is assumed to be at"
                f" {self.sampling_rate} Hz. Pass `sampling_rate` so that audio at another rate is resampled."
            )
        elif isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, np.integer)) or sampling_rate <= 0:
            raise ValueError(f"`sampling_rate` must be a positive integer in Hz, got {sampling_rate!r}.")
        waveforms = self._as_waveform_list(raw_audio)
        device = torch.device(device) if device is not None else torch.device("cpu")
        if device.type == "cpu":  # every step of a waveform in one worker (see `_run_on_cpu_workers`)
            features = torch.empty(len(waveforms), 1, self.num_frames, self.feature_size)
            projection = self.mel_projection
            # Inference mode is thread-local: the workers must share the caller's, or writing into `features`
            # (an inference tensor when the caller is in `torch.inference_mode()`) fails.
            inference_mode = torch.is_inference_mode_enabled()

            def compute(index: int) -> None:
                with torch.inference_mode(inference_mode):
                    window, offset_db = self._prepare(waveforms[index], index, sampling_rate, device)
                    features[index, 0] = self._log_mel(window.unsqueeze(0), projection)[0] + offset_db

            self._run_on_cpu_workers(len(waveforms), compute)
        else:
            prepared = [
                self._prepare(waveform, index, sampling_rate, device) for index, waveform in enumerate(waveforms)
            ]
            features = self.log_mel(torch.stack([window for window, _ in prepared]))
            offsets_db = torch.tensor([offset_db for _, offset_db in prepared], device=device)
            features = features + offsets_db[:, None, None, None]
        if return_tensors == "np":
            features = features.cpu().numpy()
        return BatchFeature({"input_features": features})

    def _prepare(
        self, waveform: torch.Tensor, index: int, sampling_rate: int | None, device: torch.device
    ) -> tuple[torch.Tensor, float]:
        """
        Check, rescale, resample and fit one waveform to the model's window.

        Returns:
            `(window, offset_db)`: the float32 window `(nb_max_samples,)` on `device`, and the dB to add to its log-mel
            (non-zero only when a waveform with a peak above `_MAX_UNSCALED_PEAK` was scaled to peak 1, because its
            float32 power could overflow).
        """
        peak = float(waveform.abs().amax())  # NaN propagates through amax
        if not math.isfinite(peak):
            raise ValueError(f"Waveform {index} contains NaN or Inf samples.")
        offset_db = 0.0
        if peak > _MAX_UNSCALED_PEAK:
            waveform, offset_db = waveform / peak, 20.0 * math.log10(peak)
        waveform = waveform.to(torch.float32)
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            waveform = torch.from_numpy(resample(waveform.cpu().numpy(), int(sampling_rate), self.sampling_rate))
        return self.fit_to_window(waveform.to(device)), offset_db

    @staticmethod
    def _as_waveform_list(raw_audio) -> list[torch.Tensor]:
        """Every accepted input form as a list of 1-D float tensors, with clear errors for wrong shapes and types."""
        if isinstance(raw_audio, (np.ndarray, torch.Tensor)):
            if raw_audio.ndim == 1:
                items = [raw_audio]
            elif raw_audio.ndim == 2:
                items = list(raw_audio)
            else:
                raise ValueError(
                    f"`raw_audio` must be 1-D (num_samples,) or 2-D (batch_size, num_samples); got shape"
                    f" {tuple(raw_audio.shape)}. Downmix multichannel audio to mono first."
                )
        elif isinstance(raw_audio, (list, tuple)):
            if len(raw_audio) == 0:
                raise ValueError("`raw_audio` is an empty list: pass at least one waveform.")
            items = list(raw_audio)
        else:
            raise TypeError(
                f"`raw_audio` must be a numpy array, a torch tensor or a list of them, got {type(raw_audio).__name__}."
            )
        waveforms = []
        for index, item in enumerate(items):
            tensor = torch.as_tensor(np.asarray(item) if not isinstance(item, torch.Tensor) else item)
            if tensor.ndim != 1:
                raise ValueError(
                    f"Waveform {index} must be 1-D mono audio, got shape {tuple(tensor.shape)}. Downmix it first."
                )
            if not tensor.is_floating_point():
                raise ValueError(
                    f"Waveform {index} has dtype {tensor.dtype}; pass float audio in [-1, 1]"
                    " (transformers_blap.audio.load_audio scales integer PCM)."
                )
            if tensor.numel() == 0:
                raise ValueError(f"Waveform {index} is empty: it has no samples.")
            waveforms.append(tensor)
        return waveforms


# Its `save_pretrained` writes `auto_map` and copies its module files, for `trust_remote_code=True` (transformers'
# own mechanism for custom classes).
BlapFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")

__all__ = ["BlapFeatureExtractor"]
