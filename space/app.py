"""
BLAP in the browser: a Gradio app for a Hugging Face Space, or for your own machine (`python space/app.py`).

Upload or record audio (any format `transformers_blap` decodes: WAV, FLAC, OGG, MP3, M4A, ...) or pick the example;
the page shows the caption of the whole track, the window captions on a timeline over the waveform, the duration and
the pipeline's warnings. With a stage-1 model configured it also tags the track zero-shot with labels you type.

Captions come from the package's own `pipeline("audio-to-text")`, loaded once and shared by all requests; Gradio's
queue runs the requests one after the other, each with its own result.

Environment:
    BLAP_MODEL       the captioner, a Hub id or a saved BLAP folder; default: the demo checkpoint `demo/blap-synthetic`
                     of the repository (works offline).
    BLAP_TAG_MODEL   a stage-1 BLAP (Hub id or folder) for zero-shot tags; without it the page has no tags.
    GRADIO_SERVER_NAME, GRADIO_SERVER_PORT   where to serve (Gradio's own variables; 127.0.0.1:7860 by default).
"""

import html
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from transformers import pipeline

import transformers_blap  # noqa: F401  (registers the "audio-to-text" pipeline)
from transformers_blap.audio import DEFAULT_MIN_TAIL_S, DEFAULT_WINDOW_S, iter_windows, load_audio, window_bounds
from transformers_blap.pipeline_audio_to_text import AudioToTextPipeline
from transformers_blap.tagging import DEFAULT_TAG_TEMPLATE

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO_ROOT / "demo" / "blap-synthetic"
DEMO_AUDIO = REPO_ROOT / "examples" / "demo.flac"
WAVEFORM_RATE = 2_000  # the waveform drawn under the timeline is decoded at this rate: plenty for an outline
WAVEFORM_BINS = 600
TIMELINE_WIDTH, WAVEFORM_HEIGHT, LANE_HEIGHT = 1000, 120, 22
LANE_COLOURS = ("#f97316", "#2563eb")


class ProgressAudioToTextPipeline(AudioToTextPipeline):
    """
    The package's `AudioToTextPipeline`, unchanged, telling `on_window(start_s, end_s)` about each window as it goes to
    the model, so that the page can show progress through a long file.
    """

    on_window: Callable[[float, float], None] | None = None

    def preprocess(self, inputs: Any, **kwargs) -> Iterator[dict[str, Any]]:
        for item in super().preprocess(inputs, **kwargs):
            if self.on_window is not None:
                self.on_window(item["start"], item["end"])
            yield item


def format_time(seconds: float) -> str:
    """`83.25` -> `"1:23.2"` (minutes, seconds to a tenth)."""
    minutes, rest = divmod(round(seconds, 1), 60)
    return f"{int(minutes)}:{rest:04.1f}"


def parse_labels(text: str) -> list[str]:
    """Comma- or newline-separated labels, stripped, without empty entries or repeats, in the order typed."""
    labels = (label.strip() for line in text.splitlines() for label in line.split(","))
    return list(dict.fromkeys(label for label in labels if label))


def waveform_outline(samples: np.ndarray, bins: int = WAVEFORM_BINS) -> np.ndarray:
    """
    The minimum and maximum of the samples in `bins` equal slices of the track.

    Returns:
        `np.ndarray` of shape `(bins, 2)` (fewer rows for a track of fewer samples): `[min, max]` per slice.
    """
    bins = min(bins, samples.shape[0])
    edges = np.linspace(0, samples.shape[0], bins + 1).astype(int)
    return np.array([[samples[a:b].min(), samples[a:b].max()] for a, b in zip(edges[:-1], edges[1:])])


