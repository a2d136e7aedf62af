"""
The shipped stage-1 demo checkpoint (`demo/blap-synthetic-stage1`) makes `blap index` / `blap search` work offline:
the synthetic corpus' held-out clips are indexed, and the query built from a clip's labels finds a clip with that
instrument and tempo among the 5 best tracks far above chance.
"""

import runpy
from math import comb
from pathlib import Path

import pytest
import torch

from transformers_blap import BlapForRepresentationLearning, BlapStage1Processor
from transformers_blap.cli import main
from transformers_blap.search import AudioSearchIndex
from transformers_blap.synthetic import TEMPO_WORDS, write_example

ROOT = Path(__file__).resolve().parents[1]
DEMO_STAGE1 = ROOT / "demo" / "blap-synthetic-stage1"
TOP = 5


@pytest.fixture(scope="module")
def held_out_clips(tmp_path_factory) -> list[dict]:
    """The held-out split of the variant the demo was trained with (`--variant ci`, seed 0): the clips that follow
    its training clips, rendered one by one (`write_example` gives the same files as `write_audiofolder`)."""
    variant = runpy.run_path(str(ROOT / "scripts" / "train_demo.py"))["VARIANTS"]["ci"]
    assert "--variant ci" in (DEMO_STAGE1 / "README.md").read_text(encoding="utf-8")
    folder = tmp_path_factory.mktemp("held-out")
    first = variant.train_clips
    rows = []
    for index in range(first, first + variant.test_clips):
        path = folder / f"clip{index:04d}.flac"
        rows.append({**write_example(path, index), "path": str(path.resolve())})
        path.with_suffix(".json").unlink()  # only the audio is indexed
    return rows


def query_of(row: dict) -> str:
    return f"A {TEMPO_WORDS[row['tempo']][0]} tune played on the {row['instrument']}."


def test_label_queries_find_the_instrument_and_tempo_in_the_top_5(held_out_clips, tmp_path):
    index_dir = tmp_path / "index"
    command = ["index", str(Path(held_out_clips[0]["path"]).parent), "--model", str(DEMO_STAGE1)]
    assert main([*command, "--output", str(index_dir), "--no-progress"]) == 0
    index = AudioSearchIndex.load(index_dir)
    assert len(index.tracks) == len(held_out_clips)

    model = BlapForRepresentationLearning.from_pretrained(DEMO_STAGE1).eval()
    processor = BlapStage1Processor.from_pretrained(DEMO_STAGE1)
    with torch.no_grad():
        text = processor(text=[query_of(row) for row in held_out_clips])
        text_embeds = model.get_text_embeddings(text["input_ids"], text["attention_mask"])
    labels = {row["path"]: (row["instrument"], row["tempo"]) for row in held_out_clips}
    found, chance = [], []
    for row, hits in zip(held_out_clips, index.search_embeddings(text_embeds.numpy(), k=TOP)):
        wanted = (row["instrument"], row["tempo"])
        assert len(hits) == TOP
        found.append(any(labels[hit.path] == wanted for hit in hits))
        # Chance: 5 distinct clips drawn at random include at least one of the clips with these labels.
        matching = sum(label == wanted for label in labels.values())
        chance.append(1 - comb(len(labels) - matching, TOP) / comb(len(labels), TOP))
    hit_rate, chance_rate = sum(found) / len(found), sum(chance) / len(chance)
    print(f"top-{TOP} instrument+tempo hit rate {hit_rate:.3f}, chance {chance_rate:.3f}")
    assert hit_rate >= 0.8 and hit_rate >= 2 * chance_rate, (hit_rate, chance_rate)
