"""
Peak memory of converting the original BLAP release, measured on a synthetic original-format checkpoint with the
release's real shapes (HTS-AT tiny, BERT-base Q-Former, 32 query tokens, Flan-T5-XL: ~3.0 B parameters, ~12 GB in
float32).

The synthetic checkpoint is written without materialising its weights (untouched, lazily zeroed pages are what
`torch.save` reads), so writing it needs little memory but the disk space of the checkpoint; the conversion writes
about as much again (float32). The conversion runs in a child process; its peak resident set (`VmHWM`, which counts
the memory-mapped checkpoint pages it touched) and its peak anonymous memory (`RssAnon`, sampled every 0.1 s: memory
that is not a reclaimable file mapping) are reported against the checkpoint size.

    python scripts/benchmark_conversion_memory.py --workdir /tmp/blap-memory [--text-dims xl] [--dtype float32 ...]

`--text-dims base` / `large` run the same measurement with a smaller T5 in a fraction of the time and disk.
"""

import argparse
import json
import math
import mmap
import os
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the original-format layout shared with the tests

import torch  # noqa: E402
from transformers import BertConfig, T5Config  # noqa: E402

from original_format import (  # noqa: E402
    RELEASE_DIMS,
    OriginalDims,
    fixed_value,
    lightning_checkpoint,
    original_tensor_specs,
)

# Flan-T5 sizes: (d_model, d_kv, heads, d_ff, layers).
TEXT_DIMS = {
    "base": (768, 64, 12, 2048, 12),
    "large": (1024, 64, 16, 2816, 24),
    "xl": (2048, 64, 32, 5120, 24),
}
FIXTURE = Path(os.environ.get("BLAP_FIXTURE_DIR", REPO_ROOT.parent / "shared" / "fixtures" / "original-blap-tiny"))