def timeline_html(windows: list[dict[str, Any]], duration_s: float, outline: np.ndarray) -> str:
    """
    The window captions over the waveform: an SVG of the outline with one bar per window (alternating lanes, so that
    overlapping windows stay apart), then the list of windows with their start, end and caption.
    """
    scale = max(np.abs(outline).max(), 1e-6)
    middle = WAVEFORM_HEIGHT / 2
    step = TIMELINE_WIDTH / len(outline)
    heights = middle - 0.95 * middle * outline / scale  # (bins, 2): SVG y of each slice's minimum and maximum
    wave = " ".join(f"M{(i + 0.5) * step:.1f} {low:.1f}V{high:.1f}" for i, (low, high) in enumerate(heights))
    bars = []
    for number, window in enumerate(windows, start=1):
        x = TIMELINE_WIDTH * window["start"] / duration_s
        width = max(TIMELINE_WIDTH * (window["end"] - window["start"]) / duration_s, 1.0)
        lane = (number - 1) % 2
        y = WAVEFORM_HEIGHT + 4 + lane * (LANE_HEIGHT + 2)
        colour = LANE_COLOURS[lane]
        title = html.escape(f"{format_time(window['start'])}–{format_time(window['end'])}: {window['caption']}")
        bars.append(
            f'<g><title>{title}</title><rect x="{x:.1f}" y="0" width="{width:.1f}" height="{WAVEFORM_HEIGHT}"'
            f' fill="{colour}" fill-opacity="0.08"/><rect x="{x:.1f}" y="{y}" width="{width:.1f}"'
            f' height="{LANE_HEIGHT}" rx="3" fill="{colour}" fill-opacity="0.75"/><text x="{x + 4:.1f}"'
            f' y="{y + LANE_HEIGHT - 5}" font-size="16" fill="white">{number}</text></g>'
        )
    height = WAVEFORM_HEIGHT + 6 + 2 * (LANE_HEIGHT + 2)
    items = "".join(
        f'<li class="blap-window"><span class="blap-window-time">{format_time(window["start"])}–'
        f'{format_time(window["end"])}</span> <span class="blap-window-caption">{html.escape(window["caption"])}'
        "</span></li>"
        for window in windows
    )
    return (
        f'<svg class="blap-timeline" viewBox="0 0 {TIMELINE_WIDTH} {height}" width="100%" role="img"'
        f' aria-label="waveform with {len(windows)} caption windows">{"".join(bars)}'
        f'<path d="{wave}" stroke="#475569" stroke-width="{max(step * 0.7, 0.5):.2f}" fill="none"/></svg>'
        f'<ol class="blap-windows">{items}</ol>'
    )


def details_html(duration_s: float, num_windows: int, warnings: list[str]) -> str:
    """The duration, the number of windows and the pipeline's warnings (e.g. `silent`), one line."""
    shown = ", ".join(html.escape(warning) for warning in warnings) if warnings else "none"
    windows = f"{num_windows} window" + ("s" if num_windows != 1 else "")
    return (
        f'<p class="blap-details">Duration <b>{format_time(duration_s)}</b> · {windows} · warnings: '
        f'<span class="blap-warnings">{shown}</span></p>'
    )


def _clear_other(value: str | None) -> Any:
    """Empty the other audio input once this one holds audio."""
    return None if value else gr.skip()


def error_html(message: str) -> str:
    return f'<p class="blap-error" role="alert" style="color: #b91c1c; font-weight: 600">{html.escape(message)}</p>'


