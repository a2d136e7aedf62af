"""
Stage 2 (generative training) and fine-tuning of BLAP with the `transformers` Trainer.

- `load_stage2_model`: a converted release / stage-2 checkpoint, or a stage-1 checkpoint plus a Flan-T5 checkpoint.
- `configure_stage2_trainable`: exactly the stage-2 trainable set (Q-Former, query tokens, audio LayerNorm, projection
  into the LLM), plus the LoRA weights of a `peft.PeftModel` from `training.lora.add_lora`.
- `BlapStage2Trainer`: `Seq2SeqTrainer` with BLAP's collator, caption metrics on generated captions, logged sample
  captions, peft adapter folders for LoRA runs and a model card with data, hyperparameters and the evaluation table.
"""

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import huggingface_hub
import numpy as np
import safetensors.torch
import torch
from peft import PeftModel
from transformers import GenerationConfig, Seq2SeqTrainer, Seq2SeqTrainingArguments, T5Config
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.integrations.fsdp import is_fsdp_managed_module
from transformers.trainer_utils import EvalLoopOutput, EvalPrediction

from ..configuration_blap import BlapConfig
from ..hub import HubErrorsInTrainer
from ..modeling_blap import BlapForConditionalGeneration
from .adapter import QUERY_TOKENS, is_lora_model, write_lora_extras
from .collator import BlapDataCollator, as_caption_list, train_dataloader_with_seeded_examples
from .data import CAPTIONS_COLUMN
from .launch import OVERWRITE_OUTPUT_DIR_HELP
from .model_card import TrainingCardMixin

logger = logging.getLogger(__name__)

CaptionMetricsFn = Callable[[list[str], list[list[str]]], dict[str, float]]

EVAL_CAPTIONS_FILE = "eval_captions.jsonl"
# The batch entries `generate` reads (the rest are training targets).
GENERATION_INPUTS = ("input_features", "input_ids", "attention_mask")
# What stage 2 reads of a Flan-T5 repository on the Hub: its config and safetensors weights (single file or sharded).
LANGUAGE_MODEL_FILES = ["config.json", "model.safetensors", "model-*.safetensors", "model.safetensors.index.json"]


# --------------------------------------------------------------------------------------------------------- model setup


def language_model_folder(name_or_path: str | os.PathLike) -> Path:
    """A local T5 / Flan-T5 folder: `name_or_path` itself, or the Hub repository's config and safetensors weights
    (`huggingface_hub.snapshot_download`, cached)."""
    if os.path.isdir(name_or_path):
        return Path(name_or_path)
    return Path(huggingface_hub.snapshot_download(str(name_or_path), allow_patterns=LANGUAGE_MODEL_FILES))


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
        path (`str` or `os.PathLike`): a T5 / Flan-T5 folder or Hub id with safetensors weights.
    """
    state_dict = _language_model_state_dict(language_model_folder(path))
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
    dtype: torch.dtype | str | None = None,
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
        language_model_name_or_path (`str` or `os.PathLike`, *optional*): a T5 / Flan-T5 folder or Hub id (e.g.
            `google/flan-t5-xl`, safetensors weights); replaces the checkpoint's language model.
        dtype (`torch.dtype` or `str`, *optional*): e.g. `torch.bfloat16` for the frozen weights; the Q-Former and
            query tokens stay float32 (`_keep_in_fp32_modules`) and [`configure_stage2_trainable`] makes the other
            trainable weights float32. `"auto"` (as for `from_pretrained`) loads the checkpoint's dtype and leaves the
            language model in the dtype it was loaded in.

    Returns:
        [`BlapForConditionalGeneration`].
    """
    config = BlapConfig.from_pretrained(model_name_or_path)
    quiet = contextlib.nullcontext()
    if language_model_name_or_path is not None:
        language_model = language_model_folder(language_model_name_or_path)
        text_config = T5Config.from_pretrained(language_model)
        text_config.dense_act_fn = "gelu"  # the release runs Flan-T5 with exact GELU
        text_config.name_or_path = str(language_model_name_or_path)  # recorded by a LoRA run's adapter folder
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
        load_language_model_weights(model, language_model)
        if isinstance(dtype, torch.dtype):
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
    if any(key.startswith("language_projection.") for key in info["missing_keys"]):
        logger.info("`language_projection` is not in %s: it starts from its initialisation.", model_name_or_path)
    try:
        GenerationConfig.from_pretrained(model_name_or_path)
    except OSError:
        # No generation_config.json (a stage-1 checkpoint): transformers built one from the config, without BLAP's
        # beam search and caption lengths.
        model.generation_config = model._default_generation_config(model.config)
    return model


