"""
The authors' release, loaded as it is published.

The original release ("Tino3141/blap": a PyTorch Lightning `.ckpt` and the `config.json` of `BLAP2_Stage2_Config`) is
not a transformers folder: the core's loaders refuse it with one line naming [`original_release_folder`], which
returns the output of `blap convert-original` (weights-only loading, float32), made once and kept in the Hugging Face
cache, for `from_pretrained` and `pipeline(model=...)`:

    >>> from transformers import pipeline
    >>> from transformers_blap.conversion import original_release_folder
    >>> captioner = pipeline("audio-to-text", model=original_release_folder("Tino3141/blap"))

    <HF_HUB_CACHE>/blap-converted/models--Tino3141--blap/<commit hash>/    a Hub repository, per revision
    <HF_HUB_CACHE>/blap-converted/local/<fingerprint>/                    a local folder (path, file sizes and times)

The next call finds the converted folder and converts nothing. The language model's config and tokenizer
(`LLM.t5_model`, e.g. `google/flan-t5-xl`) and the Q-Former's base config (`bert-base-uncased`) come from folders of
those names in the release when it has them, else from the Hub, as for `blap convert-original`. `blap caption` and
`blap evaluate` pass their `--model` through [`model_or_converted_release`].
"""

import hashlib
import logging
import os
from pathlib import Path

import huggingface_hub
from filelock import FileLock
from huggingface_hub import constants
from huggingface_hub.file_download import repo_folder_name

from ..configuration_blap import is_original_release
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


def _hub_config(
    repo_id: str,
    revision: str | None,
    cache_dir: str | os.PathLike | None,
    token: str | bool | None,
    local_files_only: bool,
) -> Path:
    """The `config.json` of `repo_id` at `revision`, downloaded into the Hub cache (`snapshots/<commit>/`)."""
    return Path(
        huggingface_hub.hf_hub_download(
            repo_id,
            "config.json",
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
        )
    )


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
            config = _hub_config(repo_id, revision, cache_dir, token, local_files_only)
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


def original_release_folder(
    repo_or_path: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """
    The transformers folder of the original BLAP release at `repo_or_path`, converted on first use and kept in the
    Hugging Face cache (per commit for a Hub repository): load it with `from_pretrained` or `pipeline(model=...)`.

    Args:
        repo_or_path (`str` or `os.PathLike`): a local folder holding the release's `.ckpt` and `config.json`, or a
            Hub repository holding them, e.g. `"Tino3141/blap"`.
        revision (`str`, *optional*): the branch, tag or commit of a Hub repository (default: its main branch).
        cache_dir (`str` or `os.PathLike`, *optional*): the Hugging Face Hub cache (default `HF_HUB_CACHE`).
        token (`str` or `bool`, *optional*), local_files_only (`bool`, *optional*): for the download.

    Returns:
        `Path`: a complete transformers folder (model, generation config, processor, model card).

    Raises:
        [`ConversionError`]: `repo_or_path` is not the original release, or it cannot be downloaded or converted
        (the message says why).
    """
    if Path(repo_or_path).is_dir():
        if not is_original_release(repo_or_path):
            raise ConversionError(
                f"{os.fspath(repo_or_path)} holds no original BLAP config.json (BLAP2_Stage2_Config)."
            )
        return converted_release_folder(folder=repo_or_path, cache_dir=cache_dir)
    repo_id = str(repo_or_path)
    try:
        config_file = _hub_config(repo_id, revision, cache_dir, token, local_files_only)
    except Exception as error:
        raise ConversionError(f"cannot read the config.json of {repo_id}: {type(error).__name__}: {error}") from error
    if not is_original_release(config_file.parent):
        raise ConversionError(f"{repo_id} holds no original BLAP config.json (BLAP2_Stage2_Config).")
    # The Hub cache keeps a revision's files under snapshots/<commit hash>/.
    return converted_release_folder(
        repo_id=repo_id,
        revision=config_file.parent.name,
        cache_dir=cache_dir,
        token=token,
        local_files_only=local_files_only,
    )


def model_or_converted_release(name: str | os.PathLike) -> str | os.PathLike:
    """
    `name` itself, or [`original_release_folder`]`(name)` when `name` is the original release: for entry points that
    take any BLAP model (`blap caption --model`, `blap evaluate --model`).
    """
    return original_release_folder(name) if is_original_release(name) else name


__all__ = [
    "CONVERTED_CACHE_FOLDER",
    "converted_release_folder",
    "model_or_converted_release",
    "original_release_folder",
]
