"""
What both training scripts settle before the first step: the data arguments they share, where a run resumes, whether
the output folder may be written, whether a push to the Hub can work, and start-up errors as one readable line.
"""

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from transformers import TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .data import check_audio_files, load_caption_dataset

logger = logging.getLogger(__name__)

OVERWRITE_OUTPUT_DIR_HELP = (
    "Start over in an --output_dir that holds checkpoints or a trained model (its checkpoint-* folders are deleted)."
    " Without it, rerunning a command resumes from the last complete checkpoint there."
)
DATA_REPORT_NAME = "data_report.json"
# Files that mark a folder as holding a trained model (full weights or a LoRA stage-2 adapter).
_TRAINED_MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "blap_stage2_adapter.json")


class StartupError(ValueError):
    """A problem with the command line, the data or the environment found before training starts."""


@contextlib.contextmanager
def startup_errors_as_one_line(program: str) -> Iterator[None]:
    """
    Inside the block, an error about the inputs (`ValueError`, `TypeError`, `KeyError`, `OSError`, `ImportError`)
    ends the program with one line, `program: error: message`, instead of a traceback.
    """
    try:
        yield
    except (ValueError, TypeError, KeyError, OSError, ImportError) as error:
        message = " ".join(str(error.args[0] if isinstance(error, KeyError) and error.args else error).split())
        raise SystemExit(f"{program}: error: {message or type(error).__name__}") from error


# ----------------------------------------------------------------------------------------------- output and resume


def _complete_checkpoints(output_dir: Path) -> tuple[list[Path], list[Path]]:
    """The `checkpoint-N` folders of `output_dir` by step: complete ones (with `trainer_state.json`) and the rest."""
    found = []
    for path in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = path.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
        if path.is_dir() and step.isdigit():
            found.append((int(step), path))
    found.sort()
    complete = [path for _, path in found if (path / "trainer_state.json").is_file()]
    return complete, [path for _, path in found if path not in complete]


def checkpoint_to_resume(args: TrainingArguments) -> str | None:
    """
    Where training continues from, as in transformers' example scripts:

    - `--resume_from_checkpoint PATH`: that checkpoint (it must exist), also into the same `--output_dir`;
    - otherwise the last complete `checkpoint-N` in `--output_dir` (one a crash left without `trainer_state.json` is
      skipped), so rerunning the same command after a crash continues the run;
    - `--overwrite_output_dir`: start over; the old `checkpoint-N` folders are deleted so that a later rerun cannot
      resume from them.

    A folder that already holds a trained model and no checkpoint is not trained into again without
    `--overwrite_output_dir`.

    Args:
        args ([`TrainingArguments`]) with an `overwrite_output_dir` field.

    Returns:
        `str` or `None`: the checkpoint for `Trainer.train(resume_from_checkpoint=...)`.
    """
    overwrite = getattr(args, "overwrite_output_dir", False)
    if args.resume_from_checkpoint is not None:
        if overwrite:
            raise StartupError(
                "--resume_from_checkpoint and --overwrite_output_dir contradict each other: pass one of them."
            )
        checkpoint = Path(args.resume_from_checkpoint)
        if not (checkpoint / "trainer_state.json").is_file():
            raise StartupError(
                f"--resume_from_checkpoint {checkpoint}: not a complete checkpoint (no trainer_state.json); pass a"
                " checkpoint-N folder written by an earlier run, or drop the option."
            )
        return str(checkpoint)
    output_dir = Path(args.output_dir)
    if not output_dir.is_dir():
        return None
    complete, incomplete = _complete_checkpoints(output_dir)
    if overwrite:
        if args.should_save:  # one process deletes
            for path in complete + incomplete:
                logger.warning("--overwrite_output_dir: deleting %s from the earlier run.", path)
                shutil.rmtree(path)
        return None
    for path in incomplete:
        logger.warning("%s is incomplete (the run stopped while saving it): not resuming from it.", path)
    if complete:
        logger.warning(
            "Resuming from %s, the last checkpoint in %s (pass --overwrite_output_dir to start over).",
            complete[-1],
            output_dir,
        )
        return str(complete[-1])
    if any((output_dir / name).is_file() for name in _TRAINED_MODEL_FILES):
        raise StartupError(
            f"--output_dir {output_dir} already holds a trained model and no checkpoint to resume from: pass"
            " --overwrite_output_dir to train again into it, or choose another --output_dir."
        )
    return None


def check_push_settings(args: TrainingArguments) -> None:
    """
    With `--push_to_hub`: a `--hub_model_id` is given, the Hub is not switched off (`HF_HUB_OFFLINE`), and the Hub
    answers with a logged-in user. Checked before training, so that a run does not end in a failed upload.
    """
    if not args.push_to_hub:
        return
    import huggingface_hub
    from huggingface_hub import constants

    if not args.hub_model_id:
        raise StartupError("--push_to_hub needs --hub_model_id (the Hub repository, e.g. you/blap-finetuned).")
    if constants.HF_HUB_OFFLINE:
        raise StartupError(
            "--push_to_hub: the Hub is switched off on this machine (HF_HUB_OFFLINE is set); unset it, or drop"
            " --push_to_hub and upload the output folder later with `blap push`."
        )
    try:
        huggingface_hub.HfApi().whoami(token=args.hub_token)
    except Exception as error:  # offline, no token, bad token: all end the same way
        reason = " ".join(str(error).split())[:200]
        raise StartupError(
            f"--push_to_hub: cannot reach the Hub as a logged-in user ({type(error).__name__}: {reason}); log in with"
            " `hf auth login` on a machine with network, or drop --push_to_hub and upload later with `blap push`."
        ) from error


