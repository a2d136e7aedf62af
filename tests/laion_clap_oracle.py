"""
LAION CLAP's own HTS-AT (the `laion-clap` package) as the oracle of the audio tower.

How it is installed, and why (see also README, "Tested against LAION CLAP"): laion-clap 1.1.7 pins `numpy<2` and
pulls its training stack (wandb, webdataset, wget, ...), none of which its HTS-AT uses, and this package needs numpy 2.
CI therefore installs it with `pip install --no-deps laion-clap`, plus what `clap_module/htsat.py` really imports:
torchlibrosa (its STFT and log-mel, which imports librosa) and h5py (imported by `clap_module/utils.py`); the
`oracle` extra lists those. Two imports are kept out of the way, without touching laion-clap's code:

- the package `__init__`s of `laion_clap` and `laion_clap.clap_module` import the training and inference wrappers
  (wget, webdataset, the text towers); the HTS-AT module is imported with those packages registered as plain
  namespaces, so only `htsat.py`, `utils.py` and `feature_fusion.py` run;
- `clap_module/utils.py` imports `torchvision.ops.misc.FrozenBatchNorm2d` at the top, for `freeze_batch_norm_2d`,
  which HTS-AT never calls. PyPI's torchvision wheels are CUDA builds that cannot load beside the CPU torch, so when
  torchvision is not installed that one name is a placeholder that raises if it is ever used.
"""

import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import torch

INSTALL_HINT = (
    "The laion-clap oracle is not installed: pip install -e '.[oracle]' && pip install --no-deps 'laion-clap>=1.1.7'"
    " (what .ci/run does)."
)


class _FrozenBatchNorm2dPlaceholder:
    """Stands in for torchvision's FrozenBatchNorm2d, which laion-clap imports but HTS-AT never uses."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("torchvision is not installed; laion-clap's freeze_batch_norm_2d is not available here.")


def _package_root() -> Path:
    """The folder of the installed `laion_clap` package (without importing it)."""
    if "laion_clap" in sys.modules:
        return Path(sys.modules["laion_clap"].__path__[0])
    spec = importlib.util.find_spec("laion_clap")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(INSTALL_HINT)
    return Path(next(iter(spec.submodule_search_locations)))


def _register_namespace(name: str, path: Path) -> None:
    if name not in sys.modules:
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module


def import_htsat() -> types.ModuleType:
    """
    `laion_clap.clap_module.htsat`, imported without the package `__init__`s (see the module docstring).

    Raises:
        `ImportError`: laion-clap or one of the modules its HTS-AT imports is missing (message: how to install).
    """
    root = _package_root()
    _register_namespace("laion_clap", root)
    _register_namespace("laion_clap.clap_module", root / "clap_module")
    # The placeholder is visible only while laion-clap's modules import: other code (transformers checks which
    # packages are installed) must not see a `torchvision` module.
    placeholders = {}
    if importlib.util.find_spec("torchvision") is None:
        placeholders = {
            name: types.ModuleType(name) for name in ("torchvision", "torchvision.ops", "torchvision.ops.misc")
        }
        placeholders["torchvision.ops.misc"].FrozenBatchNorm2d = _FrozenBatchNorm2dPlaceholder
    sys.modules.update(placeholders)
    try:
        return importlib.import_module("laion_clap.clap_module.htsat")
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from error
    finally:
        for name in placeholders:
            sys.modules.pop(name, None)


def htsat_audio_cfg(variant: str) -> types.SimpleNamespace:
    """The `audio_cfg` of laion-clap's own `HTSAT-<variant>.json` model config (48 kHz, 64 mels, 50 Hz - 14 kHz)."""
    config = json.loads((_package_root() / "clap_module" / "model_configs" / f"HTSAT-{variant}.json").read_text())
    return types.SimpleNamespace(**config["audio_cfg"], joint_embed_dim=config["embed_dim"])


def perturb_(module: torch.nn.Module, seed: int) -> None:
    """
    Move every weight and statistic away from its initial value (LayerNorm/BatchNorm scales near 1, biases and running
    means nonzero, running variances positive), so that a wrong mapping cannot pass by accident. The STFT / mel
    kernels, window masks and index buffers keep their fixed values.
    """
    generator = torch.Generator().manual_seed(seed)
    fixed = ("spectrogram_extractor.", "logmel_extractor.", "attn_mask", "relative_position_index")
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if not tensor.is_floating_point() or any(part in name for part in fixed):
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(1.0 + noise.abs())
            elif tensor.ndim == 1 and name.endswith("weight"):
                tensor.copy_(1.0 + 0.1 * noise)
            elif tensor.ndim == 1:
                tensor.copy_(0.1 * noise)
            elif name.endswith("relative_position_bias_table"):
                tensor.copy_(0.5 * noise)
            else:
                tensor.copy_(noise / tensor[0].numel() ** 0.5)


def random_laion_htsat(variant: str, seed: int = 0) -> torch.nn.Module:
    """laion-clap's HTS-AT `variant` ("tiny" or "base", no feature fusion), seeded random weights, eval mode."""
    htsat = import_htsat()
    torch.manual_seed(seed)
    model = htsat.create_htsat_model(htsat_audio_cfg(variant), enable_fusion=False, fusion_type="None")
    perturb_(model, seed)
    return model.eval()


def laion_clap_checkpoint(audio_branch: torch.nn.Module, joint_embed_dim: int, seed: int = 0) -> dict:
    """
    What LAION CLAP's training saves (`training/main.py`): epoch, run name, the DistributedDataParallel model's
    `state_dict` (`module.` prefix) and optimizer state. Besides `audio_branch` the state dict carries the CLAP parts
    that BLAP drops (audio/text projections, logit scales, a text-tower tensor), with random values.
    """
    generator = torch.Generator().manual_seed(seed)
    width = audio_branch.num_features
    state_dict = {f"module.audio_branch.{key}": value for key, value in audio_branch.state_dict().items()}
    others = {
        "audio_projection.0.weight": (joint_embed_dim, width),
        "audio_projection.0.bias": (joint_embed_dim,),
        "audio_projection.2.weight": (joint_embed_dim, joint_embed_dim),
        "audio_projection.2.bias": (joint_embed_dim,),
        "text_projection.0.weight": (joint_embed_dim, 768),
        "text_projection.0.bias": (joint_embed_dim,),
        "text_branch.embeddings.word_embeddings.weight": (8, 768),
        "logit_scale_a": (),
        "logit_scale_t": (),
    }
    for key, shape in others.items():
        state_dict[f"module.{key}"] = torch.randn(shape, generator=generator)
    return {"epoch": 45, "name": "random-htsat", "state_dict": state_dict, "optimizer": {"state": {}}}
