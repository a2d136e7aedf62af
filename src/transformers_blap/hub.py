"""
Publishing BLAP on the Hugging Face Hub: model cards, `blap push` and one-line Hub errors.

A published repository loads two ways: with this package installed (`import transformers_blap`, then the Auto* classes
and `pipeline("audio-to-text", ...)`), and without it through `trust_remote_code=True`. For the second, the repository
carries the package's flat modules and the `auto_map` / `custom_pipelines` entries that point at them: the core writes
them itself (`remote_code_blap`: the model's `save_pretrained`, the processor's registration for `AutoProcessor`).
[`push_folder`] (the `blap push` command) uploads a saved folder with all of it and BLAP's model card
([`render_model_card`]) in one commit; `model.push_to_hub(repo)` is transformers' own, with transformers' default
card tagged with BLAP's tags.
"""

import importlib.metadata
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData, constants
from huggingface_hub.errors import HfHubHTTPError
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from transformers import GenerationConfig
from transformers.dynamic_module_utils import get_imports

from .configuration_blap import BlapConfig
from .evaluation.report import (
    BENCHMARK_TITLES,
    HUB_METRIC_TYPES,
    PUBLISHED_TABLE1,
    TABLE1_SOURCE_URL,
    metric_display_name,
)
from .feature_extraction_blap import BlapFeatureExtractor
from .network import exception_chain, is_network_error, root_cause
from .remote_code_blap import (
    HUB_PIPELINE_TASK,
    HUB_TAGS,
    add_remote_code,
    read_json,
    remote_code_files,
    remote_code_json,
)

# The Hub has no "audio-to-text" task tag; "audio-text-to-text" is the nearest: audio (and a text prompt) in, text out.
CARD_PIPELINE_TAG = "audio-text-to-text"
# Stage-1 weights embed audio and text (retrieval); they do not caption.
STAGE1_PIPELINE_TAG = "feature-extraction"
CARD_LIBRARY_NAME = "transformers"
DEFAULT_LICENSE = "apache-2.0"
DEFAULT_TAGS = HUB_TAGS
CARD_KINDS = ("captioner", "stage1", "lora")
# The generation options a card lists, in this order, when the generation config sets them.
CARD_GENERATION_FIELDS = (
    "num_beams",
    "max_new_tokens",
    "max_length",
    "min_new_tokens",
    "min_length",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
)
# The card's evaluation section lies between these markers, so that `blap push` can replace it in an existing card.
EVALUATION_START = "<!-- blap:evaluation -->"
EVALUATION_END = "<!-- /blap:evaluation -->"

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


