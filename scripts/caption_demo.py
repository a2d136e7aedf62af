"""Caption an audio file offline with a small BLAP checkpoint.

Usage: python scripts/caption_demo.py [AUDIO ...] [--model DIR]

`--model` (default `demo/`) is used when it holds a saved BLAP (model + processor): the checkpoint that
`scripts/train_demo.py --export demo` trains on the synthetic corpus, or real converted weights
(`blap convert-original ...`). When it does not exist, a small *untrained* BLAP is built deterministically into it
(a T5 sentencepiece tokenizer trained on synthetic captions, random weights): the command then proves the whole path
— decoding, windows, feature extraction, Q-Former, T5 generation, the `audio-to-text` pipeline — offline, and its
captions are noise, which it says.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import pipeline

from transformers_blap import BlapConfig, BlapFeatureExtractor, BlapForConditionalGeneration, BlapProcessor
from transformers_blap.synthetic import caption_variants, clip_rng, sample_labels, train_t5_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
UNTRAINED_MARKER = "UNTRAINED.txt"


def build_untrained_demo(output_dir: Path, seed: int = 0) -> None:
    """Save a small BLAP with random weights and a tokenizer trained on synthetic captions into `output_dir`."""
    captions = [
        caption for index in range(200) for caption in caption_variants(sample_labels(index, clip_rng(seed, index)))
    ]
    prompt = "Describe the music."
    tokenizer = train_t5_tokenizer([*captions, prompt])
    config = BlapConfig(
        audio_config={"patch_embeds_hidden_size": 32, "depths": [1, 1, 2, 1], "num_attention_heads": [2, 2, 4, 4],
                      "window_size": 8, "spec_size": 256, "num_mel_bins": 64, "hidden_size": 256,
                      "projection_dim": 128, "enable_fusion": False},
        qformer_config={"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                        "intermediate_size": 256, "cross_attention_frequency": 2},
        text_config={"vocab_size": len(tokenizer), "d_model": 128, "d_kv": 32, "d_ff": 256, "num_layers": 2,
                     "num_decoder_layers": 2, "num_heads": 4, "feed_forward_proj": "gated-gelu",
                     "dense_act_fn": "gelu", "tie_word_embeddings": False, "decoder_start_token_id": 0},
        num_query_tokens=8,
        prompt=prompt,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = BlapForConditionalGeneration(config).eval()
    # Random weights favour <pad> and <unk>: suppress them so that the untrained captions show what decoding produces.
    model.generation_config.update(
        num_beams=3, max_new_tokens=20, min_length=5, suppress_tokens=[tokenizer.pad_token_id, tokenizer.unk_token_id]
    )
    processor = BlapProcessor(BlapFeatureExtractor(), tokenizer, prompt=prompt)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    (output_dir / UNTRAINED_MARKER).write_text(
        "Random weights built by scripts/caption_demo.py: the captions are noise. Train the demo model with"
        " `python scripts/train_demo.py --export demo` or convert the authors' release.\n",
        encoding="utf-8",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", nargs="*", type=Path, default=[REPO_ROOT / "examples" / "demo.flac"])
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "demo", help="a saved BLAP folder")
    args = parser.parse_args(argv)

    if not (args.model / "config.json").is_file():
        print(f"No checkpoint in {args.model}: building a small UNTRAINED BLAP there (captions will be noise).",
              file=sys.stderr)  # fmt: skip
        build_untrained_demo(args.model)
    untrained = (args.model / UNTRAINED_MARKER).is_file()

    captioner = pipeline("audio-to-text", model=str(args.model))
    for path, result in zip(args.audio, captioner([str(path) for path in args.audio])):
        record = {"path": str(path), "caption": result[0]["generated_text"], "windows": result[0]["windows"]}
        if untrained:
            record["note"] = "untrained demo model: the caption is noise"
        labels = path.with_suffix(".json")
        if labels.is_file():
            record["reference"] = json.loads(labels.read_text(encoding="utf-8"))["caption"][0]
        print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
