"""
Publishing BLAP on the Hugging Face Hub: remote code, the custom pipeline entry and the model card.

A published repository loads two ways: with this package installed (`import transformers_blap`, then the Auto* classes
and `pipeline("audio-to-text", ...)`), and without it through `trust_remote_code=True`. For the second, the repository
carries the package's flat modules (configuration, feature extraction, processing, modeling, pipeline, audio) and
JSON entries that point at them:

- `config.json`: `auto_map` for `AutoConfig` and `AutoModelForSpeechSeq2Seq`, and `custom_pipelines` naming
  `pipeline_audio_to_text.AudioToTextPipeline` (the class `pipeline(model=REPO, trust_remote_code=True)` builds);
- `processor_config.json`: `auto_map` for `AutoProcessor` and, on the nested feature extractor, `AutoFeatureExtractor`.

[`install_hub_support`] (run when the package is imported) makes `save_pretrained` / `push_to_hub` of the model and
the processor write all of that; [`add_remote_code`] completes a folder saved some other way, and [`push_folder`] (the
`blap push` command) uploads a folder with everything it needs in one commit.
"""

import importlib.metadata
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData
from packaging.requirements import Requirement
from transformers import PreTrainedModel
from transformers.dynamic_module_utils import get_imports, get_relative_import_files

from .configuration_blap import BlapConfig
from .evaluation.report import BENCHMARK_TITLES, PUBLISHED_TABLE1, TABLE1_COLUMNS
from .feature_extraction_blap import BlapFeatureExtractor
from .modeling_blap import BLAP_GENERATION_DEFAULTS, BlapForConditionalGeneration
from .pipeline_audio_to_text import AudioToTextPipeline
from .processing_blap import BlapProcessor

# The Auto class the custom pipeline loads the model with; it must be an attribute of `transformers`.
REMOTE_MODEL_AUTO_CLASS = "AutoModelForSpeechSeq2Seq"

# The task name of the pipeline in a Hub repository's `config.json` (`custom_pipelines`). It differs from the task
# this package registers, "audio-to-text", on purpose: `transformers.pipeline` looks a task up in `custom_pipelines`
# before its registry and then insists on `trust_remote_code=True`, so a repository listing "audio-to-text" there
# would break `pipeline("audio-to-text", model=REPO)` for users who have the package. With one custom entry,
# `pipeline(model=REPO, trust_remote_code=True)` picks it without a task name.
HUB_PIPELINE_TASK = "blap-audio-to-text"

# The Hub has no "audio-to-text" task tag; "audio-text-to-text" is the nearest: audio (and a text prompt) in, text out.
CARD_PIPELINE_TAG = "audio-text-to-text"
DEFAULT_LICENSE = "apache-2.0"
DEFAULT_BASE_MODEL = "google/flan-t5-xl"
DEFAULT_TAGS = ("music", "music-captioning", "audio-captioning", "blap", "custom_code")

PAPER_TITLE = "BLAP: Bootstrapping Language-Audio Pre-training for Music Captioning"
PAPER_URL = "https://openreview.net/forum?id=23LTPLTB88"
CITATION = """@inproceedings{lanzendoerfer2024blap,
  title     = {{BLAP}: Bootstrapping Language-Audio Pre-training for Music Captioning},
  author    = {Lanzend{\\"o}rfer, Luca A. and Pinkl, Constantin and Perraudin, Nathana{\\"e}l and Wattenhofer, Roger},
  booktitle = {Audio Imagination: NeurIPS 2024 Workshop on AI-Driven Speech, Music, and Sound Generation},
  year      = {2024},
  url       = {https://openreview.net/forum?id=23LTPLTB88}
}"""

# Hub ids of the benchmarks (`model-index` names a data set by its Hub id where there is one).
BENCHMARK_DATASET_IDS = {
    "musiccaps": "google/MusicCaps",
    "song_describer": "renumics/song-describer-dataset",
    "yt8m_musictextclips": "yt8m_musictextclips",
}


def eval_results_from_report(report: dict[str, Any]) -> list[dict[str, Any]]:
    """
    `model-index` results (x100, as in the paper) from a `blap evaluate` report (`report.json`).

    Args:
        report (`dict`): the report `transformers_blap.evaluation.run_evaluation` writes.

    Returns:
        `list[dict]`: one result per metric, for [`render_model_card`]'s `eval_results`.
    """
    try:
        benchmark = report["benchmark"]["benchmark"]
        split = report["benchmark"].get("split")
        scores = report["metrics_x100"]
    except (KeyError, TypeError) as error:
        raise ValueError(f"Not a `blap evaluate` report (missing {error}).") from error
    return [
        {
            "dataset_type": BENCHMARK_DATASET_IDS.get(benchmark, benchmark),
            "dataset_name": BENCHMARK_TITLES.get(benchmark, benchmark),
            "dataset_split": split,
            "metric_type": metric,
            "metric_name": TABLE1_COLUMNS.get(metric, metric),
            "metric_value": value,
        }
        for metric, value in scores.items()
    ]


