"""The README main command, `python scripts/caption_demo.py examples/demo.flac`: offline, the shipped demo model."""

import json
import subprocess
import sys
from pathlib import Path

from transformers_blap.synthetic import parse_caption

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "caption_demo.py"
OFFLINE_ENV = {"PYTHONPATH": str(REPO_ROOT / "src"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}


def test_readme_main_command_captions_the_shipped_example_with_its_labels():
    command = [sys.executable, str(SCRIPT), str(REPO_ROOT / "examples" / "demo.flac")]
    result = subprocess.run(command, capture_output=True, text=True, env=OFFLINE_ENV, timeout=600, check=True)
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["path"].endswith("examples/demo.flac")
    assert record["windows"][0]["start"] == 0.0 and record["windows"][0]["end"] > 3.9
    # The shipped demo model was trained on the synthetic corpus; the example is a clip it never saw.
    labels = json.loads((REPO_ROOT / "examples" / "demo.json").read_text())
    parsed = parse_caption(record["caption"])
    assert (parsed["instrument"], parsed["tempo"]) == (labels["instrument"], labels["tempo"]), record["caption"]
    assert record["labels"]["instrument"] == labels["instrument"] and record["reference"] == labels["caption"][0]


def test_caption_demo_names_a_missing_model_folder(tmp_path):
    command = [sys.executable, str(SCRIPT), "--model", str(tmp_path / "nothing")]
    result = subprocess.run(command, capture_output=True, text=True, env=OFFLINE_ENV, timeout=120)
    assert result.returncode == 2
    assert "--model" in result.stderr and "config.json" in result.stderr
