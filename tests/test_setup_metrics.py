"""The setup command: verified downloads, and the layout it writes is the layout the metrics read."""

import hashlib
import json
from pathlib import Path

import pytest

from transformers_blap.evaluation import resources, setup_metrics
from transformers_blap.evaluation.resources import missing_fense_files, missing_sbert_files, missing_spice_files


def test_download_file_checks_the_digest(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"detector weights" * 1000)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    target = tmp_path / "cache" / "fense" / "detector.ckpt"
    assert setup_metrics.download_file(source.as_uri(), target, digest) == target
    assert target.read_bytes() == source.read_bytes()

    corrupt = tmp_path / "cache" / "other.ckpt"
    with pytest.raises(ValueError, match=f"has SHA-256 {digest}, expected 00"):
        setup_metrics.download_file(source.as_uri(), corrupt, "00" * 32)
    assert list(corrupt.parent.iterdir()) == [target.parent]


def _fake_hub(calls):
    def snapshot_download(repo_id, local_dir, allow_patterns):
        calls.append(repo_id)
        local_dir = Path(local_dir)
        (local_dir / ".cache" / "huggingface").mkdir(parents=True)
        for name in ("modules.json", "config.json", "vocab.txt"):
            if name in allow_patterns or "*.json" in allow_patterns:
                (local_dir / name).write_text(json.dumps({"repo": repo_id}))
        return str(local_dir)

    return snapshot_download


def test_setup_fills_the_cache_the_metrics_read(tmp_path, monkeypatch):
    checkpoint = tmp_path / "echecker.ckpt"
    checkpoint.write_bytes(b"checkpoint bytes")
    monkeypatch.setattr(setup_metrics, "FENSE_CHECKPOINT_URL", checkpoint.as_uri())
    monkeypatch.setattr(setup_metrics, "FENSE_CHECKPOINT_SHA256", hashlib.sha256(b"checkpoint bytes").hexdigest())
    calls = []
    monkeypatch.setattr(setup_metrics, "snapshot_download", _fake_hub(calls))
    cache = tmp_path / "cache"
    assert missing_sbert_files(cache) and missing_fense_files(cache)

    assert setup_metrics.main(["--cache-dir", str(cache), "--skip-spice"]) == 0
    assert missing_sbert_files(cache) == [] and missing_fense_files(cache) == []
    assert calls == [resources.SBERT_REPO_ID, resources.FENSE_ENCODER_REPO_ID]
    assert not (resources.sbert_dir(cache) / ".cache").exists()

    setup_metrics.main(["--cache-dir", str(cache), "--skip-spice"])
    assert len(calls) == 2, "files already in the cache are not fetched again"


def test_setup_spice_uses_pycocoevalcaps_downloader(tmp_path, monkeypatch):
    jars = (tmp_path / "lib" / "stanford-corenlp-3.6.0.jar", tmp_path / "lib" / "stanford-corenlp-3.6.0-models.jar")
    monkeypatch.setattr(resources, "CORENLP_JARS", jars)

    def get_stanford_models():
        jars[0].parent.mkdir()
        for jar in jars:
            jar.write_bytes(b"jar")

    import pycocoevalcap.spice.get_stanford_models as downloader

    monkeypatch.setattr(downloader, "get_stanford_models", get_stanford_models)
    assert len(missing_spice_files()) == 2
    setup_metrics.main(["--cache-dir", str(tmp_path / "cache"), "--skip-fense"])
    assert missing_spice_files() == []
