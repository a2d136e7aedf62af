"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    """
    The original-format parity fixture (`original-blap-tiny`): `$BLAP_FIXTURE_DIR`, else
    `../shared/fixtures/original-blap-tiny` beside the repository. Missing is a failure, never a skip.
    """
    path = Path(os.environ.get("BLAP_FIXTURE_DIR", REPO_ROOT.parent / "shared" / "fixtures" / "original-blap-tiny"))
    if not (path / "blap_stage2.ckpt").is_file() or not (path / "reference_outputs.safetensors").is_file():
        pytest.fail(f"The parity fixture is missing at {path}: set BLAP_FIXTURE_DIR to the original-blap-tiny folder.")
    return path
