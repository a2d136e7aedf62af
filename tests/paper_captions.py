"""The captions of the BLAP paper's Tables 2 and 3 (`data/paper_caption_examples.json`) as test corpora."""

import json
from pathlib import Path

PAPER_CAPTIONS = json.loads((Path(__file__).parent / "data" / "paper_caption_examples.json").read_text())
CLIPS = PAPER_CAPTIONS["clips"]
# The five systems of the tables: BLAP, LP-MusicCaps, Salmonn, Qwen-Audio, Pengi.
SYSTEMS = tuple(CLIPS[0]["captions"])


def system_corpus(system: str) -> tuple[list[str], list[list[str]]]:
    """One system's captions of the three clips and, per clip, its one reference: the expert caption."""
    return [clip["captions"][system] for clip in CLIPS], [[clip["reference"]] for clip in CLIPS]


def pooled_corpus(system: str) -> tuple[list[str], list[list[str]]]:
    """
    A multi-reference corpus made of the same captions: `system`'s captions, each scored against the expert caption
    and the four other systems' captions of its clip (five references per clip).
    """
    predictions = [clip["captions"][system] for clip in CLIPS]
    references = [
        [clip["reference"], *(caption for name, caption in clip["captions"].items() if name != system)]
        for clip in CLIPS
    ]
    return predictions, references