# Table 1 of the paper. Only the original release's weights may claim it: pass it to `render_model_card`
# (`eval_results=PAPER_RESULTS`, `blap push --paper-results`) when publishing a conversion of that checkpoint.
PAPER_RESULTS = [
    {
        "dataset_type": BENCHMARK_DATASET_IDS[benchmark],
        "dataset_name": BENCHMARK_TITLES[benchmark],
        "metric_type": metric,
        "metric_name": TABLE1_COLUMNS[metric],
        "metric_value": value,
        "source_name": "BLAP paper, Table 1",
        "source_url": PAPER_URL,
    }
    for benchmark, rows in PUBLISHED_TABLE1.items()
    for metric, value in rows["BLAP"].items()
]

TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"
_REMOTE_CLASSES = (BlapConfig, BlapForConditionalGeneration, BlapFeatureExtractor, BlapProcessor, AudioToTextPipeline)


def _class_reference(cls: type) -> str:
    """`"module.Class"` as `auto_map` and `custom_pipelines` spell it (the module file's name, no package)."""
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


MODEL_AUTO_MAP = {
    "AutoConfig": _class_reference(BlapConfig),
    REMOTE_MODEL_AUTO_CLASS: _class_reference(BlapForConditionalGeneration),
}
PROCESSOR_AUTO_MAP = {"AutoProcessor": _class_reference(BlapProcessor)}
FEATURE_EXTRACTOR_AUTO_MAP = {"AutoFeatureExtractor": _class_reference(BlapFeatureExtractor)}
CUSTOM_PIPELINES = {
    HUB_PIPELINE_TASK: {
        "impl": _class_reference(AudioToTextPipeline),
        "pt": [REMOTE_MODEL_AUTO_CLASS],
        "type": "multimodal",
    }
}


def remote_code_files() -> list[Path]:
    """
    The package's files a repository needs for `trust_remote_code=True`: the modules defining the classes in
    `auto_map` / `custom_pipelines` and every module they import with `from .x import ...`.
    """
    files: dict[str, Path] = {}
    for cls in _REMOTE_CLASSES:
        module_file = Path(__import__(cls.__module__, fromlist=["_"]).__file__)
        for path in [module_file, *map(Path, get_relative_import_files(module_file))]:
            files[path.name] = path
    return [files[name] for name in sorted(files)]


def remote_code_requirements() -> list[str]:
    """
    What loading with `trust_remote_code=True` needs installed: every package the code files import, as transformers'
    remote-code loader finds them (`transformers.dynamic_module_utils.get_imports`: imports outside `try` blocks,
    function bodies included; it refuses to load a Hub repository while one is missing), standard library left out.
    Each carries this package's own version bounds for it.

    Returns:
        `list[str]`: pip requirements, sorted by name, e.g. `["av>=18.1.0", "numpy>=2.4.6", ...]`.
    """
    imported = {name for path in remote_code_files() for name in get_imports(path)} - set(sys.stdlib_module_names)
    try:
        declared = {Requirement(line).name: Requirement(line) for line in importlib.metadata.requires(__package__)}
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        declared = {}
    requirements = []
    for name in sorted(imported):
        requirement = declared.get(name)
        requirements.append(f"{name}{requirement.specifier}" if requirement else name)
    return requirements


# --------------------------------------------------------------------------------------------- folder completion


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def _json_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _remote_code_json(folder: Path) -> dict[str, dict[str, Any]]:
    """
    The JSON files of `folder` with the remote-code entries added: `{file name: content}` for those of
    `config.json`, `processor_config.json` and `preprocessor_config.json` that exist.
    """
    updated = {}
    config_file = folder / "config.json"
    if config_file.is_file():
        config = _read_json(config_file)
        if config.get("model_type") != BlapConfig.model_type:
            raise ValueError(
                f"{config_file} describes model_type={config.get('model_type')!r}, not a"
                f" {BlapConfig.model_type!r} model."
            )
        config["auto_map"] = {**config.get("auto_map", {}), **MODEL_AUTO_MAP}
        config["custom_pipelines"] = CUSTOM_PIPELINES
        updated["config.json"] = config

    processor_file = folder / "processor_config.json"
    if processor_file.is_file():
        processor = _read_json(processor_file)
        processor["auto_map"] = {**processor.get("auto_map", {}), **PROCESSOR_AUTO_MAP}
        if isinstance(processor.get("feature_extractor"), dict):
            nested = processor["feature_extractor"]
            nested["auto_map"] = {**nested.get("auto_map", {}), **FEATURE_EXTRACTOR_AUTO_MAP}
        updated["processor_config.json"] = processor
    feature_extractor_file = folder / "preprocessor_config.json"
    if feature_extractor_file.is_file():
        feature_extractor = _read_json(feature_extractor_file)
        feature_extractor["auto_map"] = {**feature_extractor.get("auto_map", {}), **FEATURE_EXTRACTOR_AUTO_MAP}
        updated["preprocessor_config.json"] = feature_extractor
    if not updated:
        raise FileNotFoundError(
            f"{folder} holds no config.json, processor_config.json or preprocessor_config.json: save the model and the"
            " processor there first."
        )
    return updated


