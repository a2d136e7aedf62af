"""
The `blap` command.

This package is the command line above `transformers_blap`, outside it so that `blap --help` and every
`blap COMMAND --help` answer without importing torch or transformers (importing anything inside `transformers_blap`
imports the model core first). Each subcommand is one `add_<name>_command(subparsers)` in `blap_cli.commands`, which
declares its arguments and names its handler (`"module:function"`, a function `argparse.Namespace -> int` exit
status in `transformers_blap`), imported when the command runs. A bad argument, input file or model ends the command
with one line, `blap COMMAND: error: CAUSE`, and exit status 2 (a traceback too with `--debug` or `BLAP_DEBUG=1`);
Ctrl-C (SIGINT) and SIGTERM end it with one line and status 130 / 143.
"""

import argparse
import importlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence

from . import commands

# Start-up warnings of third-party packages that say nothing about the user's run: (logger, message prefix).
# - bitsandbytes (imported by peft) tries, on CPUs with AVX-512 BF16, to fetch an optional 4-bit CPU kernel from the
#   Hub's "kernels" package at import time and logs a warning when it is not installed; it then uses its own kernel.
KNOWN_STARTUP_NOISE = (
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
)


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_third_party_startup() -> None:
    """
    Drops the `KNOWN_STARTUP_NOISE` messages (and only those: every other record of the same loggers passes). For
    entry points (`blap`, the training scripts), not for the library: call it before the third-party imports.
    """
    for logger_name, prefix in KNOWN_STARTUP_NOISE:
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _DropMessages) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropMessages(prefix))


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    commands.add_caption_command,
    commands.add_caption_ray_command,
    commands.add_push_command,
    commands.add_convert_original_command,
    commands.add_convert_laion_clap_command,
    commands.add_evaluate_command,
    commands.add_setup_metrics_command,
    commands.add_export_command,
    commands.add_index_command,
    commands.add_index_ray_command,
    commands.add_search_command,
]


DEBUG_ENVIRONMENT_VARIABLE = "BLAP_DEBUG"
"""Set to 1 to get tracebacks with errors, as `--debug` does."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blap", description="BLAP music captioning.")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"print tracebacks with errors (also: {DEBUG_ENVIRONMENT_VARIABLE}=1); by default an error is one line",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `blap` command; returns the exit status."""
    quiet_third_party_startup()
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENVIRONMENT_VARIABLE, "").strip().lower() in {"1", "true", "yes"}
    try:
        module, _, name = args.handler.partition(":")
        return getattr(importlib.import_module(module), name)(args)
    except KeyboardInterrupt:  # before or after the work proper (loading the model, ...): nothing to resume
        if debug:
            traceback.print_exc()
        print(f"blap {args.command}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as error:
        if debug:
            traceback.print_exc()
        message = " ".join(str(error).split()) or type(error).__name__
        expected = isinstance(error, (OSError, ValueError))  # bad input; anything else may be a bug worth a traceback
        hint = "" if debug or expected else f" (--debug or {DEBUG_ENVIRONMENT_VARIABLE}=1 for a traceback)"
        print(f"blap {args.command}: error: {message}{hint}", file=sys.stderr)
        return 2
