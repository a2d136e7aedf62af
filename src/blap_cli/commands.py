"""
The parsers of the `blap` subcommands: one `add_<name>_command(subparsers)` each, registered in `blap_cli.COMMANDS`.

This module imports only the standard library, so that `blap --help` and every `blap COMMAND --help` answer without
loading torch or transformers. Each parser names its handler as `"module:function"` (a function
`argparse.Namespace -> int` exit status in `transformers_blap`), which `blap_cli.main` imports when the command runs;
an option whose check needs the library names its converter the same way ([`lazy_type`]).
"""

import argparse
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The `--dtype` choices: "auto" picks by hardware, "checkpoint" keeps the saved dtype; `transformers_blap.precision`
# resolves them (its DTYPE_CHOICES, the same list: a test holds them equal).
DTYPE_CHOICES = ("auto", "checkpoint", "float32", "float16", "bfloat16")
# The benchmarks of `blap evaluate` (the keys of `transformers_blap.evaluation.arguments.DEFAULT_CSV_NAMES`).
BENCHMARKS = ("musiccaps", "song_describer", "yt8m_musictextclips")
# `blap convert-original` (`transformers_blap.conversion.original`'s DEFAULT_HUB_REPO, DEFAULT_QFORMER_MODEL, DTYPES).
ORIGINAL_HUB_REPO = "Tino3141/blap"
ORIGINAL_QFORMER_MODEL = "bert-base-uncased"
CONVERSION_DTYPES = ("bfloat16", "float16", "float32")
METRICS_CACHE_DEFAULT = "$BLAP_METRICS_CACHE, else ~/.cache/transformers_blap/metrics"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def lazy_type(reference: str) -> Callable[[str], Any]:
    """
    An argparse `type` that imports its converter, `"module:function"`, when a value is parsed (never for `--help`).
    """

    def convert(text: str) -> Any:
        module, _, name = reference.partition(":")
        return getattr(importlib.import_module(module), name)(text)

    convert.__name__ = reference.rpartition(":")[2]  # argparse names it in "invalid <name> value"
    return convert


def add_model_arguments(
    parser: argparse.ArgumentParser,
    *,
    model_help: str = "a saved BLAP folder or Hub repository id",
    device_help: str | None = "cpu, cuda, cuda:1, ... (default: a GPU if there is one, else CPU)",
    dtype_default: str | None = "checkpoint",
    trust_remote_code: bool = False,
) -> None:
    """
    The model options of the commands that load one: `--model`, `--device` (unless `device_help` is `None`),
    `--dtype` (unless `dtype_default` is `None`) and `--trust-remote-code`.
    """
    parser.add_argument("--model", required=True, help=model_help)
    if device_help is not None:
        parser.add_argument("--device", help=device_help)
    if dtype_default is not None:
        parser.add_argument(
            "--dtype",
            choices=DTYPE_CHOICES,
            default=dtype_default,
            help="model weights' dtype: auto = bfloat16 where the device computes it natively (AVX-512 BF16 / AMX"
            " CPUs, Ampere+ GPUs), else float32; checkpoint = as saved (default: %(default)s)",
        )
    if trust_remote_code:
        parser.add_argument("--trust-remote-code", action="store_true", help="allow the model repository's own code")


def add_generation_arguments(parser: argparse.ArgumentParser, batch_help: str, windows: bool = True) -> None:
    """The batching and generation options (and, with `windows`, the window options) of the captioning commands."""
    parser.add_argument("--batch-size", type=positive_int, default=8, help=f"{batch_help} (default 8)")
    parser.add_argument("--num-beams", type=positive_int, help="beam search width (default: the model's)")
    parser.add_argument("--max-new-tokens", type=positive_int, help="longest caption (default: the model's)")
    parser.add_argument("--min-length", type=int, help="shortest caption in tokens (default: the model's)")
    parser.add_argument("--prompt", help="instruction for the language model (default: the processor's)")
    if windows:
        parser.add_argument("--window-s", type=float, help="window length in seconds (default: the model's, 10 s)")
        parser.add_argument(
            "--hop-s", type=float, help="distance between window starts in seconds (default: --window-s)"
        )
        parser.add_argument("--min-tail-s", type=float, help="shortest tail with its own window (default: 30%% of it)")


# ------------------------------------------------------------------------------------------------------ caption