def add_remote_code(save_directory: str | os.PathLike) -> list[Path]:
    """
    Make a saved BLAP folder loadable with `trust_remote_code=True` and without this package: write the `auto_map` and
    `custom_pipelines` entries into its JSON files and copy the code files beside them. Idempotent. The
    model's `save_pretrained` calls it (see [`install_hub_support`]).

    Args:
        save_directory (`str` or `os.PathLike`): a folder holding the model's `config.json` and/or the processor's
            `processor_config.json`.

    Returns:
        `list[Path]`: the files written.
    """
    folder = Path(save_directory)
    written = []
    for name, content in _remote_code_json(folder).items():
        (folder / name).write_bytes(_json_bytes(content))
        written.append(folder / name)
    for source in remote_code_files():
        (folder / source.name).write_bytes(source.read_bytes())
        written.append(folder / source.name)
    return written


# ---------------------------------------------------------------------------------------------------- model card


def _as_eval_result(result: EvalResult | dict[str, Any]) -> EvalResult:
    if isinstance(result, EvalResult):
        return result
    if not isinstance(result, dict):
        raise TypeError(f"An eval result must be a dict or a huggingface_hub.EvalResult, got {type(result).__name__}.")
    result = {"task_type": "audio-captioning", "task_name": "Music captioning", **result}
    try:
        return EvalResult(**result)
    except TypeError as error:
        raise ValueError(f"Bad eval result {result}: {error}") from error


def render_model_card(
    config: BlapConfig,
    repo_id: str | None = None,
    *,
    model_name: str | None = None,
    license: str = DEFAULT_LICENSE,
    base_model: str | Sequence[str] | None = DEFAULT_BASE_MODEL,
    datasets: Sequence[str] | None = None,
    tags: Iterable[str] = (),
    eval_results: Sequence[EvalResult | dict[str, Any]] | None = None,
    description: str | None = None,
) -> ModelCard:
    """
    The model card of a BLAP repository, rendered from `templates/model_card.md`.

    Args:
        config ([`BlapConfig`]): the model's configuration (sizes and prompt are described from it).
        repo_id (`str`, *optional*): the repository id used in the usage snippets; `"path/to/blap"` when unknown.
        model_name (`str`, *optional*): the name in the title and in `model-index`; defaults to the repository name.
        license (`str`, *optional*, defaults to `"apache-2.0"`): the weights' license (a Hub license id).
        base_model (`str` or `list[str]`, *optional*, defaults to `"google/flan-t5-xl"`): what the weights start from.
        datasets (`list[str]`, *optional*): Hub ids of the training / fine-tuning data sets.
        tags (`Iterable[str]`, *optional*): added to BLAP's default tags.
        eval_results (`list[dict | EvalResult]`, *optional*): known evaluation results, written as `model-index`.
            Dicts take `EvalResult`'s fields; `task_type` defaults to `"audio-captioning"`. [`PAPER_RESULTS`] are the
            paper's numbers for the original release.
        description (`str`, *optional*): a paragraph about these weights (training, provenance).

    Returns:
        `huggingface_hub.ModelCard`: validated on construction (bad metadata raises); `.save(path)` writes README.md.
    """
    if not isinstance(config, BlapConfig) and getattr(config, "model_type", None) != BlapConfig.model_type:
        raise TypeError(f"`config` must be a BlapConfig, got {type(config).__name__}.")
    model_name = model_name or (repo_id.rsplit("/", 1)[-1] if repo_id else "BLAP")
    results = [_as_eval_result(result) for result in eval_results or ()]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=CARD_PIPELINE_TAG,
        license=license,
        base_model=list(base_model) if isinstance(base_model, (list, tuple)) else base_model,
        datasets=list(datasets) if datasets else None,
        tags=list(dict.fromkeys([*DEFAULT_TAGS, *tags])),
        model_name=model_name if results else None,
        eval_results=results or None,
    )
    text_config = config.text_config
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        repo_id=repo_id or "path/to/blap",
        model_title=model_name,
        description=description,
        pipeline_tag_note=(
            f'The Hub has no "audio-to-text" task, so this card is tagged "{CARD_PIPELINE_TAG}", the nearest one;'
            ' the pipeline task is "audio-to-text" with the package and'
            f' "{HUB_PIPELINE_TASK}" with remote code.'
        ),
        audio_hidden_size=config.audio_config.hidden_size,
        audio_depths=list(config.audio_config.depths),
        num_query_tokens=config.num_query_tokens,
        qformer_layers=config.qformer_config.num_hidden_layers,
        qformer_hidden_size=config.qformer_config.hidden_size,
        llm_d_model=text_config.d_model,
        llm_layers=text_config.num_layers,
        prompt=config.prompt,
        generation_defaults=", ".join(f"{key}={value}" for key, value in BLAP_GENERATION_DEFAULTS.items()),
        remote_code_requirements=" ".join(f'"{requirement}"' for requirement in remote_code_requirements()),
        hub_task=HUB_PIPELINE_TASK,
        results_table=_results_table(results),
        results_sources=", ".join(
            dict.fromkeys(
                f"[{r.source_name}]({r.source_url})" if r.source_url else r.source_name
                for r in results
                if r.source_name
            )
        ),
        paper_title=PAPER_TITLE,
        paper_url=PAPER_URL,
        citation=CITATION,
    )


