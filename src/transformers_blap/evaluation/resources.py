"""Where the downloadable parts of SPICE and FENSE live, and a clear error when they are missing.

PTB tokenization, BLEU, METEOR, ROUGE-L and CIDEr-D need only `pycocoevalcap` and a Java runtime. Three metrics need
files that no package registry ships; `blap setup-metrics` fetches them on a machine with network:

- SPICE: Stanford CoreNLP 3.6.0 (`stanford-corenlp-3.6.0.jar` and `stanford-corenlp-3.6.0-models.jar`), put next to
  `pycocoevalcap`'s `spice-1.0.jar` (its manifest looks for them in `lib/` there), exactly where pycocoevalcap's own
  `get_stanford_models` puts them.
- Sentence-BERT similarity and FENSE: the sentence-transformers model `paraphrase-TinyBERT-L6-v2`.
- FENSE: the fluency-error detector `echecker_clotho_audiocaps_base.ckpt` released with FENSE, and the configuration
  and tokenizer of the BERT it fine-tunes (`bert-base-uncased`).

The last two go to a cache folder: `$BLAP_METRICS_CACHE`, else `$XDG_CACHE_HOME/transformers_blap/metrics`, else
`~/.cache/transformers_blap/metrics`.
"""

import importlib.util
import os
import shutil
from pathlib import Path

SETUP_COMMAND = "blap setup-metrics"

SBERT_REPO_ID = "sentence-transformers/paraphrase-TinyBERT-L6-v2"
FENSE_CHECKPOINT_NAME = "echecker_clotho_audiocaps_base"
FENSE_CHECKPOINT_URL = (
    "https://github.com/blmoistawinde/fense/releases/download/V0.1/echecker_clotho_audiocaps_base.ckpt"
)
FENSE_CHECKPOINT_SHA256 = "1a719f090af70614bbdb9f9437530b7e133c48cfa4a58d964de0d47fc974a2fa"
FENSE_ENCODER_REPO_ID = "google-bert/bert-base-uncased"
FENSE_ENCODER_NAME = "bert-base-uncased"

# pycocoevalcap's SPICE folder, where its setup puts CoreNLP (a path that does not exist without the `eval` extra,
# so the SPICE files are then reported missing).
_PYCOCOEVALCAP = importlib.util.find_spec("pycocoevalcap")  # a namespace package: no origin, one search location
_PYCOCOEVALCAP_DIR = next(iter(_PYCOCOEVALCAP.submodule_search_locations)) if _PYCOCOEVALCAP else "pycocoevalcap"
SPICE_DIR = Path(_PYCOCOEVALCAP_DIR).resolve() / "spice"
SPICE_JAR = SPICE_DIR / "spice-1.0.jar"
CORENLP_JARS = (
    SPICE_DIR / "lib" / "stanford-corenlp-3.6.0.jar",
    SPICE_DIR / "lib" / "stanford-corenlp-3.6.0-models.jar",
)


class MissingMetricResourceError(RuntimeError):
    """A metric needs a file or program that is not on this machine; the message says which and how to get it."""


def default_cache_dir() -> Path:
    """The folder where the setup command puts the Sentence-BERT model and the FENSE detector."""
    if os.environ.get("BLAP_METRICS_CACHE"):
        return Path(os.environ["BLAP_METRICS_CACHE"]).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(cache_home).expanduser() / "transformers_blap" / "metrics"


def sbert_dir(cache_dir: str | os.PathLike) -> Path:
    """Local copy of the sentence-transformers model `paraphrase-TinyBERT-L6-v2`."""
    return Path(cache_dir) / "sentence-transformers" / SBERT_REPO_ID.split("/")[-1]


def fense_checkpoint_path(cache_dir: str | os.PathLike) -> Path:
    """Local copy of FENSE's fluency-error detector checkpoint."""
    return Path(cache_dir) / "fense" / f"{FENSE_CHECKPOINT_NAME}.ckpt"


def fense_encoder_dir(cache_dir: str | os.PathLike, model_type: str = FENSE_ENCODER_NAME) -> Path:
    """Configuration and tokenizer files of the BERT named by a FENSE checkpoint's `model_type`."""
    return Path(cache_dir) / "fense" / model_type


def require_java() -> str:
    """The path of `java`; raises `MissingMetricResourceError` when there is none on PATH."""
    java = shutil.which("java")
    if java is None:
        raise MissingMetricResourceError(
            "PTB tokenization, METEOR and SPICE run on Java, and no `java` is on PATH: install a Java runtime "
            "(8 or newer), e.g. `apt-get install default-jre-headless`."
        )
    return java


def missing_spice_files() -> list[str]:
    """Descriptions of the SPICE files that are absent (empty when SPICE can run)."""
    return [f"Stanford CoreNLP 3.6.0 for SPICE: {jar}" for jar in CORENLP_JARS if not jar.is_file()]


def missing_sbert_files(cache_dir: str | os.PathLike) -> list[str]:
    """Descriptions of the Sentence-BERT files that are absent."""
    model_dir = sbert_dir(cache_dir)
    if not (model_dir / "modules.json").is_file():
        return [f"the Sentence-BERT model {SBERT_REPO_ID}: {model_dir}"]
    return []


def missing_fense_files(cache_dir: str | os.PathLike) -> list[str]:
    """Descriptions of the FENSE fluency-error detector files that are absent."""
    missing = []
    checkpoint = fense_checkpoint_path(cache_dir)
    if not checkpoint.is_file():
        missing.append(f"the FENSE fluency-error detector checkpoint: {checkpoint}")
    encoder_dir = fense_encoder_dir(cache_dir)
    has_tokenizer = (encoder_dir / "tokenizer.json").is_file() or (encoder_dir / "vocab.txt").is_file()
    if not (encoder_dir / "config.json").is_file() or not has_tokenizer:
        missing.append(f"the configuration and tokenizer of {FENSE_ENCODER_NAME} for FENSE: {encoder_dir}")
    return missing


def raise_if_missing(missing: list[str], cache_dir: str | os.PathLike | None = None) -> None:
    """Raise `MissingMetricResourceError` listing `missing` and the command that fetches them."""
    if not missing:
        return
    command = SETUP_COMMAND if cache_dir is None else f"{SETUP_COMMAND} --cache-dir {cache_dir}"
    lines = "\n".join(f"  - {item}" for item in missing)
    raise MissingMetricResourceError(
        f"The requested caption metrics need files that are not on this machine:\n{lines}\n"
        f"On a machine with network, fetch them once with:\n  {command}\n"
        "or leave these metrics out: `blap evaluate --metrics ngram` (in Python `metrics=NGRAM_METRICS`) computes"
        " BLEU, METEOR, ROUGE-L and CIDEr-D offline."
    )