def add_dataset_arguments(parser: argparse.ArgumentParser, description: str, streaming: bool = False) -> None:
    """`--dataset`, `--config`, `--split`, `--audio-column`, `--id-column` (and `--streaming`) in one group."""
    source = parser.add_argument_group("dataset input", description)
    source.add_argument(
        "--dataset",
        help="a Hub dataset id, a folder (save_to_disk, Parquet shards, audiofolder) or a .parquet/.arrow/.csv/.json"
        " file",
    )
    source.add_argument("--config", help="the dataset's configuration (subset)")
    source.add_argument("--split", default="train", help="the split to read (default train)")
    source.add_argument("--audio-column", default="audio", help="the column holding the audio (default audio)")
    source.add_argument(
        "--id-column", help="a column of unique row ids, each record's identity (default: the row's index)"
    )
    if streaming:
        source.add_argument("--streaming", action="store_true", help="read rows as they are needed (large datasets)")


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """The actor-pool options of `blap caption-ray` and `blap index-ray`."""
    parser.add_argument("--num-actors", type=positive_int, default=1, help="actors (models) in the pool (default 1)")
    parser.add_argument(
        "--files-per-task",
        type=positive_int,
        default=8,
        help="files or dataset rows per Ray task, the unit of retry (default 8)",
    )
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs reserved per actor (default 1)")
    parser.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per actor; > 0 runs on CUDA")


def add_caption_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "caption",
        help="caption audio files into a JSON Lines file (resumable; shards under torchrun / accelerate launch)",
        description=(
            "Caption audio files, folders (recursively, audio extensions only) or lists of paths (.txt, one per line),"
            " or the audio column of a dataset (--dataset), into JSON Lines: one line per input with path (and id for"
            " a dataset row), caption, per-window captions, duration, tags (with --tags) and error. A rerun skips"
            " inputs that already have a caption. Under torchrun or accelerate launch every process captions its"
            " share of the files and rank 0 merges the parts. The exit status is 1 if any input failed."
        ),
    )
    parser.add_argument("inputs", nargs="*", help="audio files, folders, or .txt files listing paths")
    parser.add_argument("--output", required=True, help="the JSON Lines file to write (appended to when resuming)")
    add_model_arguments(
        parser,
        device_help="cpu, cuda, cuda:1, ... (default: this process's GPU (LOCAL_RANK) if there is one, else CPU)",
        trust_remote_code=True,
    )
    add_generation_arguments(parser, "windows per generate call")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_dataset_arguments(
        parser, "Caption a split of a `datasets` dataset instead of files (one process; resumable by row id).", True
    )
    tags = parser.add_argument_group(
        "zero-shot tags",
        "Score every track against a list of labels with a stage-1 model: its audio-text similarity, averaged over"
        " the track's windows, in the record's `tags`.",
    )
    tags.add_argument("--tags", help="a text file of labels, one per line")
    tags.add_argument("--tag-model", help="a saved stage-1 BLAP (BlapForRepresentationLearning) folder or Hub id")
    choice = tags.add_mutually_exclusive_group()
    choice.add_argument("--tag-top-k", type=positive_int, help="keep the K best labels per track (default 5)")
    choice.add_argument("--tag-threshold", type=float, help="keep every label scoring at least T (a cosine, -1..1)")
    tags.add_argument("--tag-template", help='the text a label is embedded as (default "This is a {} song.")')
    parser.set_defaults(handler="transformers_blap.cli:run_caption")


def add_caption_ray_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "caption-ray",
        help="caption audio files or a dataset on a Ray cluster (Ray Data, one model per actor) into Parquet",
        description=(
            "Caption audio files, folders or lists of paths (as `blap caption`), or a dataset's audio column, on Ray"
            " Data: a pool of actors, one model each, captions batches of inputs; the records (the fields of `blap"
            " caption`'s JSON lines) are written as Parquet files into --output. Joins the cluster named by"
            " RAY_ADDRESS, else starts a local Ray. A killed actor is restarted and its inputs retried. The exit"
            " status is 1 if any input failed."
        ),
    )
    parser.add_argument("inputs", nargs="*", help="audio files, folders, or .txt files listing paths")
    add_model_arguments(
        parser,
        model_help="a saved BLAP folder (readable on every node) or Hub id",
        device_help=None,
        trust_remote_code=True,
    )
    parser.add_argument("--output", required=True, help="a new or empty folder for the Parquet files")
    add_ray_arguments(parser)
    add_generation_arguments(parser, "windows per generate call")
    add_dataset_arguments(parser, "Caption a split of a `datasets` dataset instead of files (ids as blap caption).")
    parser.set_defaults(handler="transformers_blap.cli:run_caption_ray")