def _results_table(results: list[EvalResult]) -> str:
    """A Markdown table of the eval results: one row per data set, one column per metric."""
    if not results:
        return ""
    metrics = list(dict.fromkeys(result.metric_name or result.metric_type for result in results))
    rows: dict[str, dict[str, Any]] = {}
    for result in results:
        rows.setdefault(result.dataset_name, {})[result.metric_name or result.metric_type] = result.metric_value
    lines = ["| data set | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for dataset, values in rows.items():
        lines.append(f"| {dataset} | " + " | ".join(str(values.get(metric, "")) for metric in metrics) + " |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------- upload


def _folder_operations(
    folder: Path, model_card: ModelCard | None, require_processor: bool = True
) -> list[CommitOperationAdd]:
    """
    Every file of a complete repository, as commit operations: the folder's own files (its JSON files with the
    remote-code entries added), the code files, and README.md (the folder's, else `model_card`).
    """
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: save the model there first (model.save_pretrained).")
    json_files = {name: _json_bytes(content) for name, content in _remote_code_json(folder).items()}
    code_files = {path.name: path for path in remote_code_files()}
    if require_processor and not (folder / "processor_config.json").is_file():
        raise FileNotFoundError(
            f"{folder} has no processor_config.json: save the processor there too (processor.save_pretrained), so that"
            " the repository loads with AutoProcessor and the pipeline."
        )
    if not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"{folder} has no *.safetensors weights: save the model there first.")
    has_card = (folder / "README.md").is_file()
    if not has_card and model_card is None:
        raise ValueError(f"{folder} has no README.md and no `model_card` was given.")

    operations = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative.startswith((".git/", ".cache/")) or relative in json_files or relative in code_files:
            continue
        operations.append(CommitOperationAdd(path_in_repo=relative, path_or_fileobj=str(path)))
    operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in json_files.items()]
    operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(src)) for name, src in code_files.items()]
    if not has_card:
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(model_card).encode()))
    return operations


