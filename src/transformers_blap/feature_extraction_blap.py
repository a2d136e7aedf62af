"""Log-mel front end of BLAP: batched, deterministic, torch (CPU or GPU)."""

from typing import Any

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature

LONG_AUDIO_POLICIES = ("first", "center")


class BlapFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Turns mono waveforms at 48 kHz into the log-mel spectrograms HTS-AT reads, exactly like the original BLAP front end
    (torchlibrosa inside LAION CLAP): `n_fft` 1024, hop 480, periodic Hann window, centred frames with reflect
    padding, power spectrum, 64 Slaney-scale mel bands with Slaney norm between 50 Hz and 14 kHz,
    `10 * log10(max(x, 1e-10))`, no `top_db` clipping. A 10 s clip gives 1001 frames.

    Unlike `transformers.ClapFeatureExtractor` it works on a whole batch at once in float32 torch, optionally on the
    model's device, and it is deterministic:

    - audio shorter than `max_length_s` is repeated, then zero-padded to `max_length_s` ("repeatpad", as LAION CLAP);
    - audio longer than `max_length_s` is cut to one window chosen by `long_audio`: `"first"` (default) or
      `"center"`. To caption every window of a long track, split it first (`transformers_blap.audio.split_windows`,
      which the pipeline and the `blap caption` command use).

    Args:
        feature_size (`int`, *optional*, defaults to 64): number of mel bins.
        sampling_rate (`int`, *optional*, defaults to 48000): the rate the waveforms must have.
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

    def log_mel(self, waveforms: torch.Tensor) -> torch.Tensor:
        """
        Log-mel spectrogram of a batch of windows.

        Args:
            waveforms (`torch.Tensor` of shape `(batch_size, num_samples)`): float audio at `sampling_rate`.

        Returns:
            `torch.Tensor` of shape `(batch_size, 1, num_frames, feature_size)`, in dB.
        """
        window = torch.hann_window(self.fft_window_size, periodic=True, device=waveforms.device)
        spectrum = torch.stft(
            waveforms,
            n_fft=self.fft_window_size,
            hop_length=self.hop_length,
            window=window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        power = spectrum.real.square() + spectrum.imag.square()  # (batch, freq, frames)
        mel = torch.matmul(power.transpose(1, 2), self.mel_filters.to(waveforms.device))
        return (10.0 * torch.log10(torch.clamp(mel, min=1e-10))).unsqueeze(1)

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
                any lengths; mono float audio at `self.sampling_rate`.
            sampling_rate (`int`, *optional*): the rate of `raw_audio`. Strongly recommended: a mismatch is an error
                (resample first, e.g. with `transformers_blap.audio.load_audio`).
            return_tensors (`str`, *optional*, defaults to `"pt"`): `"pt"` or `"np"`.
            device (`str` or `torch.device`, *optional*): where to compute (e.g. the model's device).

        Returns:
            [`BatchFeature`] with `input_features` of shape `(batch_size, 1, num_frames, feature_size)`.
        """
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            raise ValueError(
                f"`sampling_rate` is {sampling_rate} Hz but BLAP's feature extractor expects {self.sampling_rate} Hz:"
                " resample the audio first (transformers_blap.audio.load_audio does this)."
            )
        waveforms = self._as_waveform_list(raw_audio)
        device = torch.device(device) if device is not None else torch.device("cpu")
        batch = torch.stack([self.fit_to_window(w.to(device)) for w in waveforms])
        features = self.log_mel(batch)
        if return_tensors == "np":
            return BatchFeature({"input_features": features.cpu().numpy()})
        if return_tensors not in (None, "pt"):
            raise ValueError(f"`return_tensors` must be 'pt' or 'np', got {return_tensors!r}.")
        return BatchFeature({"input_features": features})

    @staticmethod
    def _as_waveform_list(raw_audio) -> list[torch.Tensor]:
        """Normalise every accepted input form into a list of 1-D float32 tensors, with clear errors."""
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
            if not torch.isfinite(tensor).all():
                raise ValueError(f"Waveform {index} contains NaN or Inf samples.")
            waveforms.append(tensor.to(torch.float32))
        return waveforms


__all__ = ["BlapFeatureExtractor"]
