"""
The handlers of `blap caption`, `blap caption-ray`, `blap evaluate` and `blap push` (`argparse.Namespace -> int`
exit status). The parsers, the error handling and `main` are the `blap_cli` package's, outside this one so that
`--help` loads neither torch nor transformers; `python -m transformers_blap.cli` runs the same `blap` command.
"""

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

from blap_cli import main

from .library_commands import command_inputs, ray_job_inputs, ray_pool_options
from .precision import resolve_dtype

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from .tagging import ZeroShotTagger


# ------------------------------------------------------------------------------------------------------ caption


def load_captioner(model: str, dtype: "torch.dtype | str") -> tuple["str | PreTrainedModel", str]:
    """
    What `--model` names, for captioning: the original release converted (`conversion.release`), a LoRA run's
    adapter folder loaded and merged (`training.lora.load_lora_captioner`), or else the folder or Hub id itself.

    Returns:
        `tuple`: the loaded model or the folder/id to load it from, and the folder/id its processor is read from.
    """
    from .conversion.release import model_or_converted_release

    source = os.fspath(model_or_converted_release(model))
    # A LoRA run's peft adapter folder, told by its file name: the training code needs the `train` extra.
    if os.path.isfile(os.path.join(source, "adapter_config.json")):
        from .training.lora import load_lora_captioner

        return load_lora_captioner(source, dtype=dtype), source
    return source, source


def _generation_options(args: argparse.Namespace) -> dict:
    """The pipeline call options set by [`_add_generation_arguments`]' flags (unset ones left to the model)."""
    options = {
        "num_beams": args.num_beams,
        "max_new_tokens": args.max_new_tokens,
        "min_length": args.min_length,
        "prompt": args.prompt,
        "window_s": args.window_s,
        "hop_s": args.hop_s,
        "min_tail_s": args.min_tail_s,
    }
    return {name: value for name, value in options.items() if value is not None}


def _default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def _caption_tagger(args: argparse.Namespace, device: str) -> "ZeroShotTagger | None":
    """The `--tags` / `--tag-model` tagger, or `None` without them."""
    if args.tags is None and args.tag_model is None:
        if args.tag_top_k is not None or args.tag_threshold is not None or args.tag_template is not None:
            raise ValueError("--tag-top-k, --tag-threshold and --tag-template need --tags and --tag-model.")
        return None
    if args.tags is None or args.tag_model is None:
        raise ValueError("zero-shot tags need both --tags LABELS_FILE and --tag-model STAGE1_MODEL.")
    from .tagging import DEFAULT_TAG_TEMPLATE, ZeroShotTagger, read_labels

    labels = read_labels(args.tags)
    try:
        return ZeroShotTagger.from_pretrained(
            args.tag_model,
            labels,
            device=device,
            dtype=resolve_dtype(args.dtype, device),
            top_k=args.tag_top_k,
            threshold=args.tag_threshold,
            template=args.tag_template or DEFAULT_TAG_TEMPLATE,
        )
    except (KeyboardInterrupt, ImportError):
        raise
    except Exception as error:
        raise ValueError(f"cannot load the tag model {args.tag_model}: {type(error).__name__}: {error}") from error


def run_caption(args: argparse.Namespace) -> int:
    from transformers import pipeline

    from .captioning import CaptionInterrupted, caption_dataset, caption_to_jsonl

    inputs = command_inputs(args)
    if inputs is None:
        return 2
    device = args.device or _default_device()
    tagger = _caption_tagger(args, device)
    try:
        dtype = resolve_dtype(args.dtype, device)
        model, source = load_captioner(args.model, dtype)
        pipe = pipeline(
            "audio-to-text",
            model=model,
            processor=None if isinstance(model, str) else source,
            device=device,
            dtype=dtype,
            trust_remote_code=args.trust_remote_code,
        )
    except (KeyboardInterrupt, ImportError):
        raise
    except Exception as error:  # a truncated safetensors file, a missing config, ...: one line naming the model
        raise ValueError(f"cannot load the model {args.model}: {type(error).__name__}: {error}") from error
    run_options = {
        "batch_size": args.batch_size,
        "progress": not args.no_progress,
        "tagger": tagger,
        **_generation_options(args),
    }
    try:
        if inputs["inputs"] is not None:
            summary = caption_to_jsonl(pipe, inputs["inputs"], args.output, **run_options)
        else:
            summary = caption_dataset(
                pipe,
                inputs["dataset"],
                args.output,
                audio_column=inputs["audio_column"],
                id_column=inputs["id_column"],
                **run_options,
            )
    except CaptionInterrupted as interrupt:
        rank = f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"blap caption: {rank}{interrupt}", file=sys.stderr)
        return interrupt.exit_status
    for path, error in summary.errors.items():
        print(f"blap caption: failed: {path}: {error}", file=sys.stderr)
    return 1 if summary.failed else 0


