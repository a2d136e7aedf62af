"""Caption audio files offline with a saved BLAP; by default the small demo checkpoint shipped in this repository.

Usage: python scripts/caption_demo.py [AUDIO ...] [--model DIR]

The default model, `demo/blap-synthetic`, is a small BLAP trained through stage 1 and stage 2 on the synthetic music
corpus by `python scripts/train_demo.py --export demo/blap-synthetic` (issue "proof that it learns"): it names the
instrument and tempo class of synthetic clips such as `examples/demo.flac` (held out from its training data), and knows
nothing of real music. Point `--model` at real converted weights (`blap convert-original ...`) for real captions.

Prints one JSON line per file: its caption, the windows it was captioned in, and, when a `<file>.json` with labels lies
beside it (as for the shipped example), the reference caption and labels.
"""

import argparse
import json
import sys
from pathlib import Path

from transformers import pipeline

import transformers_blap  # noqa: F401  (registers the "audio-to-text" pipeline)
from transformers_blap.synthetic import ATTRIBUTE_CLASSES

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO_ROOT / "demo" / "blap-synthetic"
DEMO_AUDIO = REPO_ROOT / "examples" / "demo.flac"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", nargs="*", type=Path, default=[DEMO_AUDIO], help="audio files (default: the example)")
    parser.add_argument("--model", type=Path, default=DEMO_MODEL, help="a saved BLAP folder (model + processor)")
    args = parser.parse_args(argv)
    if not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: expected a saved BLAP folder with config.json; there is none.")
    missing = [str(path) for path in args.audio if not path.is_file()]
    if missing:
        parser.error(f"audio: no such file(s): {', '.join(missing)}")

    captioner = pipeline("audio-to-text", model=str(args.model))
    for path, result in zip(args.audio, captioner([str(path) for path in args.audio])):
        record = {"path": str(path), "caption": result[0]["generated_text"], "windows": result[0]["windows"]}
        labels_file = path.with_suffix(".json")
        if labels_file.is_file():
            labels = json.loads(labels_file.read_text(encoding="utf-8"))
            record["reference"] = labels["caption"][0]
            record["labels"] = {name: labels[name] for name in ATTRIBUTE_CLASSES if name in labels}
        print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