def eval_result(
    metric: str,
    value: float,
    dataset_type: str,
    dataset_name: str,
    dataset_split: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """
    One `model-index` result in the package's one naming scheme: `metric_type` is the Hub's metric id where there is
    one (`bleu`, `meteor`, `rouge`, `cider`, `spice`; else the metric's own name, e.g. `spider`, `fense`),
    `metric_name` the display name (`BLEU@4`) and `metric_config` the package's key (`bleu_4`).

    Args:
        metric (`str`): a caption metric key (`"bleu_4"`, `"cider_d"`, ...) or another name (kept as is).
        value (`float`): the score as shown (x100 for the caption metrics).
        dataset_type (`str`): the data set's Hub id, else its name (never a file name).
        dataset_name (`str`): its display name.
        dataset_split (`str`, *optional*): the split.
        extra: more `EvalResult` fields (`source_name`, `source_url`, ...).

    Returns:
        `dict`: for [`render_model_card`]'s `eval_results`.
    """
    return {
        "dataset_type": dataset_type,
        "dataset_name": dataset_name,
        "dataset_split": dataset_split,
        "metric_type": HUB_METRIC_TYPES.get(metric, metric),
        "metric_name": metric_display_name(metric),
        "metric_config": metric,
        "metric_value": value,
        **extra,
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
    dataset_type = BENCHMARK_DATASET_IDS.get(benchmark, benchmark)
    dataset_name = BENCHMARK_TITLES.get(benchmark, benchmark)
    return [eval_result(metric, value, dataset_type, dataset_name, split) for metric, value in scores.items()]


# Table 1 of the paper. Only the original release's weights may claim it: pass it to `render_model_card`
# (`eval_results=PAPER_RESULTS`, `blap push --paper-results`) when publishing a conversion of that checkpoint.
PAPER_RESULTS = [
    eval_result(
        metric,
        value,
        BENCHMARK_DATASET_IDS[benchmark],
        BENCHMARK_TITLES[benchmark],
        source_name="BLAP paper, Table 1",
        source_url=TABLE1_SOURCE_URL,
    )
    for benchmark, rows in PUBLISHED_TABLE1.items()
    for metric, value in rows["BLAP"].items()
]

TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"


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
        declared = {
            canonicalize_name(Requirement(line).name): Requirement(line)
            for line in importlib.metadata.requires(__package__)
        }
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        declared = {}
    requirements = []
    for name in sorted(imported):
        requirement = declared.get(canonicalize_name(name))  # huggingface_hub is huggingface-hub
        requirements.append(f"{name}{requirement.specifier}" if requirement else name)
    return requirements


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


def hub_id_or_none(name: str | os.PathLike | None) -> str | None:
    """`name` if it reads as a Hub repository id (`owner/name`, not a path on this machine), else `None`."""
    if not name:
        return None
    name = str(name)
    if name.count("/") != 1 or name.startswith((".", "/", "~")) or Path(name).exists():
        return None
    return name


def describe_front_end(feature_extractor: BlapFeatureExtractor | None) -> str:
    """The audio front end in one line, from the feature extractor's saved settings."""
    if feature_extractor is None:
        return "not saved with these weights (see the processor's configuration)"
    fe = feature_extractor
    return (
        f"{fe.sampling_rate / 1000:g} kHz mono, {fe.max_length_s:g} s windows, {fe.feature_size} log-mel bins"
        f" ({fe.frequency_min:g}-{fe.frequency_max:g} Hz, n_fft {fe.fft_window_size}, hop {fe.hop_length})"
    )


def describe_generation(generation_config: GenerationConfig | None) -> str:
    """The decoding options a generation config sets (`CARD_GENERATION_FIELDS`), as `name=value` pairs."""
    if generation_config is None:
        return "not saved with these weights"
    settings = generation_config.to_diff_dict()
    pairs = [f"{name}={settings[name]}" for name in CARD_GENERATION_FIELDS if settings.get(name) is not None]
    return ", ".join(pairs) or "none set (transformers' defaults)"


def _describe_language_model(config: BlapConfig, kind: str) -> str:
    if kind == "stage1":
        return "none in stage-1 weights (stage 2 adds one)"
    text_config = config.text_config
    source = getattr(text_config, "name_or_path", "")
    return (
        f"T5{f' from `{source}`' if source else ''}, d_model {text_config.d_model}, {text_config.num_layers} encoder"
        f" and {text_config.num_decoder_layers} decoder layers (frozen)"
    )


def evaluation_section(results: Sequence[EvalResult]) -> str:
    """The card's evaluation section, between `EVALUATION_START` / `EVALUATION_END`."""
    if results:
        body = _results_table(list(results))
        sources = dict.fromkeys(
            f"[{r.source_name}]({r.source_url})" if r.source_url else r.source_name for r in results if r.source_name
        )
        if sources:
            body += f"\n\nSource: {', '.join(sources)}."
    else:
        body = "No evaluation results are recorded for these weights."
    return f"{EVALUATION_START}\n{body}\n{EVALUATION_END}"


def render_model_card(
    config: BlapConfig,
    repo_id: str | None = None,
    *,
    model_name: str | None = None,
    license: str | None = DEFAULT_LICENSE,
    base_model: str | Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    tags: Iterable[str] = (),
    eval_results: Sequence[EvalResult | dict[str, Any]] | None = None,
    description: str | None = None,
    feature_extractor: BlapFeatureExtractor | None = None,
    generation_config: GenerationConfig | None = None,
    prompt: str | None = None,
    kind: str = "captioner",
    lora_base: str | None = None,
) -> ModelCard:
    """
    The model card of a BLAP repository or training output, rendered from `templates/model_card.md`. Every fact about
    the model comes from the arguments (its saved configurations and the run), none from the template; see
    [`render_folder_card`] to read them from a saved folder.

    Args:
        config ([`BlapConfig`]): the model's configuration (sizes; the language model's source).
        repo_id (`str`, *optional*): the repository id used in the usage snippets; `"path/to/blap"` when unknown.
        model_name (`str`, *optional*): the name in the title and in `model-index`; defaults to the repository name.
        license (`str`, *optional*, defaults to `"apache-2.0"`): the weights' license (a Hub license id).
        base_model (`str` or `list[str]`, *optional*): Hub ids of what the weights start from; by default the
            language model's source (`config.text_config.name_or_path`) when it is a Hub id, else none.
        datasets (`list[str]`, *optional*): Hub ids of the training / fine-tuning data sets.
        tags (`Iterable[str]`, *optional*): added to BLAP's default tags.
        eval_results (`list[dict | EvalResult]`, *optional*): known evaluation results, written as `model-index`
            (see [`eval_result`]). `task_type` defaults to `"audio-captioning"`. [`PAPER_RESULTS`] are the paper's
            numbers for the original release.
        description (`str`, *optional*): Markdown about these weights (training, provenance).
        feature_extractor ([`BlapFeatureExtractor`], *optional*): the audio front end saved with the model.
        generation_config (`GenerationConfig`, *optional*): the generation defaults saved with the model.
        prompt (`str`, *optional*): the processor's prompt (default: `config.prompt`).
        kind (`str`, *optional*, defaults to `"captioner"`): `"captioner"` (stage 2 / converted release),
            `"stage1"` (representation learning) or `"lora"` (a LoRA stage-2 output).
        lora_base (`str`, *optional*): for `kind="lora"`, the model the adapter belongs on.

    Returns:
        `huggingface_hub.ModelCard`: validated on construction (bad metadata raises); `.save(path)` writes README.md.
    """
    if not isinstance(config, BlapConfig) and getattr(config, "model_type", None) != BlapConfig.model_type:
        raise TypeError(f"`config` must be a BlapConfig, got {type(config).__name__}.")
    if kind not in CARD_KINDS:
        raise ValueError(f"`kind` must be one of {CARD_KINDS}, got {kind!r}.")
    model_name = model_name or (repo_id.rsplit("/", 1)[-1] if repo_id else "BLAP")
    results = [_as_eval_result(result) for result in eval_results or ()]
    if base_model is None and kind != "stage1":
        base_model = hub_id_or_none(getattr(config.text_config, "name_or_path", None))
    card_data = ModelCardData(
        library_name=CARD_LIBRARY_NAME,
        pipeline_tag=STAGE1_PIPELINE_TAG if kind == "stage1" else CARD_PIPELINE_TAG,
        license=license,
        base_model=list(base_model) if isinstance(base_model, (list, tuple)) else base_model,
        datasets=list(datasets) if datasets else None,
        tags=list(dict.fromkeys([*DEFAULT_TAGS, *(["blap-stage1"] if kind == "stage1" else []), *tags])),
        model_name=model_name if results else None,
        eval_results=results or None,
    )
    summaries = {
        "captioner": "A BLAP music captioner: it listens to audio and writes a short description of it.",
        "stage1": "Stage-1 BLAP weights: an audio and a text encoder trained to match music with its captions.",
        "lora": "A LoRA fine-tune of a BLAP music captioner.",
    }
    window_s = f"{feature_extractor.max_length_s:g}" if feature_extractor is not None else "WINDOW_S"
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        repo_id=repo_id or "path/to/blap",
        model_title=model_name,
        kind=kind,
        summary=summaries[kind],
        description=description,
        pipeline_tag_note=(
            f'The Hub has no "audio-to-text" task, so this card is tagged "{CARD_PIPELINE_TAG}", the nearest one;'
            ' the pipeline task is "audio-to-text" with the package and'
            f' "{HUB_PIPELINE_TASK}" with remote code.'
        ),
        front_end=describe_front_end(feature_extractor),
        window_s=window_s,
        sampling_rate=feature_extractor.sampling_rate if feature_extractor is not None else "SAMPLING_RATE",
        audio_hidden_size=config.audio_config.hidden_size,
        audio_depths=list(config.audio_config.depths),
        num_query_tokens=config.num_query_tokens,
        qformer_layers=config.qformer_config.num_hidden_layers,
        qformer_hidden_size=config.qformer_config.hidden_size,
        language_model=_describe_language_model(config, kind),
        prompt=prompt if prompt is not None else config.prompt,
        generation_defaults=describe_generation(generation_config),
        lora_base=lora_base or "BASE_MODEL",
        remote_code_requirements=" ".join(f'"{requirement}"' for requirement in remote_code_requirements()),
        hub_task=HUB_PIPELINE_TASK,
        evaluation=evaluation_section(results),
        paper_title=PAPER_TITLE,
        paper_url=PAPER_URL,
        citation=CITATION,
    )


def _read_folder_json(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / name
    return read_json(path) if path.is_file() else None


def render_folder_card(folder: str | os.PathLike, repo_id: str | None = None, **kwargs: Any) -> ModelCard:
    """
    [`render_model_card`] for a saved BLAP folder: the configuration, the generation defaults, the audio front end
    and the prompt are read from its `config.json`, `generation_config.json` and `processor_config.json` (or
    `preprocessor_config.json`).

    Args:
        folder (`str` or `os.PathLike`): the saved model (and processor).
        repo_id (`str`, *optional*), kwargs: as for [`render_model_card`].
    """
    folder = Path(folder)
    config = BlapConfig.from_pretrained(folder)
    processor = _read_folder_json(folder, "processor_config.json") or {}
    front_end = processor.get("feature_extractor") or _read_folder_json(folder, "preprocessor_config.json")
    if front_end is not None:
        front_end = {key: value for key, value in front_end.items() if key not in ("auto_map", "processor_class")}
        kwargs.setdefault("feature_extractor", BlapFeatureExtractor.from_dict(front_end))
    if (folder / "generation_config.json").is_file():
        kwargs.setdefault("generation_config", GenerationConfig.from_pretrained(folder))
    if processor.get("prompt") is not None:
        kwargs.setdefault("prompt", processor["prompt"])
    return render_model_card(config, repo_id, **kwargs)


def merge_card_options(
    card: ModelCard | str,
    *,
    model_name: str | None = None,
    license: str | None = None,
    base_model: str | Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    tags: Iterable[str] = (),
    eval_results: Sequence[EvalResult | dict[str, Any]] | None = None,
) -> ModelCard:
    """
    An existing model card with card options merged in: `license`, `base_model` and `model_name` replace the card's,
    `datasets` and `tags` are added to its lists, and `eval_results` are added to its `model-index` (a result for the
    same data set, split and metric replaces the card's). With results, the card's evaluation section (between
    `EVALUATION_START` and `EVALUATION_END`, as [`render_model_card`] writes it) is rewritten from the merged
    results, or a section is appended to a card without one.

    Returns:
        `huggingface_hub.ModelCard`: a new card; `card` is not changed.
    """
    card = ModelCard(str(card))
    data, text = card.data, card.text
    if license:
        data.license = license
    if base_model:
        data.base_model = list(base_model) if isinstance(base_model, (list, tuple)) else base_model
    if datasets:
        data.datasets = list(dict.fromkeys([*(data.datasets or []), *datasets]))
    tags = list(tags)
    if tags:
        data.tags = list(dict.fromkeys([*(data.tags or []), *tags]))
    if model_name:
        data.model_name = model_name
    if eval_results:

        def key(result: EvalResult) -> tuple:
            return (result.dataset_type, result.dataset_split, result.metric_type, result.metric_name)

        merged = {key(result): result for result in data.eval_results or []}
        merged.update({key(result): result for result in map(_as_eval_result, eval_results)})
        data.eval_results = list(merged.values())
        data.model_name = data.model_name or "BLAP"
        section = evaluation_section(data.eval_results)
        if EVALUATION_START in text and EVALUATION_END in text:
            before, rest = text.split(EVALUATION_START, 1)
            text = before + section + rest.split(EVALUATION_END, 1)[1]
        else:
            text = text.rstrip("\n") + f"\n\n## Evaluation\n\n{section}\n"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{text}")


def _results_table(results: list[EvalResult]) -> str:
    """A Markdown table of the eval results: one row per data set (and split), one column per metric."""
    if not results:
        return ""
    metrics = list(dict.fromkeys(result.metric_name or result.metric_type for result in results))
    rows: dict[str, dict[str, Any]] = {}
    for result in results:
        dataset = result.dataset_name + (f" ({result.dataset_split})" if result.dataset_split else "")
        rows.setdefault(dataset, {})[result.metric_name or result.metric_type] = result.metric_value
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
    remote-code entries added), the code files, and README.md (`model_card` when given, else the folder's).
    """
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: save the model there first (model.save_pretrained).")
    json_files = remote_code_json(folder)
    code_files = {path.name: path for path in remote_code_files()}
    if require_processor and not (folder / "processor_config.json").is_file():
        raise FileNotFoundError(
            f"{folder} has no processor_config.json: save the processor there too (processor.save_pretrained), so that"
            " the repository loads with AutoProcessor and the pipeline."
        )
    if not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"{folder} has no *.safetensors weights: save the model there first.")
    use_folder_card = model_card is None
    if use_folder_card and not (folder / "README.md").is_file():
        raise ValueError(f"{folder} has no README.md and no `model_card` was given.")

    operations = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative.startswith((".git/", ".cache/")) or relative in json_files or relative in code_files:
            continue
        if relative == "README.md" and not use_folder_card:
            continue
        operations.append(CommitOperationAdd(path_in_repo=relative, path_or_fileobj=str(path)))
    operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in json_files.items()]
    operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(src)) for name, src in code_files.items()]
    if not use_folder_card:
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(model_card).encode()))
    return operations


class HubError(OSError):
    """A Hub request failed; the message says why and what to do, on one line."""


def describe_hub_failure(error: BaseException, repo_id: str, action: str = "upload to") -> str | None:
    """
    One line for a failed Hub request: no connection (DNS, refused, timeout, offline mode), refused credentials, or
    another HTTP error. `None` when `error` is not a Hub or network failure.
    """
    http_error = next((link for link in exception_chain(error) if isinstance(link, HfHubHTTPError)), None)
    if http_error is not None and getattr(http_error, "response", None) is not None:
        status = http_error.response.status_code
        reason = str(http_error).strip().splitlines()[0]
        if status in (401, 403):
            return (
                f"the Hub refused to {action.split()[0]} {repo_id} ({reason}): log in with `hf auth login` or pass a"
                " token with write access (--token / HF_TOKEN)."
            )
        return f"the Hub answered {status} to the {action.split()[0]} of {repo_id}: {reason}"
    if is_network_error(error):
        return (
            f"could not reach the Hub at {constants.ENDPOINT} to {action} {repo_id}: {root_cause(error)}. Check the"
            " network connection (or proxy, HF_ENDPOINT, HF_HUB_OFFLINE) and run it again; nothing was uploaded."
        )
    return None


@contextmanager
def hub_errors(repo_id: str, action: str = "upload to") -> Iterator[None]:
    """Turns a failed Hub request inside into a one-line [`HubError`] (see [`describe_hub_failure`])."""
    try:
        yield
    except HubError:
        raise
    except Exception as error:
        message = describe_hub_failure(error, repo_id, action)
        if message is None:
            raise
        raise HubError(message) from error


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
    """
    Create the repository (and branch) if missing and commit `operations` (the only network calls); a failure is a
    one-line [`HubError`].
    """
    api = HfApi(token=token)
    with hub_errors(repo_id):
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
        model_card (`ModelCard`, *optional*): the card to publish (the folder's README.md is then left out);
            default: the folder's README.md, else one rendered from its configs ([`render_folder_card`]).
        commit_message, commit_description, private, token, revision, create_pr: as in `HfApi.create_commit`.

    Returns:
        `huggingface_hub.CommitInfo`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"The folder to push, {folder}, does not exist.")
    if model_card is None and not (folder / "README.md").is_file():
        model_card = render_folder_card(folder, repo_id=repo_id)
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


class HubErrorsInTrainer:
    """
    A `transformers.Trainer` mixin: `--push_to_hub` failures (creating the repository when the trainer starts,
    uploading at the end) raise a one-line [`HubError`] naming the cause and the remedy instead of a chain of HTTP
    client exceptions. Put it first among the bases: `class BlapStage2Trainer(HubErrorsInTrainer, Seq2SeqTrainer)`.
    """

    def _hub_repo_name(self) -> str:
        return getattr(self, "hub_model_id", None) or self.args.hub_model_id or Path(self.args.output_dir).name

    def init_hf_repo(self, *args: Any, **kwargs: Any) -> None:
        with hub_errors(self._hub_repo_name(), "create"):
            super().init_hf_repo(*args, **kwargs)

    def push_to_hub(self, *args: Any, **kwargs: Any) -> CommitInfo:
        with hub_errors(self._hub_repo_name()):
            return super().push_to_hub(*args, **kwargs)


__all__ = [
    "CITATION",
    "HUB_PIPELINE_TASK",
    "PAPER_RESULTS",
    "HubError",
    "HubErrorsInTrainer",
    "add_remote_code",
    "eval_result",
    "eval_results_from_report",
    "hub_errors",
    "merge_card_options",
    "push_folder",
    "remote_code_files",
    "remote_code_requirements",
    "render_folder_card",
    "render_model_card",
]
