"""
Fetches, once and on a machine with network, what SPICE, Sentence-BERT similarity and FENSE need: the work of
`blap setup-metrics` (its parser and full description: `blap_cli.commands.add_setup_metrics_command`).
"""

import argparse
import hashlib
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import constants, snapshot_download

from ..network import root_cause
from .resources import (
    FENSE_CHECKPOINT_SHA256,
    FENSE_CHECKPOINT_URL,
    FENSE_ENCODER_REPO_ID,
    SBERT_REPO_ID,
    default_cache_dir,
    fense_checkpoint_path,
    fense_encoder_dir,
    missing_fense_files,
    missing_sbert_files,
    missing_spice_files,
    sbert_dir,
)

# Where pycocoevalcap's `get_stanford_models` downloads Stanford CoreNLP from (its own constants).
CORENLP_URL_TEMPLATE = "http://nlp.stanford.edu/software/{}.zip"
SBERT_FILES = ["*.json", "vocab.txt", "model.safetensors", "pytorch_model.bin", "1_Pooling/*", "README.md"]
FENSE_ENCODER_FILES = ["config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"]


class MetricSetupError(OSError):
    """A download of `blap setup-metrics` failed; the message names what, from where, and why, on one line."""


@contextmanager
def fetching(what: str, source: str) -> Iterator[None]:
    """Turns any failure inside into a one-line `MetricSetupError` naming `what` was fetched from `source`."""
    try:
        yield
    except Exception as error:
        raise MetricSetupError(
            f"could not fetch {what} from {source}: {root_cause(error)}. Check the network connection (or proxy),"
            " then run `blap setup-metrics` again, or copy the metrics cache of a machine where it ran"
            " (--cache-dir / BLAP_METRICS_CACHE)."
        ) from error


def download_file(url: str, destination: str | os.PathLike, sha256: str) -> Path:
    """
    Downloads `url` to `destination` and checks its SHA-256; the file appears only once complete and verified.

    Args:
        url (`str`): what to fetch (any scheme `urllib` opens).
        destination (`str` or `os.PathLike`): the file to write.
        sha256 (`str`): the expected hex digest.

    Returns:
        `Path`: `destination`.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=destination.parent, suffix=".part", delete=False) as partial:
        try:
            with urllib.request.urlopen(url) as response:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    digest.update(chunk)
                    partial.write(chunk)
        except BaseException:
            os.unlink(partial.name)
            raise
    if digest.hexdigest() != sha256:
        os.unlink(partial.name)
        raise ValueError(f"{url} has SHA-256 {digest.hexdigest()}, expected {sha256}; nothing was written")
    os.replace(partial.name, destination)
    return destination


def setup_spice() -> None:
    """Fetches Stanford CoreNLP 3.6.0 for SPICE with pycocoevalcap's `get_stanford_models`."""
    if not missing_spice_files():
        return
    from pycocoevalcap.spice import get_stanford_models as downloader

    with fetching("Stanford CoreNLP 3.6.0 for SPICE", CORENLP_URL_TEMPLATE.format(downloader.CORENLP)):
        downloader.get_stanford_models()


def _download_repo_files(what: str, repo_id: str, local_dir: Path, allow_patterns: list[str]) -> None:
    with fetching(what, f"{constants.ENDPOINT}/{repo_id}"):
        snapshot_download(repo_id, local_dir=local_dir, allow_patterns=allow_patterns)
    # snapshot_download leaves its bookkeeping next to the files; the cache holds only what loading reads.
    shutil.rmtree(local_dir / ".cache", ignore_errors=True)


def setup_sentence_bert(cache_dir: str | os.PathLike) -> None:
    """Fetches `paraphrase-TinyBERT-L6-v2` into the metrics cache."""
    if missing_sbert_files(cache_dir):
        _download_repo_files("the Sentence-BERT model", SBERT_REPO_ID, sbert_dir(cache_dir), SBERT_FILES)


def setup_fense(cache_dir: str | os.PathLike) -> None:
    """Fetches FENSE's fluency-error detector and its BERT's configuration and tokenizer into the metrics cache."""
    if not fense_checkpoint_path(cache_dir).is_file():
        with fetching("the FENSE fluency-error detector", FENSE_CHECKPOINT_URL):
            download_file(FENSE_CHECKPOINT_URL, fense_checkpoint_path(cache_dir), FENSE_CHECKPOINT_SHA256)
    if missing_fense_files(cache_dir):
        what = "the configuration and tokenizer of FENSE's BERT"
        _download_repo_files(what, FENSE_ENCODER_REPO_ID, fense_encoder_dir(cache_dir), FENSE_ENCODER_FILES)


def run(args: argparse.Namespace) -> int:
    """Fetches what is missing, as the parsed options say; returns the exit status."""
    cache_dir = default_cache_dir() if args.cache_dir is None else args.cache_dir
    if not args.skip_spice:
        setup_spice()
        print("SPICE: Stanford CoreNLP 3.6.0 is in place.")
    if not args.skip_fense:
        setup_sentence_bert(cache_dir)
        setup_fense(cache_dir)
        print(f"Sentence-BERT and FENSE: models are in {cache_dir}.")
        if Path(cache_dir) != default_cache_dir():
            print(f"Set BLAP_METRICS_CACHE={cache_dir} (or pass cache_dir=...) when computing the metrics.")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m transformers_blap.evaluation.setup_metrics`, the same as `blap setup-metrics`."""
    from blap_cli import main as blap_main

    return blap_main(["setup-metrics", *(argv or [])])


if __name__ == "__main__":
    raise SystemExit(main())
