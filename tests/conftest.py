"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    """The original-format checkpoint with reference outputs (../shared/fixtures/original-blap-tiny).

    Missing fixture is a failure, never a skip: the parity tests must run in CI.
    """
    path = Path(os.environ.get("BLAP_FIXTURE_DIR", REPO_ROOT.parent / "shared" / "fixtures" / "original-blap-tiny"))
    if not (path / "reference_outputs.safetensors").is_file():
        pytest.fail(
            f"The parity fixture is missing at {path}; set BLAP_FIXTURE_DIR or place ../shared beside the repo."
        )
    return path


@pytest.fixture(scope="session")
def t5_tokenizer_dir(fixture_dir: Path) -> Path:
    """The fixture's small T5 sentencepiece tokenizer (226 tokens)."""
    return fixture_dir / "flan-t5-tiny"
