"""
The layers: the model core imports none of the tooling above it, `import transformers_blap` loads only the core (the
rest is exported lazily), and `blap --help` / `blap COMMAND --help` load neither torch nor transformers.
"""

import argparse
import ast
import importlib
import json
import subprocess
import sys
import textwrap

from blap_cli import COMMANDS, commands

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "transformers_blap"
CORE_MODULES = (
    "audio",
    "configuration_blap",
    "feature_extraction_blap",
    "modeling_blap",
    "pipeline_audio_to_text",
    "precision",
    "processing_blap",
    "remote_code_blap",
)
TOOLING = ("training", "evaluation", "conversion", "hub", "cli", "library_commands", "captioning")


def run_python(code: str) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def imported_package_modules(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """Every `transformers_blap` module a core module's code imports, at any depth: `(line, module name)`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else [f"transformers_blap.{node.module or ''}"]
            if node.level and not node.module:  # from . import x
                names = [f"transformers_blap.{alias.name}" for alias in node.names]
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args:
            argument = node.args[0]  # importlib.import_module("transformers_blap.x") or an f-string of it
            text = argument.value if isinstance(argument, ast.Constant) else ast.unparse(argument)
            found.append((node.lineno, text.strip("f'\"")))
    return [(line, name) for line, name in found if name.startswith(("transformers_blap", "blap_cli"))]


def test_the_core_imports_nothing_above_it():
    offending = []
    for module in CORE_MODULES:
        tree = ast.parse((PACKAGE / f"{module}.py").read_text())
        for line, name in imported_package_modules(tree, module):
            layer = name.removeprefix("transformers_blap.").split(".")[0]
            if name.startswith("blap_cli") or layer in TOOLING:
                offending.append(f"{module}.py:{line} imports {name}")
    assert not offending, offending


def test_import_loads_the_core_only_and_registers_it():
    report = run_python(
        """
        import json, sys
        import transformers_blap
        from transformers import AutoConfig, AutoModelForSpeechSeq2Seq
        from transformers.pipelines import PIPELINE_REGISTRY

        loaded = sorted(name for name in sys.modules if name.startswith(("transformers_blap", "blap_cli")))
        registered = [
            AutoConfig.for_model("blap").__class__.__name__,
            AutoModelForSpeechSeq2Seq._model_mapping[transformers_blap.BlapConfig].__name__,
            "audio-to-text" in PIPELINE_REGISTRY.get_supported_tasks(),
        ]
        lazy = transformers_blap.original_release_folder.__module__  # a lazy export imports its module on use
        print(json.dumps({"loaded": loaded, "registered": registered, "lazy": lazy,
                          "after": "transformers_blap.conversion.release" in sys.modules}))
        """
    )
    assert report["loaded"] == ["transformers_blap", *(f"transformers_blap.{name}" for name in CORE_MODULES)]
    assert report["registered"] == ["BlapConfig", "BlapForConditionalGeneration", True]
    assert report["lazy"] == "transformers_blap.conversion.release" and report["after"]


def test_every_lazy_export_resolves():
    import transformers_blap

    for name in transformers_blap._LAZY_EXPORTS:
        assert getattr(transformers_blap, name).__name__ == name
        assert name in dir(transformers_blap) and name in transformers_blap.__all__


def test_help_of_blap_and_every_subcommand_loads_neither_torch_nor_transformers():
    report = run_python(
        """
        import argparse, contextlib, io, json, sys
        from blap_cli import COMMANDS, main

        subparsers = argparse.ArgumentParser().add_subparsers()
        for add_command in COMMANDS:
            add_command(subparsers)
        results = {}
        for argv in [["--help"], *([name, "--help"] for name in subparsers.choices)]:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                try:
                    main(argv)
                except SystemExit as exit:
                    status = exit.code
            results[" ".join(argv)] = [status, out.getvalue().splitlines()[0]]
        heavy = sorted(name for name in ("torch", "transformers", "numpy", "transformers_blap") if name in sys.modules)
        print(json.dumps({"results": results, "heavy": heavy}))
        """
    )
    assert report["heavy"] == []
    results = report["results"]
    assert len(results) == 12  # blap and its eleven subcommands
    for argv, (status, first_line) in results.items():
        command = argv.removesuffix("--help").strip()
        assert status == 0 and first_line.startswith(f"usage: blap {command}".rstrip()), (argv, first_line)


def test_cli_choices_and_handlers_match_the_library():
    from transformers_blap.conversion import original
    from transformers_blap.evaluation.arguments import DEFAULT_CSV_NAMES
    from transformers_blap.precision import DTYPE_CHOICES

    assert commands.DTYPE_CHOICES == DTYPE_CHOICES
    assert commands.BENCHMARKS == tuple(DEFAULT_CSV_NAMES)
    assert commands.ORIGINAL_HUB_REPO == original.DEFAULT_HUB_REPO
    assert commands.ORIGINAL_QFORMER_MODEL == original.DEFAULT_QFORMER_MODEL
    assert commands.CONVERSION_DTYPES == tuple(sorted(original.DTYPES))
    # Every handler a parser names imports and is a function.
    subparsers = argparse.ArgumentParser().add_subparsers()
    for add_command in COMMANDS:
        add_command(subparsers)
    for name, parser in subparsers.choices.items():
        module, _, function = parser.get_default("handler").partition(":")
        assert callable(getattr(importlib.import_module(module), function)), name
