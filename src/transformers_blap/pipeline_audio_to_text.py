"""The "audio-to-text" pipeline: caption audio of any length with a BLAP model."""

from collections.abc import Iterator
from typing import Any

import numpy as np

# `.audio` needs soundfile and soxr; transformers' remote-code loader checks the imports of this file only, so they
# are named here too: a missing one is then its "requires the following packages" error (see hub.py).
import soundfile  # noqa: F401
import soxr  # noqa: F401
import torch
from transformers.pipelines.base import ChunkPipeline

from .audio import (
    DEFAULT_MIN_TAIL_S,
    DEFAULT_WINDOW_S,
    SILENCE_PEAK_DBFS,
    iter_windows,
    select_track_caption,
    window_bounds,
)

# This module ships as Hub remote code beside the model's: it imports only `transformers`, numpy, torch, soundfile,
# soxr and its flat sibling `audio`, and never checks classes with `isinstance` (each remote file is its own module,
# so the model, processor and feature extractor classes here may come from other copies of the code).


class AudioToTextPipeline(ChunkPipeline):
    """
    Caption audio with a BLAP model (`BlapForConditionalGeneration` + `BlapProcessor`).

    Each input is decoded, downmixed and resampled to the model's rate and cut into the model's windows (10 s for
    BLAP); every window gets a caption, and the caption of the whole input is chosen among them by the audio module's
    rule (`select_track_caption`: the consensus caption, the one sharing most words with the others). Windows of all
    inputs are batched together (`batch_size` windows per `generate` call), and the log-mel spectrogram is computed
    on the pipeline's device.

    Example:

    ```python
    >>> import transformers_blap  # registers the task
    >>> from transformers import pipeline
    >>> captioner = pipeline("audio-to-text", model="path/to/blap", device="cpu")
    >>> captioner("song.mp3", num_beams=3)
    [{'generated_text': 'A mellow jazz piece ...', 'windows': [{'start': 0.0, 'end': 10.0, 'caption': '...'}, ...],
      'warnings': []}]
    ```

    Without the `transformers_blap` package, a folder or Hub repository saved by it loads with
    `pipeline(model=..., trust_remote_code=True)`.
    """

    _load_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False
    _load_image_processor = False
    _load_video_processor = False
    _pipeline_calls_generate = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.feature_extractor is None or self.tokenizer is None:
            raise ValueError(
                "AudioToTextPipeline needs the model's processor (a BlapProcessor, `processor=`), or its "
                "`feature_extractor=` and `tokenizer=`."
            )
        self._prompt_cache: dict[str, Any] = {}

    def __call__(self, inputs: Any, **kwargs) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """
        Caption one input or a list of inputs.

        Args:
            inputs: one audio input or a list (or generator, or dataset) of them. An audio input is a file path,
                encoded file bytes, a binary file object, a NumPy array or torch tensor of samples (mono
                `(num_samples,)` or with a channel axis) with `sampling_rate=`, or a dict: a `datasets` Audio value
                (`{"array", "sampling_rate"}`, or `{"path", "bytes"}` with `decode=False`) or `{"raw",
                "sampling_rate"}`.
            sampling_rate (`int`, *optional*): the rate of NumPy / torch inputs in Hz (required for them; files and
                dicts carry their own).
            prompt (`str`, *optional*): the instruction given to the language model; the processor's by default.
            window_s (`float`, *optional*): window length in seconds, at most the model's window (its default).
            hop_s (`float`, *optional*): distance between window starts; `window_s` by default (no overlap).
            min_tail_s (`float`, *optional*): the shortest remainder after the last full window that gets a window
                of its own (a shorter one joins the last window); 30% of `window_s` by default.
            batch_size (`int`, *optional*): windows per `generate` call.
            generate_kwargs (`dict`, *optional*), or generation options as keyword arguments (`num_beams`,
                `max_new_tokens`, `min_length`, `do_sample`, `num_return_sequences`, ...): the model's generation
                config gives the defaults.

        Returns:
            For one input, a list with one dict per returned sequence (`num_return_sequences`, 1 by default):
            `generated_text` (the caption of the whole input) and `windows`, a list of
            `{"start": seconds, "end": seconds, "caption": str}` in time order, and `warnings`, a list of strings
            (empty when all is well): `"silent"` when the input's peak stays below `SILENCE_PEAK_DBFS` (-60 dBFS; the
            caption of silence is made up). For a list of inputs, one such list per input.
        """
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(
        self,
        sampling_rate: int | None = None,
        prompt: str | None = None,
        window_s: float | None = None,
        hop_s: float | None = None,
        min_tail_s: float | None = None,
        generate_kwargs: dict[str, Any] | None = None,
        **kwargs,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        preprocess_params = {
            name: value
            for name, value in (
                ("sampling_rate", sampling_rate),
                ("prompt", prompt),
                ("window_s", window_s),
                ("hop_s", hop_s),
                ("min_tail_s", min_tail_s),
            )
            if value is not None
        }
        forward_params = {**(generate_kwargs or {}), **kwargs}
        return preprocess_params, {"generate_kwargs": forward_params}, {}

    def call_parameters(self, **kwargs) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """
        The keyword arguments that a call with `kwargs` (the options of `__call__`, but `batch_size`) gives
        `preprocess`, `forward` and `postprocess`: the call's options over those the pipeline was created with, as
        `__call__` combines them. For a caller that runs the three steps itself (the batch captioner decodes in a
        thread of its own and batches the windows of several inputs together).

        Returns:
            `(preprocess_params, forward_params, postprocess_params)`.
        """
        preprocess_params, forward_params, postprocess_params = self._sanitize_parameters(**kwargs)
        # `Pipeline.__init__` keeps what `_sanitize_parameters` made of the creation options in these attributes.
        return (
            {**self._preprocess_params, **preprocess_params},
            {**self._forward_params, **forward_params},
            {**self._postprocess_params, **postprocess_params},
        )

    def preprocess(
        self,
        inputs: Any,
        sampling_rate: int | None = None,
        prompt: str | None = None,
        window_s: float | None = None,
        hop_s: float | None = None,
        min_tail_s: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """
        Decode one input and yield its windows, each fitted to the model's window (repeat-padded or cut, as the
        feature extractor does) so that windows of any inputs batch together.

        Yields:
            `dict` with `audio` `(1, window_samples)`, the tokenized prompt `input_ids` / `attention_mask`
            `(1, prompt_length)`, `start` / `end` in seconds, the window's `peak` |sample| and `is_last`.
        """
        window_s, hop_s, min_tail_s = self.window_settings(window_s, hop_s, min_tail_s)
        source, source_sampling_rate = self._audio_source(inputs, sampling_rate)
        windows = iter_windows(
            source,
            self.feature_extractor.sampling_rate,
            window_s=window_s,
            hop_s=hop_s,
            min_tail_s=min_tail_s,
            source_sampling_rate=source_sampling_rate,
        )
        prompt_tokens = self.prompt_tokens(prompt)

        window = next(windows)
        for upcoming in windows:
            yield self._window_item(window, prompt_tokens, is_last=False)
            window = upcoming
        yield self._window_item(window, prompt_tokens, is_last=True)

    def prompt_tokens(self, prompt: str | None = None) -> Any:
        """
        The tokenized prompt (the processor's, else the model config's, when `prompt` is `None`), tokenized once per
        prompt: windows reuse it, and a caller that decodes in another thread can tokenize it first, in its own.

        Returns:
            `BatchEncoding` with `input_ids` and `attention_mask` of shape `(1, prompt_length)`.
        """
        if prompt is None:
            prompt = getattr(self.processor, "prompt", None) or self.model.config.prompt
        if prompt not in self._prompt_cache:
            self._prompt_cache[prompt] = self.tokenizer(prompt, return_tensors="pt")
        return self._prompt_cache[prompt]

    def window_settings(
        self, window_s: float | None = None, hop_s: float | None = None, min_tail_s: float | None = None
    ) -> tuple[float, float | None, float]:
        """
        The window options with their defaults filled in (see `__call__`); bad values raise `ValueError` here, before
        any audio is read.

        Returns:
            `(window_s, hop_s, min_tail_s)`; `hop_s` stays `None` for "equal to `window_s`".
        """
        model_window_s = self.feature_extractor.max_length_s
        window_s = model_window_s if window_s is None else window_s
        if window_s > model_window_s:
            raise ValueError(
                f"`window_s`={window_s} is longer than the model's {model_window_s} s window: the model would see only"
                " part of each window."
            )
        if min_tail_s is None:
            min_tail_s = DEFAULT_MIN_TAIL_S * window_s / DEFAULT_WINDOW_S
        window_bounds(1, self.feature_extractor.sampling_rate, window_s, hop_s, min_tail_s)  # checks the values
        return window_s, hop_s, min_tail_s

    @staticmethod
    def _audio_source(inputs: Any, sampling_rate: int | None) -> tuple[Any, int | None]:
        """What `iter_windows` reads, and the rate to tell it for raw samples."""
        if isinstance(inputs, (np.ndarray, torch.Tensor)):
            if sampling_rate is None:
                raise ValueError(
                    f"A {type(inputs).__name__} input of shape {tuple(inputs.shape)} carries no sample rate: pass"
                    " `sampling_rate=` (in Hz), or a dict {'array': ..., 'sampling_rate': ...}."
                )
            return inputs, sampling_rate
        if isinstance(inputs, dict) and "raw" in inputs:  # the dict form of the speech-recognition pipeline
            if "sampling_rate" not in inputs:
                raise ValueError("A dict input with `raw` samples needs `sampling_rate` (in Hz) beside them.")
            return {"array": inputs["raw"], "sampling_rate": inputs["sampling_rate"]}, None
        return inputs, None

    def _window_item(self, window: Any, prompt_tokens: Any, is_last: bool) -> dict[str, Any]:
        samples = torch.from_numpy(np.ascontiguousarray(window.samples, dtype=np.float32))
        return {
            "audio": self.feature_extractor.fit_to_window(samples).unsqueeze(0),
            "input_ids": prompt_tokens["input_ids"],
            "attention_mask": prompt_tokens["attention_mask"],
            "start": float(window.start_s),
            "end": float(window.end_s),
            "peak": float(np.abs(window.samples).max()),
            "is_last": is_last,
        }

    def _forward(self, model_inputs: dict[str, Any], generate_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        """
        Log-mel on the pipeline's device, then `generate` for a batch of windows.

        Returns:
            `dict` with `sequences` `(batch_size, num_return_sequences, length)` and the windows' `start`, `end`,
            `peak`, `is_last`.
        """
        audio = model_inputs["audio"]
        features = self.feature_extractor(
            audio, sampling_rate=self.feature_extractor.sampling_rate, device=self.device
        )["input_features"]
        output = self.model.generate(
            input_features=features,
            input_ids=model_inputs["input_ids"],
            attention_mask=model_inputs["attention_mask"],
            **self._prepare_generate_kwargs(dict(generate_kwargs or {})),
        )
        sequences = output.sequences if hasattr(output, "sequences") else output
        batch_size = audio.shape[0]
        return {
            "sequences": sequences.reshape(batch_size, sequences.shape[0] // batch_size, -1),
            "start": model_inputs["start"],
            "end": model_inputs["end"],
            "peak": model_inputs["peak"],
            "is_last": model_inputs["is_last"],
        }

    def postprocess(self, model_outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Decode the windows of one input, pick the caption of the whole input and flag silence."""
        silent = max(float(output["peak"]) for output in model_outputs) < 10 ** (SILENCE_PEAK_DBFS / 20)
        warnings = ["silent"] if silent else []
        windows = []
        for output in model_outputs:
            texts = self.tokenizer.batch_decode(output["sequences"][0], skip_special_tokens=True)
            windows.append((float(output["start"]), float(output["end"]), [text.strip() for text in texts]))
        results = []
        for rank in range(len(windows[0][2])):
            captions = [texts[rank] for _, _, texts in windows]
            results.append(
                {
                    "generated_text": select_track_caption(captions),
                    "windows": [
                        {"start": start, "end": end, "caption": caption}
                        for (start, end, _), caption in zip(windows, captions)
                    ],
                    "warnings": list(warnings),
                }
            )
        return results


__all__ = ["AudioToTextPipeline"]
