"""The setup command: verified downloads, and the layout it writes is the layout the metrics read."""

import hashlib
import json
import socket
from pathlib import Path

import huggingface_hub
import pytest

from transformers_blap.cli import main as cli_main
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


@pytest.fixture
def offline(monkeypatch):
    """No network: every host name lookup fails, as on a machine without DNS (the socket boundary replaced)."""

    def getaddrinfo(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def _one_line_error(capsys, argv) -> str:
    assert cli_main(["setup-metrics", *argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("blap setup-metrics: error: could not fetch ")
    assert "Name or service not known" in lines[0] and "run `blap setup-metrics` again" in lines[0]
    return lines[0]


def test_offline_setup_names_what_it_tried_to_fetch_in_one_line(offline, tmp_path, monkeypatch, capsys):
    import pycocoevalcap.spice.get_stanford_models as downloader

    monkeypatch.setattr(resources, "CORENLP_JARS", (tmp_path / "lib" / "corenlp.jar",))
    monkeypatch.setattr(downloader, "SPICEDIR", str(tmp_path))  # pycocoevalcap's own check finds no jar either
    cache = tmp_path / "cache"
    line = _one_line_error(capsys, ["--cache-dir", str(cache), "--skip-fense"])
    assert "Stanford CoreNLP 3.6.0 for SPICE from http://nlp.stanford.edu/software/stanford-corenlp-full" in line

    line = _one_line_error(capsys, ["--cache-dir", str(cache), "--skip-spice"])
    assert f"the Sentence-BERT model from {huggingface_hub.constants.ENDPOINT}/{resources.SBERT_REPO_ID}:" in line

    resources.sbert_dir(cache).mkdir(parents=True)
    (resources.sbert_dir(cache) / "modules.json").write_text("[]")  # Sentence-BERT in place: FENSE is next
    line = _one_line_error(capsys, ["--cache-dir", str(cache), "--skip-spice"])
    assert f"the FENSE fluency-error detector from {resources.FENSE_CHECKPOINT_URL}:" in line
    assert not resources.fense_checkpoint_path(cache).exists()