def _upload(
    operations: list[CommitOperationAdd],
    repo_id: str,
    *,
    commit_message: str,
    commit_description: str | None,
    private: bool | None,
    token: str | bool | None,
    revision: str | None,
    create_pr: bool,
) -> CommitInfo:
    """Create the repository (and branch) if missing and commit `operations` (the only network calls)."""
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision is not None and not create_pr:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return api.create_commit(
        repo_id,
        operations,
        commit_message=commit_message,
        commit_description=commit_description,
        revision=revision,
        create_pr=create_pr,
    )


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    model_card: ModelCard | None = None,
    commit_message: str = "Upload BLAP model",
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> CommitInfo:
    """
    Publish a saved BLAP folder (model + processor) as one commit: weights, configs, processor, remote code and a
    model card. The folder itself is not modified.

    Args:
        folder (`str` or `os.PathLike`): holds `config.json`, the safetensors weights and `processor_config.json` with
            the tokenizer files.
        repo_id (`str`): the repository, created if missing.
        model_card (`ModelCard`, *optional*): used when the folder has no README.md; rendered from its config (with
            the defaults of [`render_model_card`]) if neither exists.
        commit_message, commit_description, private, token, revision, create_pr: as in `HfApi.create_commit`.

    Returns:
        `huggingface_hub.CommitInfo`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"The folder to push, {folder}, does not exist.")
    if model_card is None and not (folder / "README.md").is_file():
        model_card = render_model_card(BlapConfig.from_pretrained(folder), repo_id=repo_id)
    return _upload(
        _folder_operations(folder, model_card),
        repo_id,
        commit_message=commit_message,
        commit_description=commit_description,
        private=private,
        token=token,
        revision=revision,
        create_pr=create_pr,
    )


# ----------------------------------------------------------------------------------- model save/push integration


def _model_save_pretrained(
    self: BlapForConditionalGeneration, save_directory: str | os.PathLike, *args, **kwargs
) -> None:
    """
    `PreTrainedModel.save_pretrained` with remote code: like transformers does for a class registered with
    `register_for_auto_class`, the config gets its `auto_map` (and here the `custom_pipelines` entry) before it is
    saved, so a later `model.config.save_pretrained` keeps them; then the code files are copied
    ([`add_remote_code`]).
    """
    push_to_hub = kwargs.pop("push_to_hub", False)
    push_kwargs = {key: kwargs.pop(key) for key in ("repo_id", "commit_message", "private", "token") if key in kwargs}
    self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **MODEL_AUTO_MAP}
    self.config.custom_pipelines = CUSTOM_PIPELINES
    PreTrainedModel.save_pretrained(self, save_directory, *args, **kwargs)
    if kwargs.get("is_main_process", True):
        add_remote_code(save_directory)
    if push_to_hub:
        self.push_to_hub(push_kwargs.pop("repo_id", Path(save_directory).name), **push_kwargs)


def _push_to_hub(
    self: BlapForConditionalGeneration,
    repo_id: str,
    *,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = "50GB",
    tags: list[str] | None = None,
    model_card: ModelCard | None = None,
) -> CommitInfo:
    """
    Upload the model to the Hub: weights, `config.json` (with `auto_map` and the custom pipeline), generation config,
    the remote code and a model card rendered from `templates/model_card.md` (or `model_card`). Push the processor
    too (`processor.push_to_hub(repo_id)`) for a complete repository, or use `blap push` on a folder holding both.

    Args:
        repo_id (`str`): the repository, created if missing.
        model_card (`ModelCard`, *optional*): replaces the rendered card (see [`render_model_card`]).
        tags (`list[str]`, *optional*): added to the rendered card's tags.
        commit_message, commit_description, private, token, revision, create_pr, max_shard_size: as in
            `transformers.PreTrainedModel.push_to_hub`.

    Returns:
        `huggingface_hub.CommitInfo`.
    """
    with tempfile.TemporaryDirectory() as tmp_dir:
        self.save_pretrained(tmp_dir, max_shard_size=max_shard_size)
        card = model_card or render_model_card(self.config, repo_id=repo_id, tags=tags or ())
        return _upload(
            _folder_operations(Path(tmp_dir), card, require_processor=False),
            repo_id,
            commit_message=commit_message or "Upload BLAP model",
            commit_description=commit_description,
            private=private,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )


def install_hub_support() -> None:
    """
    Make the package's model and processor publish remote code (run once when `transformers_blap` is imported):

    - the processor and its feature extractor register for `AutoProcessor` / `AutoFeatureExtractor`, so their
      `save_pretrained` (and `push_to_hub`) write `auto_map` and copy their modules, as transformers does for any
      registered class;
    - the model's `save_pretrained` also sets `auto_map` and `custom_pipelines` on its config and copies the code
      files ([`add_remote_code`]); its `push_to_hub` uploads all of it with a model card rendered by
      [`render_model_card`].

    `BlapConfig` itself is not registered with `register_for_auto_class`: a config saved on its own then stays exactly
    what it was (`config.save_pretrained` round-trips), and only configs saved with a model carry remote code.
    """
    BlapFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
    BlapProcessor.register_for_auto_class("AutoProcessor")
    BlapForConditionalGeneration.save_pretrained = _model_save_pretrained
    BlapForConditionalGeneration.push_to_hub = _push_to_hub


__all__ = [
    "CITATION",
    "HUB_PIPELINE_TASK",
    "PAPER_RESULTS",
    "add_remote_code",
    "eval_results_from_report",
    "install_hub_support",
    "push_folder",
    "remote_code_files",
    "remote_code_requirements",
    "render_model_card",
]