# ----------------------------------------------------------------------------------------------------------- data


@dataclass
class CaptionDataArguments:
    """The data options of both training scripts; every layout is read by [`load_caption_dataset`]."""

    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training data: a CSV / JSON Lines file (an audio path column and caption columns), a folder"
            " (metadata.csv / metadata.jsonl, audio files with .txt captions, or a `save_to_disk` dataset) or a Hub"
            " dataset id."
        },
    )
    eval_file: str | None = field(default=None, metadata={"help": "Evaluation data, same formats."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of a Hub dataset."})
    train_split: str = field(default="train", metadata={"help": "Split of a Hub / saved dataset for training."})
    eval_split: str = field(default="validation", metadata={"help": "Split of a Hub / saved dataset for evaluation."})
    eval_fraction: float = field(
        default=0.0, metadata={"help": "Without --eval_file: hold out this fraction of the training clips."}
    )
    audio_column: str = field(default="audio", metadata={"help": "Column with audio paths or Audio values."})
    caption_columns: str | None = field(
        default=None,
        metadata={"help": "Comma-separated caption columns; default: caption, captions, caption_<n>, text."},
    )
    audio_root: str | None = field(default=None, metadata={"help": "Folder that relative audio paths start from."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training clips."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation clips."})
    skip_bad_audio: bool = field(
        default=False,
        metadata={
            "help": "Leave out clips whose audio cannot be opened (counted in data_report.json) instead of stopping"
            " before training with the list of them."
        },
    )
    audio_check_workers: int = field(default=16, metadata={"help": "Threads that open the audio files up front."})


def _load_split(data_args: CaptionDataArguments, name_or_path: str, split: str, limit: int | None):
    caption_columns = data_args.caption_columns.split(",") if data_args.caption_columns else None
    dataset = load_caption_dataset(
        name_or_path,
        config_name=data_args.dataset_config_name,
        split=split,
        audio_column=data_args.audio_column,
        caption_columns=caption_columns,
        audio_root=data_args.audio_root,
    )
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset


def load_caption_splits(
    data_args: CaptionDataArguments, seed: int
) -> tuple[datasets.Dataset | None, datasets.Dataset | None, dict[str, Any]]:
    """
    The training and evaluation sets of a run, their audio checked (every file opened, header only): unreadable clips
    stop the run with one error listing them, or are left out with `--skip_bad_audio`.

    Returns:
        `(train_dataset, eval_dataset, report)`: `datasets.Dataset`s with the columns `audio` and `captions` (or
        `None`), and per split the clips kept and the unreadable ones left out (written to `data_report.json`).
    """
    if data_args.train_file is None and data_args.eval_file is None:
        raise StartupError("Pass --train_file (and/or --eval_file): there is nothing to train or evaluate on.")
    if not 0.0 <= data_args.eval_fraction < 1.0:
        raise StartupError(f"--eval_fraction must be in [0, 1), got {data_args.eval_fraction}.")
    train = evaluation = None
    if data_args.train_file is not None:
        train = _load_split(data_args, data_args.train_file, data_args.train_split, data_args.max_train_samples)
    if data_args.eval_file is not None:
        evaluation = _load_split(data_args, data_args.eval_file, data_args.eval_split, data_args.max_eval_samples)
    elif train is not None and data_args.eval_fraction:
        parts = train.train_test_split(test_size=data_args.eval_fraction, seed=seed)
        train, evaluation = parts["train"], parts["test"]
    report: dict[str, Any] = {}
    checked = []
    for name, dataset in (("train", train), ("eval", evaluation)):
        if dataset is not None:
            dataset, report[name] = check_audio_files(
                dataset, skip_bad_audio=data_args.skip_bad_audio, max_workers=data_args.audio_check_workers
            )
        checked.append(dataset)
    return checked[0], checked[1], report


def write_data_report(output_dir: str | os.PathLike, report: dict[str, Any]) -> None:
    """`output_dir/data_report.json`: per split, the clips trained or evaluated on and the unreadable ones skipped."""
    os.makedirs(output_dir, exist_ok=True)
    Path(output_dir, DATA_REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


__all__ = [
    "DATA_REPORT_NAME",
    "OVERWRITE_OUTPUT_DIR_HELP",
    "CaptionDataArguments",
    "StartupError",
    "check_push_settings",
    "checkpoint_to_resume",
    "load_caption_splits",
    "startup_errors_as_one_line",
    "write_data_report",
]