def add_push_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "push",
        help="publish a saved BLAP folder (model + processor) to the Hugging Face Hub with remote code and a card",
        description=(
            "Upload a folder holding a saved BlapForConditionalGeneration and BlapProcessor as one commit, adding the"
            " code and config entries that let it load with trust_remote_code=True, and a model card (the folder's"
            " README.md, else one rendered from the template with the options below). The folder is not modified."
        ),
    )
    parser.add_argument("folder", help="the saved model + processor folder")
    parser.add_argument("repo_id", help="the Hub repository, e.g. your-name/blap (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", help="branch to push to (created if missing)")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--commit-message", default="Upload BLAP model")
    parser.add_argument("--token", help="Hub token (default: the one saved by `hf auth login`)")
    card = parser.add_argument_group(
        "model card",
        "Without README.md in the folder, a card is rendered from the folder's configs with these options; with one,"
        " the options given are merged into it (metadata, model-index and its evaluation table).",
    )
    card.add_argument("--model-name", help="title and model-index name (default: the repository name)")
    card.add_argument("--license", help="license of the weights (Hub license id; default for a new card: apache-2.0)")
    card.add_argument(
        "--base-model", action="append", help="base model id (repeatable; default: the language model's Hub id)"
    )
    card.add_argument("--dataset", action="append", help="training data set id (repeatable)")
    card.add_argument("--tag", action="append", default=[], help="extra tag (repeatable)")
    card.add_argument("--eval-report", action="append", default=[], help="a `blap evaluate` report.json (repeatable)")
    card.add_argument(
        "--eval-results",
        help="JSON file: a list of results, each with dataset_type, dataset_name, metric_type, metric_value (and"
        " optionally metric_name, dataset_split, source_name, source_url)",
    )
    card.add_argument("--paper-results", action="store_true", help="claim the paper's Table 1 (original weights only)")
    parser.set_defaults(handler="transformers_blap.cli:run_push")


def setting(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def add_export_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="turn a `blap caption` JSON Lines file into a Hugging Face dataset (Parquet + card), optionally pushed",
        description=(
            "Write the captioned records of a `blap caption` output as a dataset folder that datasets.load_dataset"
            " loads: Parquet shards with audio (path, or the file's bytes with --embed-audio), path, caption, windows,"
            " duration, tags and warnings, and a dataset card (README.md) with the model, the generation settings,"
            " counts and failures. Failed inputs are left out and counted."
        ),
    )
    parser.add_argument("captions", help="the JSON Lines output of `blap caption`")
    parser.add_argument("--to", required=True, dest="folder", help="the dataset folder to write")
    parser.add_argument("--embed-audio", action="store_true", help="store the audio files themselves, not paths")
    parser.add_argument("--shard-rows", type=positive_int, default=1000, help="rows per Parquet shard (default 1000)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty folder")
    card = parser.add_argument_group("dataset card: how the captions were made")
    card.add_argument("--model", help="the captioning model (folder or Hub id)")
    card.add_argument("--revision", help="its revision (commit or tag)")
    card.add_argument(
        "--generation",
        type=setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a generation setting of the captioning run, e.g. num_beams=10 (repeatable)",
    )
    card.add_argument("--caption-command", help="the `blap caption` command line that wrote the captions")
    hub = parser.add_argument_group("upload")
    hub.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the folder as this Hub dataset repository")
    hub.add_argument("--private", action="store_true", help="create the dataset repository private")
    hub.add_argument("--token", help="Hub token (default: the one saved by `hf auth login`)")
    parser.set_defaults(handler="transformers_blap.library_commands:run_export")


