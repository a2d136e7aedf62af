import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_readme_demo_captions_the_shipped_example_offline(tmp_path):
    model_dir = tmp_path / "demo"
    command = [sys.executable, str(REPO_ROOT / "scripts" / "caption_demo.py"), "--model", str(model_dir)]
    env = {"PYTHONPATH": str(REPO_ROOT / "src"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=True)
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["path"].endswith("examples/demo.flac")
    assert record["caption"].strip()
    assert record["windows"][0]["start"] == 0.0 and record["windows"][0]["end"] > 3.9
    assert record["note"].startswith("untrained demo model")
    assert "violin" in record["reference"]
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "processor_config.json").is_file()
    # A second run reuses the saved checkpoint and gives the same caption.
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=True)
    assert json.loads(again.stdout.strip().splitlines()[-1])["caption"] == record["caption"]