def dims_for(text: str) -> OriginalDims:
    d_model, d_kv, heads, d_ff, layers = TEXT_DIMS[text]
    return replace(
        RELEASE_DIMS,
        t5_d_model=d_model,
        t5_d_kv=d_kv,
        t5_heads=heads,
        t5_d_ff=d_ff,
        t5_layers=layers,
        t5_decoder_layers=layers,
    )


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype, keep_alive: list) -> torch.Tensor:
    """
    Zeros in a private anonymous mapping: reading them maps the kernel's shared zero page, so `torch.save` writes
    the tensor without it ever occupying memory.
    """
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if nbytes < 1 << 20:
        return torch.zeros(shape, dtype=dtype)
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    keep_alive.append(buffer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the given buffer is not writable": it is, privately
        return torch.frombuffer(buffer, dtype=dtype).view(shape)


def write_release(folder: Path, dims: OriginalDims, tokenizer_dir: Path) -> int:
    """Write `blap_stage2.ckpt`, `config.json`, `bert-base-uncased/` and `flan-t5-bench/` to `folder`."""
    state_dict, buffers = {}, []
    for key, (shape, dtype) in original_tensor_specs(dims).items():
        value = fixed_value(key, shape)
        state_dict[key] = value.to(dtype) if value is not None else lazy_zeros(shape, dtype, buffers)
    shared = state_dict["t5_model.shared.weight"]
    state_dict["t5_model.encoder.embed_tokens.weight"] = shared
    state_dict["t5_model.decoder.embed_tokens.weight"] = shared
    torch.save(lightning_checkpoint(state_dict), folder / "blap_stage2.ckpt")

    config = json.loads((FIXTURE / "config.json").read_text())
    config.update(num_query_tokens=dims.num_query_tokens, embed_dim=256)
    config["LLM"]["t5_model"] = "flan-t5-bench"
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    BertConfig().save_pretrained(folder / "bert-base-uncased")
    shutil.copytree(tokenizer_dir, folder / "flan-t5-bench", dirs_exist_ok=True)
    t5 = T5Config(
        vocab_size=dims.t5_vocab,
        d_model=dims.t5_d_model,
        d_kv=dims.t5_d_kv,
        num_heads=dims.t5_heads,
        d_ff=dims.t5_d_ff,
        num_layers=dims.t5_layers,
        num_decoder_layers=dims.t5_decoder_layers,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
    )
    (folder / "flan-t5-bench" / "config.json").write_text(t5.to_json_string())
    return (folder / "blap_stage2.ckpt").stat().st_size


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def measure_conversion(folder: Path, output: Path, dtype: str) -> dict:
    """Convert in a child process; return its wall time, peak RSS (VmHWM) and peak anonymous RSS."""
    code = (
        "import sys; from transformers_blap.conversion.original import convert_original_checkpoint;"
        f"convert_original_checkpoint({str(folder / 'blap_stage2.ckpt')!r}, {str(folder / 'config.json')!r},"
        f" {str(output)!r}, dtype={dtype!r}, overwrite=True);"
        "print(open('/proc/self/status').read(), file=sys.stderr)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    peak_anon = 0
    while child.poll() is None:
        peak_anon = max(peak_anon, _status_kib(child.pid, "RssAnon"))
        time.sleep(0.1)
    stderr = child.stderr.read()
    if child.returncode != 0:
        raise SystemExit(f"conversion failed:\n{stderr}")
    final = {line.split(":")[0]: line.split(":")[1].split()[0] for line in stderr.splitlines() if "kB" in line}
    return {
        "seconds": time.perf_counter() - start,
        "peak_rss_bytes": int(final["VmHWM"]) * 1024,
        "peak_anon_bytes": max(peak_anon, int(final["RssAnon"])) * 1024,
        "output_bytes": sum(p.stat().st_size for p in output.glob("*.safetensors")),
        "shards": len(list(output.glob("*.safetensors"))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="scratch folder (needs ~2x the checkpoint)")
    parser.add_argument("--text-dims", choices=sorted(TEXT_DIMS), default="xl", help="T5 size (default: xl, real)")
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--tokenizer-dir", type=Path, default=FIXTURE / "flan-t5-tiny")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic checkpoint and outputs")
    args = parser.parse_args()

    dims = dims_for(args.text_dims)
    release = args.workdir / f"release-{args.text_dims}"
    release.mkdir(parents=True, exist_ok=True)
    needed = sum(math.prod(shape) * 4 for shape, _ in original_tensor_specs(dims).values())
    free = shutil.disk_usage(args.workdir).free
    if free < 2.2 * needed:
        raise SystemExit(f"{args.workdir} has {free / 1e9:.1f} GB free; this run needs about {2.2 * needed / 1e9:.1f}")
    start = time.perf_counter()
    size = write_release(release, dims, args.tokenizer_dir)
    print(
        f"synthetic checkpoint: {size / 1e9:.2f} GB ({args.text_dims}), written in {time.perf_counter() - start:.0f}s"
    )
    try:
        for dtype in args.dtype:
            result = measure_conversion(release, args.workdir / f"converted-{args.text_dims}-{dtype}", dtype)
            gb = {name: result[name] / 1e9 for name in ("output_bytes", "peak_rss_bytes", "peak_anon_bytes")}
            print(
                f"{dtype}: {result['seconds']:.0f}s, {result['shards']} shard(s), {gb['output_bytes']:.2f} GB;"
                f" peak RSS {gb['peak_rss_bytes']:.2f} GB = {result['peak_rss_bytes'] / size:.2f} x checkpoint"
                f" (touched checkpoint pages included); peak anonymous {gb['peak_anon_bytes']:.2f} GB ="
                f" {result['peak_anon_bytes'] / size:.2f} x checkpoint"
            )
            if not args.keep:
                shutil.rmtree(args.workdir / f"converted-{args.text_dims}-{dtype}")
    finally:
        if not args.keep:
            shutil.rmtree(release)


if __name__ == "__main__":
    main()
