"""
The Space (`space/app.py`): started as `python space/app.py` on a free local port and driven in a real browser
(Playwright with Debian's Chromium), and called by two API clients at once.

Screenshots of the result pages go to `$BLAP_TEST_ARTIFACTS` (default: the test's tmp_path).
"""

import html
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import pipeline

import transformers_blap  # noqa: F401  (registers the "audio-to-text" pipeline)
from transformers_blap import BlapForRepresentationLearning, BlapStage1Processor, build_qformer_tokenizer, load_audio
from transformers_blap.audio import AudioDecodeError
from transformers_blap.synthetic import SAMPLING_RATE, make_clip

from blap_testing import write_audio
from tiny import tiny_feature_extractor, tiny_stage1_config

REPO_ROOT = Path(__file__).resolve().parents[1]
APP = REPO_ROOT / "space" / "app.py"
DEMO_MODEL = REPO_ROOT / "demo" / "blap-synthetic"
DEMO_AUDIO = REPO_ROOT / "examples" / "demo.flac"
LABELS = ["violin", "piano", "disco"]
TAG_TEMPLATE = "This is a {} song."  # what the page documents for its tags
START_TIMEOUT_S = 300
RESULT_TIMEOUT_MS = 120_000


def chromium_path() -> str:
    """Debian's Chromium (`apt-get install chromium`), or `$BLAP_CHROMIUM`; its absence fails the test."""
    path = os.environ.get("BLAP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("No Chromium for the browser test: `apt-get install chromium` or set BLAP_CHROMIUM.")
    return path


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("space")


@pytest.fixture(scope="module")
def artifacts(work_dir) -> Path:
    folder = Path(os.environ.get("BLAP_TEST_ARTIFACTS", work_dir / "artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def tag_model_dir(work_dir, fixture_dir) -> Path:
    """A tiny stage-1 BLAP (weights spread apart so that labels score differently), saved with its processor."""
    torch.manual_seed(0)
    model = BlapForRepresentationLearning(tiny_stage1_config()).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name != "temperature":
                parameter.add_(0.3 * torch.randn_like(parameter))
    processor = BlapStage1Processor(
        tiny_feature_extractor(), build_qformer_tokenizer(fixture_dir / "bert-base-uncased"), max_txt_len=8
    )
    folder = work_dir / "tag-model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def medley(work_dir) -> Path:
    """10 s of three synthetic clips in a row (the demo clip, then two others): three windows of the demo model."""
    clips = [make_clip(10003).audio, make_clip(10004).audio, make_clip(10005).audio[: 2 * SAMPLING_RATE]]
    return write_audio(work_dir / "medley.flac", np.concatenate(clips), SAMPLING_RATE)


@pytest.fixture(scope="module")
def not_audio(work_dir) -> Path:
    path = work_dir / "notes.txt"
    path.write_text("These are my notes, not music.\n" * 20, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference(medley):
    """What the package's own pipeline says, with the model's defaults (which the page starts from)."""
    captioner = pipeline("audio-to-text", model=str(DEMO_MODEL))
    return {path: captioner(str(path))[0] for path in (DEMO_AUDIO, medley)}


def reference_tags(tag_model_dir: Path, path: Path) -> list[str]:
    """Labels by the stock zero-shot pipeline's scores averaged over the track's 1 s windows, best first."""
    classifier = pipeline("zero-shot-audio-classification", model=str(tag_model_dir))
    audio = load_audio(path, sampling_rate=16_000)
    windows = [audio[i : i + 16_000] for i in range(0, audio.shape[0], 16_000)]
    scores = dict.fromkeys(LABELS, 0.0)
    for result in classifier(windows, candidate_labels=LABELS, hypothesis_template=TAG_TEMPLATE):
        for entry in result:
            scores[entry["label"]] += entry["score"]
    return sorted(LABELS, key=scores.get, reverse=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def app_process(work_dir, tag_model_dir):
    """`python space/app.py` with the demo captioner and the tiny tagger, on a free port of 127.0.0.1."""
    port = free_port()
    env = {
        **os.environ,
        "BLAP_TAG_MODEL": str(tag_model_dir),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("BLAP_MODEL", None)  # the default: the shipped demo checkpoint
    with (work_dir / "server.log").open("w") as log:
        process = subprocess.Popen([sys.executable, str(APP)], env=env, stdout=log, stderr=subprocess.STDOUT)
        process.url = f"http://127.0.0.1:{port}/"
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def server(app_process, reference, work_dir) -> str:
    """The app's URL once it serves (the reference captions are computed while it starts)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if app_process.poll() is not None:
            log = (work_dir / "server.log").read_text()
            pytest.fail(f"space/app.py exited with {app_process.returncode}:\n{log}")
        try:
            with urllib.request.urlopen(app_process.url, timeout=5) as response:
                if response.status == 200:
                    return app_process.url
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"space/app.py did not serve {app_process.url} within {START_TIMEOUT_S} s")
        time.sleep(1)


def test_page_captions_uploads_like_the_pipeline_and_shows_a_readable_error(
    server, reference, medley, not_audio, tag_model_dir, artifacts
):
    from playwright.sync_api import expect, sync_playwright

    expected_tags = reference_tags(tag_model_dir, medley)
    with pytest.raises(AudioDecodeError) as raised:
        load_audio(not_audio)
    decode_error = raised.value
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(server)
        caption = page.locator("#blap-caption textarea")
        windows = page.locator("#blap-timeline li.blap-window")

        def run(path: Path) -> None:
            clear = page.locator('#blap-upload button[aria-label="Clear"]')
            if clear.count():
                clear.click()
            page.locator("#blap-upload input[type=file]").set_input_files(str(path))
            expect(page.locator("#blap-upload")).to_contain_text(path.name)
            page.locator("#blap-run").click()

        def screenshot(name: str) -> None:
            expect(page.locator("#blap-caption [data-testid=status-tracker]")).to_have_class(re.compile(r"\bhide\b"))
            page.wait_for_timeout(500)  # let the fade-in of the results end
            page.screenshot(path=str(artifacts / name), full_page=True)

        for path in (DEMO_AUDIO, medley):
            if path == medley:
                page.locator("#blap-labels textarea").fill(", ".join(LABELS))
            run(path)
            expected = reference[path]
            expect(caption).to_have_value(expected["generated_text"], timeout=RESULT_TIMEOUT_MS)
            expect(windows).to_have_count(len(expected["windows"]), timeout=RESULT_TIMEOUT_MS)
            for item, window in zip(windows.all(), expected["windows"]):
                text = item.inner_text()
                assert window["caption"] in text, text
                minutes, seconds = divmod(window["start"], 60)
                assert text.startswith(f"{int(minutes)}:{seconds:04.1f}–"), text
            assert page.locator("#blap-status .blap-error").count() == 0
        assert len(reference[medley]["windows"]) == 3
        expect(page.locator("#blap-details")).to_contain_text("Duration 0:10.0")
        expect(page.locator("#blap-details")).to_contain_text("3 windows")
        expect(page.locator("#blap-tags")).to_contain_text(expected_tags[0])
        screenshot("space-result.png")

        run(not_audio)
        error = page.locator("#blap-status .blap-error")
        expect(error).to_contain_text(decode_error.reason, timeout=RESULT_TIMEOUT_MS)  # the package's own words
        assert error.inner_text().startswith("Cannot use audio 'notes.txt': ")  # the name the visitor knows
        assert "\n" not in error.inner_text().strip()
        assert "Traceback" not in page.content()
        expect(caption).to_have_value("")
        screenshot("space-error.png")

        page.get_by_text(DEMO_AUDIO.name, exact=True).click()  # the shipped example
        expect(page.locator("#blap-upload")).not_to_contain_text(not_audio.name)
        page.locator("#blap-run").click()
        expect(caption).to_have_value(reference[DEMO_AUDIO]["generated_text"], timeout=RESULT_TIMEOUT_MS)
        assert page.locator("#blap-status .blap-error").count() == 0
        browser.close()


def test_two_users_at_once_get_their_own_captions(server, reference, medley):
    from gradio_client import Client, handle_file

    def ask(path: Path) -> str:
        client = Client(server, verbose=False)
        beams, new_tokens = 3, 32  # the demo model's defaults
        result = client.predict(handle_file(str(path)), None, beams, new_tokens, "", "", api_name="/caption")
        return result[0]

    with ThreadPoolExecutor(2) as pool:
        captions = list(pool.map(ask, [DEMO_AUDIO, medley]))
    assert captions == [reference[DEMO_AUDIO]["generated_text"], reference[medley]["generated_text"]]


@pytest.fixture(scope="module")
def space():
    """The app's state, in this process: `space/app.py`'s `BlapSpace` with the demo captioner."""
    spec = importlib.util.spec_from_file_location("blap_space_app", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BlapSpace(str(DEMO_MODEL))


def test_progress_follows_the_windows_of_the_pipeline(space, reference, medley):
    seen = []
    space.captioner.on_window = lambda start, end: seen.append((start, end))
    try:
        result = space.captioner(str(medley))[0]
    finally:
        space.captioner.on_window = None
    assert seen == [(window["start"], window["end"]) for window in result["windows"]]
    assert result == reference[medley]  # the page's pipeline is the package's, unchanged


def test_a_truncated_mp3_gets_the_package_error_in_one_line(space, work_dir):
    full = work_dir / "full.mp3"
    sf.write(full, make_clip(10003).audio, SAMPLING_RATE, format="MP3")
    truncated = work_dir / "truncated.mp3"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(AudioDecodeError) as raised:
        load_audio(truncated)
    caption, details, timeline, tags, status = space.caption(str(truncated), None, 3, 32, "", "")
    assert (caption, details, timeline, tags) == ("", "", "", None)
    assert html.escape(f"Cannot use audio 'truncated.mp3': {raised.value.reason}") in status
    assert "\n" not in status and "Traceback" not in status


def test_space_card_and_requirements_match_the_package():
    from configparser import ConfigParser

    from huggingface_hub.repocard import metadata_load
    from packaging.requirements import Requirement

    card = metadata_load(REPO_ROOT / "space" / "README.md")
    assert card["sdk"] == "gradio" and (REPO_ROOT / "space" / card["app_file"]).resolve() == APP
    setup = ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    extras = setup["options.extras_require"]
    # The Space runs the Gradio version the package's `space` extra was tested with.
    assert Requirement(extras["space"].split()[0]) == Requirement(f"gradio>={card['sdk_version']}")
    lines = (REPO_ROOT / "space" / "requirements.txt").read_text().splitlines()
    (requirement,) = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    assert requirement.name == "transformers_blap" and requirement.url.startswith("git+")
    assert requirement.extras == {"audio", "space"} and requirement.extras <= set(extras)
