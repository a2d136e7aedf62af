"""
What a saved BLAP folder needs to load with `trust_remote_code=True` where this package is not installed: the
`auto_map` and `custom_pipelines` entries of its JSON files, and the flat module files they name.

- `config.json`: `auto_map` for `AutoConfig` and `AutoModelForSpeechSeq2Seq`, and `custom_pipelines` naming
  `pipeline_audio_to_text.AudioToTextPipeline` (the class `pipeline(model=REPO, trust_remote_code=True)` builds);
- `processor_config.json`: `auto_map` for `AutoProcessor` and, on the nested feature extractor, `AutoFeatureExtractor`
  (written by the processor's own `save_pretrained`: the processor and the feature extractor register for their
  Auto classes in their modules).

`BlapForConditionalGeneration.save_pretrained` calls [`add_remote_code`] on the saved folder; `transformers_blap.hub`
(`blap push`) uses the same entries and files. This module is itself copied as remote code (the model imports it): it
imports only the standard library, `transformers` and its sibling configuration module.
"""

import json
import logging
import os
from pathlib import Path
from typing import Any

from transformers.dynamic_module_utils import get_relative_import_files

from .configuration_blap import BlapConfig

logger = logging.getLogger(__name__)

# The Auto class the custom pipeline loads the model with; it must be an attribute of `transformers`.
REMOTE_MODEL_AUTO_CLASS = "AutoModelForSpeechSeq2Seq"

# The task name of the pipeline in a Hub repository's `config.json` (`custom_pipelines`). It differs from the task
# this package registers, "audio-to-text", on purpose: `transformers.pipeline` looks a task up in `custom_pipelines`
# before its registry and then insists on `trust_remote_code=True`, so a repository listing "audio-to-text" there
# would break `pipeline("audio-to-text", model=REPO)` for users who have the package. With one custom entry,
# `pipeline(model=REPO, trust_remote_code=True)` picks it without a task name.
HUB_PIPELINE_TASK = "blap-audio-to-text"

# The tags of a BLAP repository's model card (the model's `model_tags`, so transformers' `push_to_hub` card has them).
HUB_TAGS = ("music", "music-captioning", "audio-captioning", "blap", "custom_code")

# `"module.Class"` as `auto_map` and `custom_pipelines` spell a class: the flat module file's name, no package.
MODEL_AUTO_MAP = {
    "AutoConfig": "configuration_blap.BlapConfig",
    REMOTE_MODEL_AUTO_CLASS: "modeling_blap.BlapForConditionalGeneration",
}
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_blap.BlapProcessor"}
FEATURE_EXTRACTOR_AUTO_MAP = {"AutoFeatureExtractor": "feature_extraction_blap.BlapFeatureExtractor"}
CUSTOM_PIPELINES = {
    HUB_PIPELINE_TASK: {
        "impl": "pipeline_audio_to_text.AudioToTextPipeline",
        "pt": [REMOTE_MODEL_AUTO_CLASS],
        "type": "multimodal",
    }
}


def remote_code_files() -> list[Path]:
    """
    The module files a repository needs for `trust_remote_code=True`, sorted by name: those named in `auto_map` /
    `custom_pipelines` and every module they import with `from .x import ...`. A module not beside this one (a model
    itself loaded as remote code, whose repository's other modules were not fetched) is left out with a warning.
    """
    folder = Path(__file__).parent
    references = [
        *MODEL_AUTO_MAP.values(),
        *PROCESSOR_AUTO_MAP.values(),
        *FEATURE_EXTRACTOR_AUTO_MAP.values(),
        *(entry["impl"] for entry in CUSTOM_PIPELINES.values()),
    ]
    files: dict[str, Path] = {}
    for reference in references:
        module_file = folder / f"{reference.rsplit('.', 1)[0]}.py"
        if not module_file.is_file():
            logger.warning("%s is not beside %s: a folder saved from here lacks it.", module_file.name, folder)
            continue
        for path in [module_file, *map(Path, get_relative_import_files(module_file))]:
            files[path.name] = path
    return [files[name] for name in sorted(files)]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file's content; malformed JSON is a `ValueError` naming the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def _with_auto_map(data: dict[str, Any], auto_map: dict[str, str]) -> dict[str, Any]:
    return {**data, "auto_map": {**(data.get("auto_map") or {}), **auto_map}}


def remote_code_json(folder: str | os.PathLike) -> dict[str, bytes]:
    """
    The JSON files of `folder` with the remote-code entries added, serialized as transformers writes them:
    `{file name: content}` for those of `config.json`, `processor_config.json` and `preprocessor_config.json` that
    exist. The folder is not changed.

    Raises:
        `ValueError`: `config.json` is not a BLAP model's. `FileNotFoundError`: the folder has none of the three.
    """
    folder = Path(folder)
    updated = {}
    config_file = folder / "config.json"
    if config_file.is_file():
        config = read_json(config_file)
        if config.get("model_type") != BlapConfig.model_type:
            raise ValueError(
                f"{config_file} describes model_type={config.get('model_type')!r}, not a"
                f" {BlapConfig.model_type!r} model."
            )
        updated["config.json"] = {**_with_auto_map(config, MODEL_AUTO_MAP), "custom_pipelines": CUSTOM_PIPELINES}
    processor_file = folder / "processor_config.json"
    if processor_file.is_file():
        processor = _with_auto_map(read_json(processor_file), PROCESSOR_AUTO_MAP)
        if isinstance(processor.get("feature_extractor"), dict):
            processor["feature_extractor"] = _with_auto_map(processor["feature_extractor"], FEATURE_EXTRACTOR_AUTO_MAP)
        updated["processor_config.json"] = processor
    feature_extractor_file = folder / "preprocessor_config.json"
    if feature_extractor_file.is_file():
        updated["preprocessor_config.json"] = _with_auto_map(
            read_json(feature_extractor_file), FEATURE_EXTRACTOR_AUTO_MAP
        )
    if not updated:
        raise FileNotFoundError(
            f"{folder} holds no config.json, processor_config.json or preprocessor_config.json: save the model and the"
            " processor there first."
        )
    return {
        name: (json.dumps(content, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
        for name, content in updated.items()
    }


def add_remote_code(save_directory: str | os.PathLike) -> list[Path]:
    """
    Make a saved BLAP folder loadable with `trust_remote_code=True` and without this package: write the `auto_map` and
    `custom_pipelines` entries into its JSON files ([`remote_code_json`]) and copy the code files
    ([`remote_code_files`]) beside them. Idempotent. `BlapForConditionalGeneration.save_pretrained` calls it.

    Args:
        save_directory (`str` or `os.PathLike`): a folder holding the model's `config.json` and/or the processor's
            `processor_config.json`.

    Returns:
        `list[Path]`: the files written.
    """
    folder = Path(save_directory)
    written = []
    for name, content in remote_code_json(folder).items():
        (folder / name).write_bytes(content)
        written.append(folder / name)
    for source in remote_code_files():
        (folder / source.name).write_bytes(source.read_bytes())
        written.append(folder / source.name)
    return written


__all__ = [
    "CUSTOM_PIPELINES",
    "HUB_PIPELINE_TASK",
    "HUB_TAGS",
    "MODEL_AUTO_MAP",
    "REMOTE_MODEL_AUTO_CLASS",
    "add_remote_code",
    "read_json",
    "remote_code_files",
    "remote_code_json",
]