# ------------------------------------------------------------------------------------------------------ caption-ray


def run_caption_ray(args: argparse.Namespace) -> int:
    job_inputs = ray_job_inputs(args)
    if job_inputs is None:
        return 2
    from .conversion.release import model_or_converted_release
    from .ray_jobs import caption_with_ray

    errors = caption_with_ray(
        model=model_or_converted_release(args.model),
        output=args.output,
        **job_inputs,
        **ray_pool_options(args),
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        batch_size=args.batch_size,
        **_generation_options(args),
    )
    for path, error in errors.items():
        print(f"blap caption-ray: failed: {path}: {error}", file=sys.stderr)
    return 1 if errors else 0


# ------------------------------------------------------------------------------------------------------ evaluate


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.arguments import load_benchmark
    from .evaluation.loop import run_evaluation
    from .evaluation.resources import MissingMetricResourceError
    from .modeling_blap import BlapForConditionalGeneration
    from .processing_blap import BlapProcessor

    benchmark = load_benchmark(args)
    device = args.device or _default_device()
    dtype = resolve_dtype(args.dtype, device)
    model, source = load_captioner(args.model, dtype)
    if isinstance(model, str):
        model = BlapForConditionalGeneration.from_pretrained(model, dtype=dtype)
    model.to(device).eval()
    processor = BlapProcessor.from_pretrained(source)
    if args.prompt is not None:
        processor.prompt = args.prompt
    generate_kwargs = {
        name: value
        for name, value in (
            ("num_beams", args.num_beams),
            ("max_new_tokens", args.max_new_tokens),
            ("min_length", args.min_length),
        )
        if value is not None
    }
    scorer_kwargs = {"device": device}
    if args.metrics_cache is not None:
        scorer_kwargs["cache_dir"] = args.metrics_cache
    try:
        report = run_evaluation(
            model,
            processor,
            benchmark,
            args.output,
            predictions_path=args.predictions,
            batch_size=args.batch_size,
            generate_kwargs=generate_kwargs,
            metrics=args.metrics,
            scorer_kwargs=scorer_kwargs,
            model_name=args.model,
        )
    except MissingMetricResourceError as error:
        print(f"blap evaluate: {error}", file=sys.stderr)
        return 2
    return 1 if report["clips_failed"] else 0


# --------------------------------------------------------------------------------------------------------- push


# The `blap push` options that go into the model card.
CARD_OPTIONS = (
    "model_name",
    "license",
    "base_model",
    "dataset",
    "tag",
    "eval_report",
    "eval_results",
    "paper_results",
)


def _push_eval_results(args: argparse.Namespace) -> list[dict]:
    from .hub import PAPER_RESULTS, eval_results_from_report

    eval_results = list(PAPER_RESULTS) if args.paper_results else []
    for report_file in args.eval_report:
        with open(report_file, encoding="utf-8") as handle:
            eval_results += eval_results_from_report(json.load(handle))
    if args.eval_results:
        with open(args.eval_results, encoding="utf-8") as handle:
            loaded = json.load(handle)
        if not isinstance(loaded, list):
            raise ValueError(f"{args.eval_results} must hold a JSON list of results, got {type(loaded).__name__}.")
        eval_results += loaded
    return eval_results


def run_push(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .hub import DEFAULT_LICENSE, merge_card_options, push_folder, render_folder_card

    folder = Path(args.folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"The folder to push, {folder}, does not exist.")
    options = {
        "model_name": args.model_name,
        "license": args.license,
        "base_model": args.base_model,
        "datasets": args.dataset,
        "tags": args.tag,
        "eval_results": _push_eval_results(args),
    }
    readme = folder / "README.md"
    if not readme.is_file():
        model_card = render_folder_card(
            folder, repo_id=args.repo_id, **{**options, "license": args.license or DEFAULT_LICENSE}
        )
    elif any(options.values()):
        model_card = merge_card_options(readme.read_text(encoding="utf-8"), **options)
        given = ", ".join(f"--{name.replace('_', '-')}" for name in CARD_OPTIONS if getattr(args, name))
        print(f"blap push: merged {given} into the card of {readme} (the folder is not changed).", file=sys.stderr)
    else:
        model_card = None
    commit = push_folder(
        folder,
        args.repo_id,
        model_card=model_card,
        commit_message=args.commit_message,
        private=args.private or None,
        token=args.token,
        revision=args.revision,
        create_pr=args.create_pr,
    )
    print(commit.commit_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
