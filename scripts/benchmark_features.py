"""
Throughput of BlapFeatureExtractor against transformers.ClapFeatureExtractor, side by side in one process.

    python scripts/benchmark_features.py                       # 16 x 10 s clips on the CPU
    python scripts/benchmark_features.py --device cuda         # BLAP's features computed on the GPU
    python scripts/benchmark_features.py --threads 1           # BLAP single-threaded, like CLAP
    python scripts/benchmark_features.py --output bench.json   # also write the results as JSON

ClapFeatureExtractor is configured as the original BLAP front end (`frequency_min=50, frequency_max=14000,
truncation="rand_trunc"`). Both get the same batch of numpy float32 clips; each timing covers the whole call, from
the list of numpy arrays to the features (for BLAP on a GPU: including the copy to the device and a synchronisation).
The two run alternately, `--repeats` times each after a warm-up, and the ratio is taken between the median times. The
script also checks that both compute the same features.
"""

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import transformers
from transformers import ClapFeatureExtractor

try:
    from transformers_blap.feature_extraction_blap import BlapFeatureExtractor
except ImportError:  # run from a source checkout without installing
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from transformers_blap.feature_extraction_blap import BlapFeatureExtractor


def make_clips(num_clips: int, seconds: float, sampling_rate: int) -> list[np.ndarray]:
    """Music-like test clips (three tones and noise), float32 `(num_samples,)` each, reproducible."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    clips = []
    for _ in range(num_clips):
        frequencies = rng.uniform(60.0, 4000.0, size=3)
        tones = sum(0.2 * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in frequencies)
        clips.append((tones + 0.02 * rng.standard_normal(t.shape[0])).astype(np.float32))
    return clips


def time_call(function: Callable[[], object], synchronize: Callable[[], None]) -> float:
    synchronize()
    start = time.perf_counter()
    function()
    synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-clips", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=9, help="timed runs of each extractor (after one warm-up)")
    parser.add_argument("--device", default="cpu", help="where BLAP computes its features: cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, help="torch threads for BLAP (default: torch's default, one per core)")
    parser.add_argument("--output", help="write the results to this JSON file")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    clap = ClapFeatureExtractor(frequency_min=50, frequency_max=14_000, truncation="rand_trunc")
    blap = BlapFeatureExtractor()
    clips = make_clips(args.num_clips, args.seconds, blap.sampling_rate)

    def run_clap() -> torch.Tensor:
        return clap(clips, sampling_rate=clap.sampling_rate, return_tensors="pt")["input_features"]

    def run_blap() -> torch.Tensor:
        return blap(clips, sampling_rate=blap.sampling_rate, device=device)["input_features"]

    clap_features, blap_features = run_clap(), run_blap()  # warm-up (filter banks, FFT plans, CUDA context)
    max_abs_diff_db = (clap_features.float() - blap_features.cpu()).abs().max().item()

    times: dict[str, list[float]] = {"clap": [], "blap": []}
    for repeat in range(args.repeats):
        order = [("clap", run_clap), ("blap", run_blap)]
        for name, function in order if repeat % 2 == 0 else order[::-1]:
            times[name].append(time_call(function, synchronize))

    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["clap"] / medians["blap"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results = {
        "num_clips": args.num_clips,
        "seconds_per_clip": args.seconds,
        "repeats": args.repeats,
        "blap_device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": load,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "clap_median_s": medians["clap"],
        "blap_median_s": medians["blap"],
        "clap_min_s": min(times["clap"]),
        "blap_min_s": min(times["blap"]),
        "clap_times_s": times["clap"],
        "blap_times_s": times["blap"],
        "speedup_median": ratio,
        "speedup_min": min(times["clap"]) / min(times["blap"]),
        "max_abs_diff_db": max_abs_diff_db,
    }

    print(f"{args.num_clips} clips x {args.seconds:g} s, {args.repeats} runs each, BLAP on {device}")
    print(f"cpus {os.cpu_count()}, torch threads {torch.get_num_threads()}, load average {load}")
    print(f"{'extractor':<24}{'median s':>10}{'min s':>10}{'clips/s':>10}")
    for name, label in [("clap", "ClapFeatureExtractor"), ("blap", "BlapFeatureExtractor")]:
        clips_per_s = args.num_clips / medians[name]
        print(f"{label:<24}{medians[name]:>10.4f}{min(times[name]):>10.4f}{clips_per_s:>10.1f}")
    print(f"max |CLAP - BLAP| = {max_abs_diff_db:.2e} dB")
    print(f"speedup (median CLAP / median BLAP): {ratio:.2f}x")
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(results, handle, indent=2)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