class BlapSpace:
    """
    The app's state: one captioning pipeline (and one zero-shot tagging pipeline, if configured) loaded at start and
    shared by all requests, which take turns on it.

    Args:
        model (`str`): the captioner, a Hub id or a saved BLAP folder.
        tag_model (`str`, *optional*): a stage-1 BLAP for zero-shot tags.
    """

    def __init__(self, model: str, tag_model: str | None = None):
        self.model = model
        self.captioner: ProgressAudioToTextPipeline = pipeline(
            "audio-to-text", model=model, pipeline_class=ProgressAudioToTextPipeline
        )
        self.tagger = pipeline("zero-shot-audio-classification", model=tag_model) if tag_model else None
        self._lock = threading.Lock()

    def caption(
        self,
        upload: str | None,
        recording: str | None,
        num_beams: int,
        max_new_tokens: int,
        prompt: str,
        labels: str | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008  (how Gradio hands a progress bar over)
    ) -> tuple[str, str, str, dict[str, float] | None, str]:
        """
        Caption one audio file for the page.

        Returns:
            `(caption, details_html, timeline_html, tags, status_html)`; for a file that cannot be used (not audio,
            truncated, empty) or bad options, empty results and the one-line error as `status_html`.
        """
        audio = upload or recording
        if not audio:
            return "", "", "", None, error_html("No audio: upload or record a file, or pick the example.")
        try:
            with self._lock:
                return self._caption(audio, num_beams, max_new_tokens, prompt, parse_labels(labels or ""), progress)
        except ValueError as error:  # the package's errors for bad input (AudioDecodeError is a ValueError)
            logger.info("Rejected %s: %s", audio, error)
            # Name the file as the visitor knows it, not by the server's upload folder.
            return "", "", "", None, error_html(str(error).replace(audio, Path(audio).name))

    def _caption(
        self, audio: str, num_beams: int, max_new_tokens: int, prompt: str, labels: list[str], progress: gr.Progress
    ) -> tuple[str, str, str, dict[str, float] | None, str]:
        progress(0, desc="Reading the audio")
        waveform = load_audio(audio, WAVEFORM_RATE)  # checks the file, gives the duration and the outline
        duration_s = waveform.shape[0] / WAVEFORM_RATE
        window_s, hop_s, min_tail_s = self.captioner.window_settings()
        total = len(window_bounds(waveform.shape[0], WAVEFORM_RATE, window_s, hop_s, min_tail_s))
        done = 0

        def on_window(start_s: float, end_s: float) -> None:
            nonlocal done
            progress((done, total), desc=f"Captioning {format_time(start_s)}–{format_time(end_s)}", unit="windows")
            done += 1

        self.captioner.on_window = on_window
        try:
            result = self.captioner(
                audio, num_beams=int(num_beams), max_new_tokens=int(max_new_tokens), prompt=prompt.strip() or None
            )[0]
        finally:
            self.captioner.on_window = None
        tags = self._tags(audio, labels) if self.tagger is not None and labels else None
        windows = result["windows"]
        return (
            result["generated_text"],
            details_html(duration_s, len(windows), result.get("warnings", [])),
            timeline_html(windows, duration_s, waveform_outline(waveform)),
            tags,
            "",
        )

    def _tags(self, audio: str, labels: list[str]) -> dict[str, float]:
        """Zero-shot scores of `labels` for the whole track: the stage-1 pipeline's scores averaged over windows."""
        extractor = self.tagger.feature_extractor
        window_s = extractor.max_length_s
        min_tail_s = DEFAULT_MIN_TAIL_S * window_s / DEFAULT_WINDOW_S  # the captioning pipeline's default rule
        windows = [
            window.samples
            for window in iter_windows(audio, extractor.sampling_rate, window_s=window_s, min_tail_s=min_tail_s)
        ]
        scores = dict.fromkeys(labels, 0.0)
        for result in self.tagger(windows, candidate_labels=labels, hypothesis_template=DEFAULT_TAG_TEMPLATE):
            for entry in result:
                scores[entry["label"]] += entry["score"] / len(windows)
        return scores

    def generation_defaults(self) -> tuple[int, int]:
        """The model's own `num_beams` and `max_new_tokens`, the starting values of the "Advanced" options."""
        config = self.captioner.model.generation_config
        return int(config.num_beams or 1), int(config.max_new_tokens or 40)

    def build(self) -> gr.Blocks:
        """The page."""
        num_beams, max_new_tokens = self.generation_defaults()
        default_prompt = getattr(self.captioner.processor, "prompt", None) or self.captioner.model.config.prompt
        model_path = Path(self.model).resolve()
        shown_model = str(model_path.relative_to(REPO_ROOT)) if model_path.is_relative_to(REPO_ROOT) else self.model
        with gr.Blocks(title="BLAP music captioning") as demo:
            gr.Markdown(
                "# BLAP: music captioning\nUpload or record music (WAV, FLAC, OGG, MP3, M4A, ...) and read its"
                " caption; long tracks are captioned window by window. Model: "
                f"`{html.escape(shown_model)}`"
            )
            with gr.Row():
                with gr.Column():
                    upload = gr.File(label="Audio file (WAV, FLAC, OGG, MP3, M4A, ...)", elem_id="blap-upload")
                    recording = gr.Audio(
                        sources=["microphone"], type="filepath", label="... or record", elem_id="blap-record"
                    )
                    if DEMO_AUDIO.is_file():
                        gr.Examples([[str(DEMO_AUDIO)]], inputs=[upload], label="Example")
                    labels = gr.Textbox(
                        label="Zero-shot tags: labels, comma-separated",
                        placeholder="violin, piano, disco, waltz",
                        visible=self.tagger is not None,
                        elem_id="blap-labels",
                    )
                    with gr.Accordion("Advanced", open=False):
                        beams = gr.Slider(1, 10, value=num_beams, step=1, label="Beams")
                        new_tokens = gr.Slider(4, 128, value=max_new_tokens, step=1, label="Max new tokens")
                        prompt = gr.Textbox(value=default_prompt, label="Prompt")
                    run = gr.Button("Caption", variant="primary", elem_id="blap-run")
                with gr.Column():
                    status = gr.HTML(elem_id="blap-status")
                    caption = gr.Textbox(label="Caption of the whole track", interactive=False, elem_id="blap-caption")
                    details = gr.HTML(elem_id="blap-details")
                    timeline = gr.HTML(label="Window captions", elem_id="blap-timeline")
                    tags = gr.Label(label="Tags", visible=self.tagger is not None, elem_id="blap-tags")
            # The audio given last is the one captioned: a new upload clears the recording and the other way round.
            upload.change(_clear_other, inputs=upload, outputs=recording, queue=False)
            recording.change(_clear_other, inputs=recording, outputs=upload, queue=False)
            run.click(
                self.caption,
                inputs=[upload, recording, beams, new_tokens, prompt, labels],
                outputs=[caption, details, timeline, tags, status],
                show_progress_on=[caption],
                concurrency_limit=1,
            )
        return demo.queue(default_concurrency_limit=1)


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    space = BlapSpace(os.environ.get("BLAP_MODEL", str(DEMO_MODEL)), os.environ.get("BLAP_TAG_MODEL") or None)
    space.build().launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))


if __name__ == "__main__":
    main()
