"""
Stage 2 (generative training) and fine-tuning of BLAP with the `transformers` Trainer.

- `load_stage2_model`: a converted release / stage-2 checkpoint, or a stage-1 checkpoint plus a Flan-T5 checkpoint.
- `configure_stage2_trainable`: exactly the stage-2 trainable set (Q-Former, query tokens, audio LayerNorm, projection
  into the LLM), plus LoRA weights when `add_lora` put them on the LLM.
- `BlapStage2Trainer`: `Seq2SeqTrainer` with BLAP's collator, caption metrics on generated captions, logged sample
  captions, LoRA-aware saving / loading and a model card with data, hyperparameters and the evaluation table.
"""

import contextlib
import copy
import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from transformers import GenerationConfig, Seq2SeqTrainer, Seq2SeqTrainingArguments, T5Config
from transformers.trainer_utils import EvalLoopOutput, EvalPrediction

from ..configuration_blap import BlapConfig
from ..hub import HubErrorsInTrainer
from ..modeling_blap import STAGE2_ADAPTER_MANIFEST, BlapForConditionalGeneration
from .collator import BlapDataCollator, as_caption_list, train_dataloader_with_seeded_examples
from .data import CAPTIONS_COLUMN
from .launch import OVERWRITE_OUTPUT_DIR_HELP
from .model_card import write_model_card

logger = logging.getLogger(__name__)

CaptionMetricsFn = Callable[[list[str], list[list[str]]], dict[str, float]]

# LoRA on the query and value projections of every T5 attention (self-attention and cross-attention). PEFT matches a
# string target with `re.fullmatch` against module names; the Q-Former and HTS-AT name theirs `query` / `value`.
LORA_TARGET_MODULES = r"language_model\..*\.(SelfAttention|EncDecAttention)\.(q|v)"
LORA_SUBFOLDER = "lora"
STAGE2_WEIGHTS_NAME = "stage2_trainable.safetensors"
EVAL_CAPTIONS_FILE = "eval_captions.jsonl"


# --------------------------------------------------------------------------------------------------------- model setup


