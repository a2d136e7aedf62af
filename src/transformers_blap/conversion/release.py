"""
The authors' release, loaded as it is published.

`BlapForConditionalGeneration.from_pretrained("Tino3141/blap")`, `BlapProcessor.from_pretrained(...)` and
`pipeline("audio-to-text", model="Tino3141/blap")` recognise a Hub repository or local folder in the original
format (its PyTorch Lightning `.ckpt` and `config.json`, no `model.safetensors`; see
`configuration_blap.original_release_source`) and load the folder that [`converted_release_folder`] returns: the
output of `blap convert-original` (weights-only loading, float32), made once and kept in the Hugging Face cache:

    <HF_HUB_CACHE>/blap-converted/models--Tino3141--blap/<commit hash>/    a Hub repository, per revision
    <HF_HUB_CACHE>/blap-converted/local/<fingerprint>/                    a local folder (path, file sizes and times)

The next load finds the converted folder and converts nothing. The language model's config and tokenizer
(`LLM.t5_model`, e.g. `google/flan-t5-xl`) and the Q-Former's base config (`bert-base-uncased`) come from folders of
those names in the release when it has them, else from the Hub, as for `blap convert-original`.
"""

import hashlib
import logging
import os
from pathlib import Path

import huggingface_hub
from filelock import FileLock
from huggingface_hub import constants
from huggingface_hub.file_download import repo_folder_name

from .original import (
    DEFAULT_QFORMER_MODEL,
    convert_original_checkpoint,
    download_original_release,
    load_original_config,
)
from .validation import ConversionError

logger = logging.getLogger(__name__)

CONVERTED_CACHE_FOLDER = "blap-converted"


def _local_fingerprint(folder: Path) -> str:
    """Identifies a local release folder's state: its path and the names, sizes and times of its `.ckpt` and config."""
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for path in sorted([folder / "config.json", *folder.glob("*.ckpt")]):
        stat = path.stat()
        digest.update(f"\0{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def converted_release_folder(
    folder: str | os.PathLike | None = None,
    repo_id: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """
    The converted folder of an original BLAP release, converting it on first use.

    Args:
        folder (`str` or `os.PathLike`, *optional*): a local folder with the release's `.ckpt` and `config.json`.
        repo_id (`str`, *optional*): or a Hub repository holding them (with `revision`).
        revision (`str`, *optional*): the commit hash of `repo_id` to convert; the cache is keyed by it.
        cache_dir (`str` or `os.PathLike`, *optional*): the Hugging Face Hub cache (default `HF_HUB_CACHE`).
        token (`str` or `bool`, *optional*), local_files_only (`bool`, *optional*): for the download.

    Returns:
        `Path`: a complete transformers folder (model, generation config, processor, model card).

    Raises:
        [`ConversionError`]: the release cannot be downloaded or converted (the message says why).
    """
    if (folder is None) == (repo_id is None):
        raise ValueError("Pass either `folder` or `repo_id`.")
    root = Path(cache_dir or constants.HF_HUB_CACHE) / CONVERTED_CACHE_FOLDER
    if repo_id is not None:
        if not revision:
            raise ValueError("A Hub repository is converted per revision: pass its commit hash as `revision`.")
        target = root / repo_folder_name(repo_id=repo_id, repo_type="model") / revision
        source = f"{repo_id}@{revision}"
    else:
        folder = Path(folder)
        target = root / "local" / _local_fingerprint(folder)
        source = str(folder)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f"{target.name}.lock")):
        if (target / "config.json").is_file():  # converted by another process meanwhile
            return target
        if repo_id is not None:
            config = Path(
                huggingface_hub.hf_hub_download(
                    repo_id,
                    "config.json",
                    revision=revision,
                    cache_dir=cache_dir,
                    token=token,
                    local_files_only=local_files_only,
                )
            )
            base_models = (load_original_config(config)["LLM"]["t5_model"], DEFAULT_QFORMER_MODEL)
            checkpoint, config = download_original_release(
                repo_id,
                revision=revision,
                base_models=base_models,
                cache_dir=cache_dir,
                token=token,
                local_files_only=local_files_only,
            )
        else:
            checkpoints = sorted(folder.glob("*.ckpt"))
            if len(checkpoints) != 1:
                raise ConversionError(
                    f"{source} has an original BLAP config.json, so it should hold one .ckpt beside it; found"
                    f" {[path.name for path in checkpoints]}."
                )
            checkpoint, config = checkpoints[0], folder / "config.json"
        logger.warning("Converting the original BLAP release %s once, into %s.", source, target)
        convert_original_checkpoint(checkpoint, config, target)
    return target


__all__ = ["CONVERTED_CACHE_FOLDER", "converted_release_folder"]