def add_index_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "index",
        help="embed every window of a music library with a stage-1 model into a text-searchable index",
        description=(
            "Embed every window (the model's, 10 s for BLAP) of audio files, folders or lists of paths once with a"
            " stage-1 BLAP model and store the vectors (faiss) with their track and timestamps, for `blap search`."
            " Inputs that cannot be read are listed and left out; the exit status is 1 if any failed."
        ),
    )
    parser.add_argument("inputs", nargs="+", help="audio files, folders, or .txt files listing paths")
    add_model_arguments(parser, model_help="a saved stage-1 BLAP folder or Hub repository id", dtype_default=None)
    parser.add_argument("--output", required=True, help="the index folder to write")
    parser.add_argument("--hop-s", type=float, help="distance between window starts in seconds (default: the window)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="windows per model call (default 16)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(handler="transformers_blap.library_commands:run_index")


def add_index_ray_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "index-ray",
        help="`blap index` on a Ray cluster (Ray Data, one model per actor), from files or a dataset",
        description=(
            "Embed every window of audio files, folders or lists of paths, or of a dataset's audio column, on Ray"
            " Data: a pool of actors, one stage-1 model each, embeds batches of inputs; the embeddings are written as"
            " Parquet files into --output/embeddings/ and assembled into the same search index `blap index` writes"
            " (for `blap search`). Joins the cluster named by RAY_ADDRESS, else starts a local Ray. A killed actor is"
            " restarted and its inputs retried. The exit status is 1 if any input failed."
        ),
    )
    parser.add_argument("inputs", nargs="*", help="audio files, folders, or .txt files listing paths")
    parser.add_argument("--model", required=True, help="a saved stage-1 BLAP folder (readable everywhere) or Hub id")
    parser.add_argument("--output", required=True, help="a new or empty folder for the index")
    parser.add_argument("--hop-s", type=float, help="distance between window starts in seconds (default: the window)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="windows per model call (default 16)")
    add_ray_arguments(parser)
    add_dataset_arguments(parser, "Index a split of a `datasets` dataset instead of files (a row's track is its id).")
    parser.set_defaults(handler="transformers_blap.library_commands:run_index_ray")


def add_search_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search",
        help="find the tracks of a `blap index` that best match a description",
        description=(
            "Print the k tracks of an index that best match a text, best first: score (cosine similarity), the"
            " best-matching window's start and end in seconds, and the path. --json prints one JSON object per line."
        ),
    )
    parser.add_argument("index", help="a folder written by `blap index`")
    parser.add_argument("query", help='what to look for, e.g. "calm solo piano"')
    parser.add_argument("-k", type=positive_int, default=10, help="how many tracks (default 10)")
    parser.add_argument("--model", help="the stage-1 model for the text (default: the one that built the index)")
    parser.add_argument("--json", action="store_true", help="JSON Lines output")
    parser.set_defaults(handler="transformers_blap.library_commands:run_search")


def add_evaluate_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="caption a benchmark (MusicCaps, Song Describer, YouTube8M-MusicTextClips) and score it as the paper",
        description=(
            "Caption every clip of a benchmark whose audio is in --audio-dir with the paper's settings (the model's"
            " generation config and the processor's prompt unless overridden), keep the captions in a resumable JSON"
            " Lines file, score them with the paper's metrics, write a JSON report and print the scores beside the"
            " published rows of the paper's Table 1. Clips without audio are counted and reported. SPICE, SPIDEr and"
            " FENSE need a one-time `blap setup-metrics` on a machine with network; `--metrics ngram` needs only Java."
        ),
    )
    add_model_arguments(parser, dtype_default="float32")
    parser.add_argument("--dataset", required=True, choices=BENCHMARKS, help="which benchmark")
    parser.add_argument("--audio-dir", required=True, type=Path, help="folder with the benchmark's audio (recursive)")
    parser.add_argument(
        "--csv",
        action="append",
        type=Path,
        help="the benchmark's public CSV (repeatable: YouTube8M-MusicTextClips takes train.csv and test.csv); default:"
        " musiccaps-public.csv / song_describer.csv / train.csv + test.csv in --audio-dir or its parent",
    )
    parser.add_argument("--output", required=True, type=Path, help="the JSON report to write, e.g. report.json")
    parser.add_argument(
        "--predictions", type=Path, help="the JSON Lines predictions, resumed if present (default: beside --output)"
    )
    parser.add_argument(
        "--split",
        default="eval",
        choices=("eval", "train", "all"),
        help="MusicCaps split (default: eval)",
    )
    parser.add_argument(
        "--valid-subset-only", action="store_true", help="Song Describer: only is_valid_subset captions"
    )
    parser.add_argument(
        "--metrics",
        type=lazy_type("transformers_blap.evaluation.arguments:metric_names"),
        default="all",
        help="all (default), paper (Table 1's five), ngram (BLEU, METEOR, ROUGE-L, CIDEr-D: no downloads), or a"
        " comma-separated list of metric names",
    )
    parser.add_argument(
        "--metrics-cache", type=Path, help=f"the setup-metrics cache (default: {METRICS_CACHE_DEFAULT})"
    )
    add_generation_arguments(parser, "clips per generate call", windows=False)
    parser.set_defaults(handler="transformers_blap.cli:run_evaluate")