def _language_model_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The safetensors weights of a T5 checkpoint folder (single file or sharded)."""
    path = Path(path)
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        return safetensors.torch.load_file(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state_dict: dict[str, torch.Tensor] = {}
        for shard in shards:
            state_dict.update(safetensors.torch.load_file(path / shard))
        return state_dict
    raise FileNotFoundError(f"No model.safetensors(.index.json) in the language-model folder {path}.")


def load_language_model_weights(model: BlapForConditionalGeneration, path: str | os.PathLike) -> None:
    """
    Copy a T5 checkpoint's weights into `model.language_model`, keeping BLAP's untied LM head.

    The weights are read from the safetensors files directly: `T5ForConditionalGeneration.from_pretrained` in
    transformers 5.x would tie the head to the embeddings (see docs/design.md).

    Args:
        model ([`BlapForConditionalGeneration`]).
        path (`str` or `os.PathLike`): a local T5 / Flan-T5 folder with safetensors weights.
    """
    state_dict = _language_model_state_dict(path)
    language_model = model.language_model
    # Checkpoints store the embedding once as `shared` and sometimes again for the encoder and decoder.
    aliases = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    state_dict = {key: value for key, value in state_dict.items() if key not in aliases}
    result = language_model.load_state_dict(state_dict, strict=False)
    missing = [key for key in result.missing_keys if key not in aliases]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"The language model at {path} does not match the BLAP text config: missing {missing[:5]}"
            f" ({len(missing)}), unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)})."
        )
    if language_model.lm_head.weight is language_model.shared.weight:
        raise RuntimeError("The language model's LM head got tied to its embeddings; BLAP needs it untied.")


@contextlib.contextmanager
def _transformers_loading_report_silenced():
    """
    Drop the warnings of transformers' loading report and tied-weights check for the duration of the block. (A filter,
    not a logger level: transformers runs extra tensor-parallel checks when `modeling_utils`' level is raised.)
    """
    loggers = [
        logging.getLogger(name) for name in ("transformers.utils.loading_report", "transformers.modeling_utils")
    ]
    for each in loggers:
        each.addFilter(_above_warning)
    try:
        yield
    finally:
        for each in loggers:
            each.removeFilter(_above_warning)


def _above_warning(record: logging.LogRecord) -> bool:
    return record.levelno > logging.WARNING


def load_stage2_model(
    model_name_or_path: str | os.PathLike,
    language_model_name_or_path: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
) -> BlapForConditionalGeneration:
    """
    The model stage 2 starts from.

    - A converted release or any `BlapForConditionalGeneration` checkpoint: loaded as is (fine-tuning, e.g. on
      MusicCaps).
    - A stage-1 checkpoint (`BlapForRepresentationLearning`, which has no language model) together with
      `language_model_name_or_path` (a local Flan-T5 folder): the audio encoder, audio LayerNorm, query tokens and
      Q-Former come from stage 1, the language model from Flan-T5 (with exact GELU, like the release), and the
      projection into the language model is freshly initialised. Stage-1 heads are ignored.

    Args:
        model_name_or_path (`str` or `os.PathLike`): a BLAP checkpoint (local folder or Hub id).
        language_model_name_or_path (`str` or `os.PathLike`, *optional*): a local T5 folder; replaces the checkpoint's
            language model.
        dtype (`torch.dtype`, *optional*): e.g. `torch.bfloat16` for the frozen weights; the Q-Former and query
            tokens stay float32 (`_keep_in_fp32_modules`) and [`configure_stage2_trainable`] makes the other
            trainable weights float32.

    Returns:
        [`BlapForConditionalGeneration`].
    """
    config = BlapConfig.from_pretrained(model_name_or_path)
    quiet = contextlib.nullcontext()
    if language_model_name_or_path is not None:
        text_config = T5Config.from_pretrained(language_model_name_or_path)
        text_config.dense_act_fn = "gelu"  # the release runs Flan-T5 with exact GELU
        config.text_config = text_config
        # The language model and projection are expected to be missing from a stage-1 checkpoint: transformers'
        # load report would list them as a problem. Missing keys are checked below instead.
        quiet = _transformers_loading_report_silenced()
    with quiet:
        model, info = BlapForConditionalGeneration.from_pretrained(
            model_name_or_path, config=config, dtype=dtype, output_loading_info=True
        )
    missing_llm = [key for key in info["missing_keys"] if key.startswith("language_model.")]
    if language_model_name_or_path is not None:
        load_language_model_weights(model, language_model_name_or_path)
        if dtype is not None:
            model.language_model.to(dtype)
    elif missing_llm:
        raise ValueError(
            f"{model_name_or_path} has no language-model weights ({len(missing_llm)} missing, e.g. {missing_llm[0]}):"
            " it looks like a stage-1 checkpoint. Pass `language_model_name_or_path` (a Flan-T5 folder)."
        )
    missing_other = [
        key for key in info["missing_keys"] if not key.startswith(("language_model.", "language_projection."))
    ]
    if missing_other:
        raise ValueError(f"{model_name_or_path} lacks stage-2 weights: {missing_other[:5]} ({len(missing_other)}).")
    # Where the language model came from, for a LoRA folder's manifest (`save_stage2_adapter`).
    model.language_model_source = _local_or_hub(language_model_name_or_path)
    if any(key.startswith("language_projection.") for key in info["missing_keys"]):
        logger.info("`language_projection` is not in %s: it starts from its initialisation.", model_name_or_path)
    try:
        GenerationConfig.from_pretrained(model_name_or_path)
    except OSError:
        # No generation_config.json (a stage-1 checkpoint): transformers built one from the config, without BLAP's
        # beam search and caption lengths.
        model.generation_config = model._default_generation_config(model.config)
    return model


def _local_or_hub(name_or_path: str | os.PathLike | None) -> str | None:
    """An existing local path made absolute (a manifest is read from elsewhere); a Hub id as it is."""
    if name_or_path is None:
        return None
    return str(Path(name_or_path).resolve()) if Path(name_or_path).exists() else str(name_or_path)


def configure_stage2_trainable(model: BlapForConditionalGeneration) -> list[str]:
    """
    Freeze the audio encoder and the language model, train the Q-Former, query tokens, audio LayerNorm and the
    projection into the language model (`set_stage2_trainable`), plus LoRA weights if [`add_lora`] added them.
    Trainable weights are made float32 (a model loaded in bfloat16 keeps its frozen weights in bfloat16).

    Args:
        model ([`BlapForConditionalGeneration`]).

    Returns:
        `list[str]`: the trainable parameter names, sorted.
    """
    trainable = set(model.set_stage2_trainable())
    for name, param in model.named_parameters():
        if ".lora_" in name:
            param.requires_grad = True
            trainable.add(name)
        if name in trainable and param.dtype != torch.float32:
            param.data = param.data.float()
    return sorted(trainable)


def has_lora(model: torch.nn.Module) -> bool:
    """Whether `add_lora` / `load_stage2_adapter` put a PEFT adapter on the model."""
    return bool(getattr(model, "_hf_peft_config_loaded", False))


def add_lora(
    model: BlapForConditionalGeneration,
    r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.05,
    target_modules: str | Sequence[str] = LORA_TARGET_MODULES,
):
    """
    Put a LoRA adapter (PEFT) on the language model's attention query and value projections, and set the stage-2
    trainable set (LoRA weights + Q-Former, query tokens, audio LayerNorm, projection).

    Args:
        model ([`BlapForConditionalGeneration`]).
        r (`int`, *optional*, defaults to 8): LoRA rank.
        lora_alpha (`int`, *optional*, defaults to 16): LoRA scaling numerator.
        lora_dropout (`float`, *optional*, defaults to 0.05).
        target_modules (`str` or `Sequence[str]`, *optional*): a regular expression (full match) or module names;
            defaults to every T5 attention `q` and `v`.

    Returns:
        `peft.LoraConfig`: the adapter's configuration.
    """
    from peft import LoraConfig

    if has_lora(model):
        raise ValueError("The model already has a LoRA adapter.")
    config = LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=target_modules)
    model.add_adapter(config)
    targeted = {name.split(".lora_")[0] for name, _ in model.named_parameters() if ".lora_" in name}
    outside = sorted(name for name in targeted if not name.startswith("language_model."))
    if not targeted or outside:
        raise ValueError(
            f"`target_modules` {target_modules!r} must select language-model layers only; it selected"
            f" {len(targeted)} modules, outside the language model: {outside[:5]}."
        )
    configure_stage2_trainable(model)
    return config


def _stage2_weight_names(model: BlapForConditionalGeneration) -> list[str]:
    return [name for name, param in model.named_parameters() if param.requires_grad and ".lora_" not in name]


def save_stage2_adapter(
    model: BlapForConditionalGeneration,
    save_directory: str | os.PathLike,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """
    Save what a LoRA stage-2 run changes, and nothing else:

    - `lora/adapter_config.json`, `lora/adapter_model.safetensors`: the LoRA adapter in PEFT's file format;
    - `stage2_trainable.safetensors`: the Q-Former, query tokens, audio LayerNorm and projection;
    - `blap_stage2_adapter.json`: the base model (and the language model a stage-1 start took), the file names;
    - `config.json` and `generation_config.json`.

    `BlapForConditionalGeneration.from_pretrained(folder)` and `pipeline("audio-to-text", model=folder)` load the
    base model with the adapter and stage-2 weights ([`load_stage2_lora_folder`]); [`load_stage2_adapter`] applies
    them to a base model already loaded.

    Args:
        model ([`BlapForConditionalGeneration`]) with a LoRA adapter and the stage-2 trainable set.
        save_directory (`str` or `os.PathLike`).
        state_dict (`dict[str, torch.Tensor]`, *optional*): the full state dict when it must be gathered first
            (DeepSpeed ZeRO-3, FSDP); defaults to `model.state_dict()`.
    """
    if not has_lora(model):
        raise ValueError("The model has no LoRA adapter: save it with `save_pretrained`.")
    save_directory = Path(save_directory)
    save_directory.mkdir(parents=True, exist_ok=True)
    state_dict = state_dict if state_dict is not None else model.state_dict()
    lora_directory = save_directory / LORA_SUBFOLDER
    lora_directory.mkdir(exist_ok=True)
    # The PEFT format: adapter weights named from the base model down, without the adapter name.
    adapter_weights = {
        f"base_model.model.{name}": tensor.detach().contiguous().cpu()
        for name, tensor in model.get_adapter_state_dict(state_dict=state_dict).items()
    }
    safetensors.torch.save_file(
        adapter_weights, lora_directory / "adapter_model.safetensors", metadata={"format": "pt"}
    )
    model.peft_config["default"].save_pretrained(lora_directory)
    names = _stage2_weight_names(model)
    weights = {name: state_dict[name].detach().contiguous().cpu() for name in names}
    safetensors.torch.save_file(weights, save_directory / STAGE2_WEIGHTS_NAME, metadata={"format": "pt"})
    model.config.save_pretrained(save_directory)
    model.generation_config.save_pretrained(save_directory)
    manifest = {
        "base_model_name_or_path": _local_or_hub(model.peft_config["default"].base_model_name_or_path),
        "language_model_name_or_path": getattr(model, "language_model_source", None),
        "lora_subfolder": LORA_SUBFOLDER,
        "stage2_weights": STAGE2_WEIGHTS_NAME,
        "stage2_parameters": names,
    }
    (save_directory / STAGE2_ADAPTER_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def load_stage2_adapter(
    model: BlapForConditionalGeneration, adapter_directory: str | os.PathLike, is_trainable: bool = False
) -> BlapForConditionalGeneration:
    """
    Load a folder written by [`save_stage2_adapter`] into a base model (the one the adapter was trained from, or a
    model that already carries this adapter, e.g. when `Trainer` reloads its best checkpoint).

    Args:
        model ([`BlapForConditionalGeneration`]).
        adapter_directory (`str` or `os.PathLike`): a local folder.
        is_trainable (`bool`, *optional*, defaults to `False`): set the stage-2 trainable set afterwards.

    Returns:
        The same model, modified in place.
    """
    from peft import LoraConfig, set_peft_model_state_dict

    adapter_directory = Path(adapter_directory)
    manifest_path = adapter_directory / STAGE2_ADAPTER_MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{adapter_directory} is not a BLAP stage-2 adapter folder: no {manifest_path.name}.")
    manifest = json.loads(manifest_path.read_text())
    lora_directory = adapter_directory / manifest["lora_subfolder"]
    if not has_lora(model):
        model.add_adapter(LoraConfig.from_pretrained(lora_directory))
    adapter_weights = safetensors.torch.load_file(lora_directory / "adapter_model.safetensors")
    prefix = "base_model.model."
    adapter_weights = {key.removeprefix(prefix): value for key, value in adapter_weights.items()}
    result = set_peft_model_state_dict(model, adapter_weights, adapter_name="default")
    if result.unexpected_keys:
        raise ValueError(f"LoRA weights in {lora_directory} do not fit the model: {result.unexpected_keys[:5]}.")

    weights = safetensors.torch.load_file(adapter_directory / manifest["stage2_weights"])
    parameters = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(parameters))
    absent = sorted(set(manifest["stage2_parameters"]) - set(weights))
    if unknown or absent:
        raise ValueError(f"{adapter_directory}: stage-2 weights not in the model {unknown[:5]}, missing {absent[:5]}.")
    with torch.no_grad():
        for name, value in weights.items():
            parameters[name].copy_(value.to(parameters[name].dtype))
    if is_trainable:
        configure_stage2_trainable(model)
    else:
        model.requires_grad_(False)
    return model


def load_stage2_lora_folder(
    adapter_directory: str | os.PathLike, dtype: torch.dtype | None = None
) -> BlapForConditionalGeneration:
    """
    A whole model from a folder written by [`save_stage2_adapter`]: the base model named in its manifest (with the
    language model a stage-1 start took, see [`load_stage2_model`]), the LoRA adapter and the stage-2 weights, the
    folder's generation settings; in eval mode, nothing trainable. `BlapForConditionalGeneration.from_pretrained`
    calls this for such folders.

    Args:
        adapter_directory (`str` or `os.PathLike`): a local folder.
        dtype (`torch.dtype`, *optional*): as for [`load_stage2_model`].

    Returns:
        [`BlapForConditionalGeneration`].
    """
    adapter_directory = Path(adapter_directory)
    manifest = json.loads((adapter_directory / STAGE2_ADAPTER_MANIFEST).read_text())
    base, language_model = manifest.get("base_model_name_or_path"), manifest.get("language_model_name_or_path")
    for what, source in (("base model", base), ("language model", language_model)):
        if source is not None and os.path.isabs(source) and not os.path.exists(source):
            raise OSError(
                f"{adapter_directory} is a LoRA adapter on the {what} {source}, which is not on this machine: load it"
                " with transformers_blap.training.load_stage2_adapter(BlapForConditionalGeneration.from_pretrained("
                f"BASE), {str(adapter_directory)!r})."
            )
    if base is None:
        raise OSError(
            f"{adapter_directory} does not name the base model of its LoRA adapter: load it with"
            " transformers_blap.training.load_stage2_adapter(BlapForConditionalGeneration.from_pretrained(BASE),"
            f" {str(adapter_directory)!r})."
        )
    model = load_stage2_adapter(load_stage2_model(base, language_model, dtype=dtype), adapter_directory)
    model.generation_config = GenerationConfig.from_pretrained(adapter_directory)
    return model.eval()


def warn_if_float16(model: BlapForConditionalGeneration, args: Seq2SeqTrainingArguments | None = None) -> bool:
    """
    Warn when training or evaluation would run Flan-T5 in float16, which overflows (T5 was pre-trained in
    bfloat16: its activations exceed float16's range and the loss becomes inf/NaN). Use `bf16` instead.

    Args:
        model ([`BlapForConditionalGeneration`]).
        args ([`Seq2SeqTrainingArguments`], *optional*).

    Returns:
        `bool`: whether a warning was issued.
    """
    reasons = []
    if args is not None and args.fp16:
        reasons.append("`fp16=True`")
    if args is not None and args.fp16_full_eval:
        reasons.append("`fp16_full_eval=True`")
    if any(param.dtype == torch.float16 for param in model.language_model.parameters()):
        reasons.append("float16 language-model weights")
    if not reasons:
        return False
    warnings.warn(
        f"{' and '.join(reasons)}: Flan-T5 overflows in float16 (inf/NaN loss, garbage captions). Use bf16 (or"
        " float32) for the language model.",
        UserWarning,
        stacklevel=2,
    )
    return True


# ----------------------------------------------------------------------------------------------------------- metrics


def default_caption_metrics(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """BLEU@1-4, METEOR, ROUGE-L and CIDEr-D (`transformers_blap.evaluation.caption_metrics`, needs Java)."""
    from ..evaluation import NGRAM_METRICS, caption_metrics

    return caption_metrics(predictions, references, metrics=NGRAM_METRICS)


def references_of(dataset: Any, caption_column: str = CAPTIONS_COLUMN) -> list[list[str]]:
    """
    Every example's reference captions, in dataset order, without decoding audio.

    Args:
        dataset: a `datasets.Dataset` or any sequence of mappings with `caption_column`.
        caption_column (`str`, *optional*, defaults to `"captions"`).

    Returns:
        `list[list[str]]`.
    """
    column_names = getattr(dataset, "column_names", None)
    if column_names is not None:
        if caption_column not in column_names:
            raise ValueError(f"The evaluation dataset has no {caption_column!r} column; it has {column_names}.")
        values = dataset[caption_column]
    else:
        values = [dataset[index][caption_column] for index in range(len(dataset))]
    return [as_caption_list(value, f"evaluation example {index}") for index, value in enumerate(values)]


# ----------------------------------------------------------------------------------------------------------- trainer


@dataclass
class BlapStage2TrainingArguments(Seq2SeqTrainingArguments):
    """
    `Seq2SeqTrainingArguments` with the defaults stage 2 needs: dataset columns are kept for the collator and
    evaluation generates captions (so caption metrics are computed).
    """

    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep dataset columns: the collator reads `audio` and `captions`."}
    )
    predict_with_generate: bool = field(
        default=True, metadata={"help": "Generate captions in evaluation and score them with caption metrics."}
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": OVERWRITE_OUTPUT_DIR_HELP})


class BlapStage2Trainer(HubErrorsInTrainer, Seq2SeqTrainer):
    r"""
    [`Seq2SeqTrainer`] for BLAP stage 2 and caption fine-tuning.

    - The model gets exactly the stage-2 trainable set ([`configure_stage2_trainable`]); `trainable_parameter_names`
      lists it.
    - Batches come from [`BlapDataCollator`] (training mode) and its evaluation twin (fixed window, first caption),
      built from `processing_class` unless given. Dataset columns are kept (`remove_unused_columns` is forced off):
      the collator reads `audio` and `captions`.
    - The loss is normalised over the caption tokens of the whole optimizer step (`num_items_in_batch`), so gradient
      accumulation and data parallelism give the same update as one large batch.
    - With `predict_with_generate=True`, evaluation decodes the generated captions and scores them against all
      reference captions of each clip with `caption_metrics` (default: BLEU@1-4, METEOR, ROUGE-L, CIDEr-D); metric
      names work with `metric_for_best_model` (e.g. `"cider_d"`) and `EarlyStoppingCallback`. The first
      `num_logged_captions` captions are logged and appended to `output_dir/eval_captions.jsonl`.
    - With a LoRA adapter ([`add_lora`]) checkpoints hold only the adapter and the stage-2 weights
      ([`save_stage2_adapter`]), and best-model / resume loading reads them back.
    - `create_model_card` (also run by `push_to_hub`) writes a card with the data, hyperparameters and evaluation
      table.

    Args:
        model ([`BlapForConditionalGeneration`]).
        args ([`Seq2SeqTrainingArguments`]).
        data_collator (`Callable`, *optional*): defaults to `BlapDataCollator(processing_class)`.
        train_dataset, eval_dataset: datasets with `audio` and `captions` columns (see `training.data`).
        processing_class ([`BlapProcessor`]).
        caption_metrics (`Callable[[list[str], list[list[str]]], dict[str, float]]`, *optional*): corpus metrics of
            predictions against references.
        eval_data_collator (`Callable`, *optional*): defaults to `data_collator.for_evaluation()`.
        num_logged_captions (`int`, *optional*, defaults to 5).
        callbacks, optimizers: as for `Trainer`.
    """

    def __init__(
        self,
        model: BlapForConditionalGeneration,
        args: Seq2SeqTrainingArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        caption_metrics: CaptionMetricsFn | None = None,
        eval_data_collator: Callable | None = None,
        num_logged_captions: int = 5,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
    ):
        if not isinstance(model, BlapForConditionalGeneration):
            raise TypeError(f"`model` must be a BlapForConditionalGeneration, got {type(model).__name__}.")
        if args is None:
            args = BlapStage2TrainingArguments(output_dir="trainer_output")
        if not isinstance(args, Seq2SeqTrainingArguments):
            raise TypeError(f"`args` must be Seq2SeqTrainingArguments, got {type(args).__name__}.")
        if args.remove_unused_columns:
            logger.info("Setting `remove_unused_columns=False`: the collator reads the audio and caption columns.")
            args.remove_unused_columns = False
        if data_collator is None:
            if processing_class is None:
                raise ValueError("Pass `processing_class` (a BlapProcessor) or a `data_collator`.")
            data_collator = BlapDataCollator(processing_class)
        if eval_data_collator is None:
            eval_data_collator = (
                data_collator.for_evaluation() if hasattr(data_collator, "for_evaluation") else data_collator
            )
        if caption_metrics is not None and not args.predict_with_generate:
            warnings.warn(
                "`caption_metrics` is given but `predict_with_generate=False`: evaluation reports the loss only.",
                UserWarning,
                stacklevel=2,
            )
        if num_logged_captions < 0:
            raise ValueError(f"`num_logged_captions` must be >= 0, got {num_logged_captions}.")
        warn_if_float16(model, args)
        self.trainable_parameter_names = configure_stage2_trainable(model)
        self.caption_metrics = caption_metrics if caption_metrics is not None else default_caption_metrics
        self.eval_data_collator = eval_data_collator
        self.num_logged_captions = num_logged_captions
        self.eval_samples: list[dict[str, Any]] = []
        self._eval_references: list[list[str]] | None = None
        self._eval_prefix = "eval"
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=self._compute_caption_metrics if args.predict_with_generate else None,
            callbacks=callbacks,
            optimizers=optimizers,
        )

    # ------------------------------------------------------------------------------------------------ data loaders

    def _with_eval_collator(self, make_loader: Callable[[], Any]) -> Any:
        train_collator = self.data_collator
        self.data_collator = self.eval_data_collator
        try:
            return make_loader()
        finally:
            self.data_collator = train_collator

    def get_train_dataloader(self):
        return train_dataloader_with_seeded_examples(self, super().get_train_dataloader)

    def get_eval_dataloader(self, eval_dataset: Any = None):
        return self._with_eval_collator(lambda: super(BlapStage2Trainer, self).get_eval_dataloader(eval_dataset))

    def get_test_dataloader(self, test_dataset: Any):
        return self._with_eval_collator(lambda: super(BlapStage2Trainer, self).get_test_dataloader(test_dataset))

    # ------------------------------------------------------------------------------------------------- evaluation

    def _pad_tensors_to_max_len(self, tensor: torch.Tensor, max_length: int) -> torch.Tensor:
        pad_token_id = self.model.config.text_config.pad_token_id
        padded = torch.full((tensor.shape[0], max_length), pad_token_id, dtype=tensor.dtype, device=tensor.device)
        padded[:, : tensor.shape[-1]] = tensor
        return padded

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
        **gen_kwargs,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        # `Seq2SeqTrainer.prediction_step` writes its defaults (`max_length=20`) into the model's generation config,
        # which then clashes with BLAP's `max_new_tokens` in every later `generate` and in saved checkpoints.
        generation_config = copy.deepcopy(self.model.generation_config)
        try:
            return super().prediction_step(
                model, inputs, prediction_loss_only=prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs
            )
        finally:
            self.model.generation_config = generation_config

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        # Tied aliases of the T5 embeddings are not saved; their absence is expected.
        tied = set(getattr(self.model, "all_tied_weights_keys", None) or ())
        load_result.missing_keys[:] = [key for key in load_result.missing_keys if key not in tied]
        super()._issue_warnings_after_load(load_result)

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        dataset = getattr(dataloader, "dataset", None)
        caption_column = getattr(self.eval_data_collator, "caption_column", CAPTIONS_COLUMN)
        self._eval_references = references_of(dataset, caption_column) if self.compute_metrics is not None else None
        self._eval_prefix = metric_key_prefix
        try:
            return super().evaluation_loop(
                dataloader,
                description,
                prediction_loss_only=prediction_loss_only,
                ignore_keys=ignore_keys,
                metric_key_prefix=metric_key_prefix,
            )
        finally:
            self._eval_references = None

    def decode_predictions(self, predictions: np.ndarray) -> list[str]:
        """
        Generated token ids (padded with -100 across processes, with the pad token by `Seq2SeqTrainer`) to text.

        Args:
            predictions (`np.ndarray` of shape `(num_examples, length)`).

        Returns:
            `list[str]`: one caption per example.
        """
        tokenizer = self.processing_class.tokenizer
        ids = np.where(predictions < 0, tokenizer.pad_token_id, predictions)
        return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def _compute_caption_metrics(self, eval_prediction: EvalPrediction) -> dict[str, float]:
        predictions = eval_prediction.predictions
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        references = self._eval_references
        if references is None:
            raise RuntimeError("Caption metrics need the evaluation dataset's captions; none were recorded.")
        # Data-parallel evaluation pads the last batches with repeated examples at the end: drop them.
        if len(predictions) < len(references):
            raise ValueError(f"Got {len(predictions)} generated captions for {len(references)} evaluation examples.")
        predictions = predictions[: len(references)]
        texts = self.decode_predictions(predictions)
        metrics = dict(self.caption_metrics(texts, references))
        pad_token_id = self.processing_class.tokenizer.pad_token_id
        metrics["gen_len"] = float(np.mean(np.sum((predictions != pad_token_id) & (predictions >= 0), axis=-1)))
        self._log_samples(texts, references)
        return metrics

    def _log_samples(self, predictions: list[str], references: list[list[str]]) -> None:
        samples = [
            {"prediction": prediction, "references": refs}
            for prediction, refs in list(zip(predictions, references))[: self.num_logged_captions]
        ]
        self.eval_samples = samples
        if not samples or not self.is_world_process_zero():
            return
        for index, sample in enumerate(samples):
            logger.info(
                "%s sample %d at step %d: %r | reference: %r",
                self._eval_prefix,
                index,
                self.state.global_step,
                sample["prediction"],
                sample["references"][0],
            )
        os.makedirs(self.args.output_dir, exist_ok=True)
        record = {"step": self.state.global_step, "prefix": self._eval_prefix, "samples": samples}
        with open(os.path.join(self.args.output_dir, EVAL_CAPTIONS_FILE), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------------------------------ saving and loading

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not has_lora(self.model):
            super()._save(output_dir, state_dict=state_dict)
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        save_stage2_adapter(self.accelerator.unwrap_model(self.model), output_dir, state_dict=state_dict)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        if os.path.isfile(os.path.join(resume_from_checkpoint, STAGE2_ADAPTER_MANIFEST)):
            load_stage2_adapter(model if model is not None else self.model, resume_from_checkpoint, is_trainable=True)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model=model)

    def _load_best_model(self) -> None:
        checkpoint = self.state.best_model_checkpoint
        if checkpoint is not None and os.path.isfile(os.path.join(checkpoint, STAGE2_ADAPTER_MANIFEST)):
            logger.info("Loading the best adapter from %s (score: %s).", checkpoint, self.state.best_metric)
            load_stage2_adapter(self.model, checkpoint, is_trainable=True)
            return
        super()._load_best_model()

    # ------------------------------------------------------------------------------------------------- model card

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str | None] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        """
        Write `output_dir/README.md`: what was trained from what data, the hyperparameters, the evaluation table and
        sample captions (see [`render_stage2_model_card`]). Arguments as for `Trainer.create_model_card`: `dataset`
        gives display names (training data first, evaluation data second), `dataset_tags` Hub dataset ids for the
        metadata, `finetuned_from` the starting checkpoint; `tasks` and `dataset_args` are not used.
        """
        write_model_card(self, None, language, license, tags, model_name, finetuned_from, dataset_tags, dataset)


__all__ = [
    "LORA_TARGET_MODULES",
    "BlapStage2Trainer",
    "BlapStage2TrainingArguments",
    "add_lora",
    "configure_stage2_trainable",
    "default_caption_metrics",
    "has_lora",
    "load_language_model_weights",
    "load_stage2_adapter",
    "load_stage2_lora_folder",
    "load_stage2_model",
    "references_of",
    "save_stage2_adapter",
    "warn_if_float16",
]
