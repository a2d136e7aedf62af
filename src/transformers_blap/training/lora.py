"""
LoRA stage-2 training through peft's own API.

A LoRA run puts a LoRA adapter on Flan-T5's attention and trains the stage-2 set beside it: [`add_lora`] returns a
`peft.PeftModel`, which saves a standard peft adapter folder (what it holds: `training.adapter`).

`PeftModel.from_pretrained(BlapForConditionalGeneration.from_pretrained(base), folder)` therefore gives the trained
model; [`load_lora_captioner`] does that for the base named in the folder, merged by default, with the run's
generation settings (`generation_config.json`).
"""

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from transformers import GenerationConfig

from ..configuration_blap import BlapConfig
from ..modeling_blap import BlapForConditionalGeneration, BlapForRepresentationLearning
from .adapter import (
    LORA_TARGET_MODULES,
    STAGE2_MODULES_TO_SAVE,
    is_lora_model,
    recorded_language_model,
    write_lora_extras,
)
from .stage2 import configure_stage2_trainable, load_stage2_model


def add_lora(
    model: BlapForConditionalGeneration,
    r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.05,
    target_modules: str | Sequence[str] = LORA_TARGET_MODULES,
) -> PeftModel:
    """
    Wrap the model in a `peft.PeftModel` with a LoRA adapter on the language model's attention query and value
    projections and the stage-2 modules as `modules_to_save`; the trainable set is the adapter, the copies of the
    stage-2 modules and the query tokens (see [`configure_stage2_trainable`]).

    Args:
        model ([`BlapForConditionalGeneration`]).
        r (`int`, *optional*, defaults to 8): LoRA rank.
        lora_alpha (`int`, *optional*, defaults to 16): LoRA scaling numerator.
        lora_dropout (`float`, *optional*, defaults to 0.05).
        target_modules (`str` or `Sequence[str]`, *optional*): a regular expression (full match) or module names;
            defaults to every T5 attention `q` and `v`.

    Returns:
        `peft.PeftModel`: the wrapped model (`get_base_model()` is `model`, with the adapter injected).
    """
    if not isinstance(model, BlapForConditionalGeneration):
        raise TypeError(f"`model` must be a BlapForConditionalGeneration, got {type(model).__name__}.")
    config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        modules_to_save=list(STAGE2_MODULES_TO_SAVE),
    )
    # peft records `model.name_or_path` as the base; a local folder is recorded absolute (the adapter is read from
    # elsewhere).
    base = model.name_or_path
    with warnings.catch_warnings():
        # peft 0.21.2 reads transformers' deprecated `is_gradient_checkpointing` while wrapping; not the user's to fix.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    if base and Path(base).exists():
        peft_model.peft_config["default"].base_model_name_or_path = str(Path(base).resolve())
    targeted = {name.split(".lora_")[0] for name, _ in model.named_parameters() if ".lora_" in name}
    outside = sorted(name for name in targeted if not name.startswith("language_model."))
    if not targeted or outside:
        raise ValueError(
            f"`target_modules` {target_modules!r} must select language-model layers only; it selected"
            f" {len(targeted)} modules, outside the language model: {outside[:5]}."
        )
    configure_stage2_trainable(peft_model)
    return peft_model


def save_lora_captioner(model: PeftModel, save_directory: str | os.PathLike) -> None:
    """
    Save a LoRA stage-2 model as a peft adapter folder that holds everything the run trained (see the module
    docstring); `BlapStage2Trainer` saves its checkpoints the same way.

    Args:
        model (`peft.PeftModel`) from [`add_lora`].
        save_directory (`str` or `os.PathLike`).
    """
    model.save_pretrained(save_directory)
    write_lora_extras(model, save_directory)


def load_lora_captioner(
    folder: str | os.PathLike,
    base: str | os.PathLike | None = None,
    language_model: str | os.PathLike | None = None,
    merge: bool = True,
    dtype: torch.dtype | str | None = None,
) -> BlapForConditionalGeneration | PeftModel:
    """
    The captioner a LoRA stage-2 run trained: its base model with the adapter folder applied
    (`PeftModel.from_pretrained`), in eval mode, nothing trainable, with the folder's generation settings.

    Args:
        folder (`str` or `os.PathLike`): a peft adapter folder written by a LoRA run (local or a Hub id).
        base (`str` or `os.PathLike`, *optional*): the base model; defaults to the one recorded in the folder's
            `adapter_config.json`.
        language_model (`str` or `os.PathLike`, *optional*): the Flan-T5 folder or Hub id, when the base is a
            stage-1 checkpoint (as for [`load_stage2_model`]); defaults to the one the folder records.
        merge (`bool`, *optional*, defaults to `True`): merge the adapter into the weights and return a plain
            [`BlapForConditionalGeneration`] (what the pipeline and the CLI use); `False` returns the `PeftModel`.
        dtype (`torch.dtype` or `str`, *optional*): the base model's, as for `from_pretrained`.

    Returns:
        [`BlapForConditionalGeneration`] (merged) or `peft.PeftModel`.
    """
    base = base if base is not None else PeftConfig.from_pretrained(folder).base_model_name_or_path
    if not base:
        raise OSError(f"{folder} does not name the base model of its LoRA adapter: pass `base=`.")
    if os.path.isabs(base) and not os.path.exists(base):
        raise OSError(
            f"{folder} is a LoRA adapter on the base model {base}, which is not on this machine: pass `base=` (the"
            " base model's folder or Hub id)."
        )
    if language_model is None and BlapForRepresentationLearning.__name__ in (
        BlapConfig.from_pretrained(base).architectures or []
    ):
        language_model = recorded_language_model(folder)
        if language_model is None or (os.path.isabs(language_model) and not os.path.isdir(language_model)):
            raise OSError(
                f"{folder} is a LoRA adapter on the stage-1 checkpoint {base}, whose language model"
                f" ({language_model or 'not recorded'}) is not on this machine: pass `language_model=` (a Flan-T5"
                " folder or Hub id)."
            )
    model = PeftModel.from_pretrained(load_stage2_model(base, language_model, dtype=dtype), folder)
    try:
        generation_config = GenerationConfig.from_pretrained(folder)
    except OSError:  # an adapter folder saved without the run's generation settings: the base model's
        generation_config = None
    if merge:
        model = model.merge_and_unload()
    if generation_config is not None:
        (model.get_base_model() if is_lora_model(model) else model).generation_config = generation_config
    model.requires_grad_(False)
    return model.eval()


__all__ = ["add_lora", "load_lora_captioner", "save_lora_captioner"]