def configure_stage2_trainable(model: BlapForConditionalGeneration | PeftModel) -> list[str]:
    """
    Freeze the audio encoder and the language model, train the Q-Former, query tokens, audio LayerNorm and the
    projection into the language model (`set_stage2_trainable`). For a `peft.PeftModel` from
    [`~training.lora.add_lora`]: the LoRA weights, peft's trainable copies of the stage-2 modules (`modules_to_save`)
    and the query tokens, not the original modules peft keeps beside the copies. Trainable weights are made float32
    (a model loaded in bfloat16 keeps its frozen weights in bfloat16).

    Args:
        model ([`BlapForConditionalGeneration`] or `peft.PeftModel`).

    Returns:
        `list[str]`: the trainable parameter names (of the [`BlapForConditionalGeneration`]), sorted.
    """
    lora = is_lora_model(model)
    base = model.get_base_model() if lora else model
    base.set_stage2_trainable()
    for name, param in base.named_parameters():
        if lora:
            param.requires_grad = ".lora_" in name or ".modules_to_save." in name or name == QUERY_TOKENS
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return sorted(name for name, param in base.named_parameters() if param.requires_grad)


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


class BlapStage2Trainer(TrainingCardMixin, HubErrorsInTrainer, Seq2SeqTrainer):
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
    - A LoRA model (a `peft.PeftModel` from [`~training.lora.add_lora`]) saves peft adapter folders (the adapter,
      the stage-2 modules as `modules_to_save`, the query tokens and the generation settings, see
      `training.adapter`); `Trainer` reads them back itself for `resume_from_checkpoint` and `load_best_model_at_end`.
    - `create_model_card` (also run by `push_to_hub`) writes a card with the data, hyperparameters and evaluation
      table.

    Args:
        model ([`BlapForConditionalGeneration`] or a `peft.PeftModel` of one from [`~training.lora.add_lora`]).
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
        model: BlapForConditionalGeneration | PeftModel,
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
        base = model.get_base_model() if is_lora_model(model) else model
        if not isinstance(base, BlapForConditionalGeneration):
            raise TypeError(
                f"`model` must be a BlapForConditionalGeneration or a peft model of one, got {type(base).__name__}."
            )
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
        warn_if_float16(base, args)
        self.trainable_parameter_names = configure_stage2_trainable(model)
        self.caption_metrics = caption_metrics if caption_metrics is not None else default_caption_metrics
        self.eval_data_collator = eval_data_collator
        self.num_logged_captions = num_logged_captions
        self.eval_samples: list[dict[str, Any]] = []
        self._eval_references: list[list[str]] | None = None
        self._eval_prefix = "eval"
        self.generation_kwargs: dict[str, Any] = {}
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

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
        **gen_kwargs,
    ) -> dict[str, float]:
        """`Seq2SeqTrainer.evaluate`; `gen_kwargs` (e.g. `num_beams`) reach `generate` in [`prediction_step`]."""
        self.generation_kwargs = gen_kwargs
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def predict(
        self, test_dataset: Any, ignore_keys: list[str] | None = None, metric_key_prefix: str = "test", **gen_kwargs
    ):
        """`Seq2SeqTrainer.predict`; `gen_kwargs` (e.g. `num_beams`) reach `generate` in [`prediction_step`]."""
        self.generation_kwargs = gen_kwargs
        return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
        **gen_kwargs,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """
        The loss (`Trainer.prediction_step`) and, with `predict_with_generate`, the generated caption ids: `generate`
        with the model's generation config, overridden by `generation_num_beams` / `generation_max_length` and the
        options given to `evaluate` / `predict`. The model's generation config is left as it is, and the ids are not
        padded here (the evaluation loop pads batches and processes with -100).
        """
        if prediction_loss_only or not self.args.predict_with_generate:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        loss, _, _ = super().prediction_step(model, inputs, prediction_loss_only=True, ignore_keys=ignore_keys)
        options = {"num_beams": self.args.generation_num_beams, "max_length": self.args.generation_max_length}
        options = {name: value for name, value in options.items() if value is not None}
        options.update(self.generation_kwargs)
        options.update(gen_kwargs)
        options.setdefault("synced_gpus", is_deepspeed_zero3_enabled() or is_fsdp_managed_module(self.model))
        generation_inputs = {
            name: inputs[name].to(self.args.device) for name in GENERATION_INPUTS if inputs.get(name) is not None
        }
        with torch.no_grad():
            generated = self.model.generate(**generation_inputs, **options)
        return loss, generated, inputs.get("labels")

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
        Generated token ids (padded with -100 by the evaluation loop across batches and processes) to text.

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

    # ---------------------------------------------------------------------------------------------------- saving

    def save_model(self, output_dir: str | None = None, *args, **kwargs) -> None:
        """
        `Trainer.save_model` (final saves and checkpoints alike); a LoRA model's adapter folder also gets the query
        tokens and the generation settings ([`~training.adapter.write_lora_extras`]).
        """
        super().save_model(output_dir, *args, **kwargs)
        if is_lora_model(self.model) and self.args.should_save:
            write_lora_extras(self.model, output_dir if output_dir is not None else self.args.output_dir)


__all__ = [
    "BlapStage2Trainer",
    "BlapStage2TrainingArguments",
    "configure_stage2_trainable",
    "default_caption_metrics",
    "load_language_model_weights",
    "load_stage2_model",
    "references_of",
    "warn_if_float16",
]