def add_setup_metrics_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "setup-metrics",
        help="fetch what SPICE, Sentence-BERT similarity and FENSE need (run once, needs network)",
        description=SETUP_METRICS_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cache-dir", type=Path, help=f"metrics cache (default: {METRICS_CACHE_DEFAULT})")
    parser.add_argument("--skip-spice", action="store_true", help="do not fetch Stanford CoreNLP for SPICE")
    parser.add_argument("--skip-fense", action="store_true", help="do not fetch the Sentence-BERT and FENSE models")
    parser.set_defaults(handler="transformers_blap.evaluation.setup_metrics:run")


SETUP_METRICS_DESCRIPTION = """\
Fetches, once and on a machine with network, what SPICE, Sentence-BERT similarity and FENSE need:

    blap setup-metrics [--cache-dir DIR] [--skip-spice] [--skip-fense]

- SPICE: Stanford CoreNLP 3.6.0 (about 360 MB download), through pycocoevalcap's own `get_stanford_models`, into
  pycocoevalcap's `spice/lib/` (the installed package folder must be writable);
- Sentence-BERT similarity and FENSE: `sentence-transformers/paraphrase-TinyBERT-L6-v2` from the Hugging Face Hub;
- FENSE: the fluency-error detector `echecker_clotho_audiocaps_base.ckpt` from the FENSE release (SHA-256 checked)
  and the configuration and tokenizer of `bert-base-uncased` (no weights: they come from the checkpoint).

The last two go to the metrics cache (`--cache-dir`, else `$BLAP_METRICS_CACHE`, else
`~/.cache/transformers_blap/metrics`); copy that folder to an offline machine and point `BLAP_METRICS_CACHE` at it.
Files already present are not fetched again. A failed download ends with one line naming what could not be fetched
from where, and why.
"""


# --------------------------------------------------------------------------------------------------- conversion


def add_convert_original_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert-original",
        help="convert the original BLAP release (.ckpt + config.json) into a transformers folder",
        description=(
            "Convert the authors' PyTorch Lightning checkpoint and config.json (local files, or --from-hub) into a"
            " complete transformers folder: config, generation config, safetensors weights, processor files and a"
            " model card. Every dimension is derived from the weights and cross-checked; nothing is unpickled but"
            " tensors; the output folder is written atomically."
        ),
    )
    parser.add_argument("--checkpoint", help="the original Lightning .ckpt")
    parser.add_argument("--config", help="the original config.json")
    parser.add_argument("--output-dir", required=True, help="folder to create (written atomically)")
    parser.add_argument(
        "--from-hub",
        nargs="?",
        const=ORIGINAL_HUB_REPO,
        metavar="REPO_ID",
        help=f"download the .ckpt and config.json from the Hub instead (default repo: {ORIGINAL_HUB_REPO})",
    )
    parser.add_argument(
        "--text-model", help="T5 config + tokenizer: folder or Hub id (default: the config's LLM.t5_model)"
    )
    parser.add_argument(
        "--qformer-model",
        help=f"the Q-Former's base BERT config: folder or Hub id (default: {ORIGINAL_QFORMER_MODEL})",
    )
    parser.add_argument(
        "--dtype", choices=CONVERSION_DTYPES, default="float32", help="weights dtype (default float32)"
    )
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the finished folder to this Hub repo")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    parser.set_defaults(handler="transformers_blap.conversion.original:run")


def add_convert_laion_clap_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert-laion-clap",
        help="convert a raw LAION CLAP .pt checkpoint's audio tower into a ClapAudioModel folder",
        description=(
            "A raw LAION CLAP checkpoint (`.pt`, as `laion_clap`'s `load_ckpt` reads, e.g."
            " `music_audioset_epoch_15_esc_90.14.pt`, the music-tuned HTS-AT-base) -> a `transformers.ClapAudioModel`"
            " folder, the audio encoder that `transformers_blap.conversion.stage1_from_pretrained_parts` takes."
        ),
    )
    parser.add_argument("checkpoint", help="the LAION CLAP .pt checkpoint")
    parser.add_argument("output_dir", help="where to save the ClapAudioModel (config.json + model.safetensors)")
    parser.add_argument("--variant", choices=["tiny", "base", "large"], help="the HTS-AT variant to check against")
    parser.add_argument("--allow-pickle", action="store_true", help="load a trusted file without weights_only")
    parser.set_defaults(handler="transformers_blap.conversion.laion_clap:run")
