"""
The peft adapter folder of a LoRA stage-2 run, and how to tell a LoRA model.

A LoRA run ([`~training.lora.add_lora`]) is a `peft.PeftModel`. Its folder is a standard peft adapter folder
(`adapter_config.json`, `adapter_model.safetensors`) that holds:

- the LoRA weights on Flan-T5's attention, by peft;
- the Q-Former, the audio LayerNorm and the projection into the language model, as peft `modules_to_save`;
- the query tokens, a bare `nn.Parameter` that `modules_to_save` cannot name (it wraps modules only):
  [`write_lora_extras`] adds them to `adapter_model.safetensors` under the key peft uses for every weight
  (`base_model.model.query_tokens`). peft's loader passes entries that are not adapter weights through to
  `load_state_dict`, so `PeftModel.from_pretrained(base, folder)` restores them;
- the run's generation settings (`generation_config.json`);
- where the language model was read from (`blap_language_model.json`), for a run that started from a stage-1
  checkpoint and a separate Flan-T5: the base peft records is then the stage-1 checkpoint, which has no language
  model.

[`BlapStage2Trainer`] and [`~training.lora.save_lora_captioner`] write it; [`~training.lora.load_lora_captioner`]
reads it.
"""

import json
import os
from pathlib import Path

import safetensors.torch
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from peft import PeftModel
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

# LoRA on the query and value projections of every T5 attention (self-attention and cross-attention). peft matches a
# string target with `re.fullmatch` against module names; the Q-Former and HTS-AT name theirs `query` / `value`.
LORA_TARGET_MODULES = r"language_model\..*\.(SelfAttention|EncDecAttention)\.(q|v)"
# The stage-2 modules trained beside the adapter (peft keeps a trainable copy of each and saves it with the adapter).
STAGE2_MODULES_TO_SAVE = ("qformer", "audio_layernorm", "language_projection")
# The stage-2 parameter that is no module's own: saved into the adapter file by this module.
QUERY_TOKENS = "query_tokens"
_PEFT_PREFIX = "base_model.model."
# Where the language model was read from: `{"language_model_name_or_path": ...}`.
LANGUAGE_MODEL_FILE = "blap_language_model.json"


def is_lora_model(model: torch.nn.Module) -> bool:
    """Whether `model` is a `peft.PeftModel` (e.g. from [`~training.lora.add_lora`])."""
    return isinstance(model, PeftModel)


def is_lora_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a local peft adapter folder (it holds `adapter_config.json`)."""
    return os.path.isfile(os.path.join(path, CONFIG_NAME))


def write_lora_extras(model: PeftModel, save_directory: str | os.PathLike) -> None:
    """
    Complete an adapter folder that `model.save_pretrained` wrote: add the query tokens to
    `adapter_model.safetensors` (replaced atomically), write the generation settings (`generation_config.json`) and
    where the language model was read from (`blap_language_model.json`, when the model's text config names it, as
    after `load_stage2_model(stage1, language_model)`).

    Args:
        model (`peft.PeftModel`) from [`~training.lora.add_lora`].
        save_directory (`str` or `os.PathLike`): the folder `model.save_pretrained` wrote.
    """
    save_directory = Path(save_directory)
    weights_file = save_directory / SAFETENSORS_WEIGHTS_NAME
    weights = safetensors.torch.load_file(weights_file)
    base = model.get_base_model()
    weights[_PEFT_PREFIX + QUERY_TOKENS] = getattr(base, QUERY_TOKENS).detach().contiguous().cpu()
    partial = weights_file.with_name(weights_file.name + ".partial")
    safetensors.torch.save_file(weights, partial, metadata={"format": "pt"})
    os.replace(partial, weights_file)
    base.generation_config.save_pretrained(save_directory)
    language_model = base.config.text_config.name_or_path
    if language_model:
        if Path(language_model).exists():  # the adapter is read from elsewhere: recorded absolute
            language_model = str(Path(language_model).resolve())
        record = {"language_model_name_or_path": language_model}
        partial = save_directory / (LANGUAGE_MODEL_FILE + ".partial")
        partial.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(partial, save_directory / LANGUAGE_MODEL_FILE)


def recorded_language_model(folder: str | os.PathLike) -> str | None:
    """
    The language model an adapter folder records ([`write_lora_extras`]), or `None`.

    Args:
        folder (`str` or `os.PathLike`): a local adapter folder or a Hub id.
    """
    if os.path.isdir(folder):
        path = Path(folder) / LANGUAGE_MODEL_FILE
        if not path.is_file():
            return None
    else:
        try:
            path = Path(hf_hub_download(str(folder), LANGUAGE_MODEL_FILE))
        except EntryNotFoundError:
            return None
    return json.loads(path.read_text(encoding="utf-8"))["language_model_name_or_path"]


__all__ = [
    "LANGUAGE_MODEL_FILE",
    "LORA_TARGET_MODULES",
    "QUERY_TOKENS",
    "STAGE2_MODULES_TO_SAVE",
    "is_lora_folder",
    "is_lora_model",
    "recorded_language_model",
    "write_lora_extras",
]
