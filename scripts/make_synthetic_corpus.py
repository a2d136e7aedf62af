"""
Render the synthetic labelled music corpus (`transformers_blap.synthetic`) as an audiofolder.

    python scripts/make_synthetic_corpus.py --output-dir synthetic-music --train 600 --test 75 --seed 0

writes `synthetic-music/train/*.flac` + `metadata.jsonl` and the same for `test`: 16 kHz mono clips with a caption
and their labels (instrument, tempo, bpm, dynamics, key, mode, rhythm). The output depends only on the arguments.
"""

import argparse
import time

from transformers_blap.synthetic import CLIP_SECONDS, SAMPLING_RATE, write_audiofolder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True, help="Folder to write the audiofolder into.")
    parser.add_argument("--train", type=int, default=600, help="Clips in the train split.")
    parser.add_argument("--test", type=int, default=75, help="Held-out clips in the test split.")
    parser.add_argument("--seed", type=int, default=0, help="The corpus seed.")
    parser.add_argument("--duration-s", type=float, default=CLIP_SECONDS, help="Clip length in seconds.")
    parser.add_argument("--sampling-rate", type=int, default=SAMPLING_RATE, help="Sampling rate in Hz.")
    parser.add_argument("--num-workers", type=int, default=2, help="Processes rendering clips.")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    write_audiofolder(
        args.output_dir,
        {"train": args.train, "test": args.test},
        seed=args.seed,
        duration_s=args.duration_s,
        sampling_rate=args.sampling_rate,
        num_workers=args.num_workers,
    )
    elapsed = time.perf_counter() - start
    print(f"Wrote {args.train} train and {args.test} test clips to {args.output_dir} in {elapsed:.1f} s.")


if __name__ == "__main__":
    main()
