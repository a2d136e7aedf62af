"""
The authors' release loads as it is published (`.ckpt` + original `config.json`): `from_pretrained` of the model and
processor and `pipeline("audio-to-text", ...)` convert it once into the Hugging Face cache, keyed by revision, and load
that. Offline: the fixture as a local folder, and as a Hub repository whose downloads are served from the fixture.
"""

import fnmatch
import json
from pathlib import Path

import huggingface_hub
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from transformers import pipeline

from transformers_blap import BlapForConditionalGeneration, BlapProcessor
from transformers_blap.conversion import release

REPO_ID = "Tino3141/blap"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, offline: nothing can come from the network."""
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture
def conversions(monkeypatch) -> list:
    """Records every conversion the loaders run."""
    calls = []
    convert = release.convert_original_checkpoint

    def recording(checkpoint, config, output_dir, **kwargs):
        calls.append(Path(output_dir))
        return convert(checkpoint, config, output_dir, **kwargs)

    monkeypatch.setattr(release, "convert_original_checkpoint", recording)
    return calls


@pytest.fixture
def fake_hub(hub_cache, fixture_dir, monkeypatch) -> list:
    """
    `Tino3141/blap` at commit `COMMIT` holds the fixture's files. The network boundary (`hf_hub_download`,
    `snapshot_download`) is replaced by copies into the cache, in the Hub cache layout (`snapshots/<commit>`,
    `refs/main`); everything after it is the real code. Returns the list of requested patterns.
    """
    requests = []
    files = sorted(path.relative_to(fixture_dir).as_posix() for path in fixture_dir.rglob("*") if path.is_file())

    def snapshot(repo_id, revision=None, allow_patterns=None, cache_dir=None, **kwargs):
        assert repo_id == REPO_ID and revision in (None, "main", COMMIT), (repo_id, revision)
        requests.append(allow_patterns)
        storage = Path(cache_dir or huggingface_hub.constants.HF_HUB_CACHE) / "models--Tino3141--blap"
        folder = storage / "snapshots" / COMMIT
        for name in files:
            if allow_patterns is None or any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                if not (folder / name).exists():
                    (folder / name).symlink_to(fixture_dir / name)
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / "main").write_text(COMMIT)
        return str(folder)

    def download(repo_id, filename, revision=None, cache_dir=None, **kwargs):
        return str(Path(snapshot(repo_id, revision, [filename], cache_dir)) / filename)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return requests


@pytest.fixture(scope="module")
def reference(fixture_dir):
    info = json.loads((fixture_dir / "reference.json").read_text())
    audio = [sf.read(fixture_dir / path, dtype="float32")[0] for path in info["audio_files"]]
    return {"tensors": load_file(fixture_dir / "reference_outputs.safetensors"), "info": info, "audio": audio}


def assert_reproduces_the_original(model, processor, reference):
    info = reference["info"]
    inputs = processor(audio=reference["audio"], sampling_rate=48_000, captions=info["captions"])
    with torch.no_grad():
        outputs = model(**inputs)
    assert (outputs.logits - reference["tensors"]["logits"]).abs().max().item() < 1e-4
    assert (outputs.audio_embeds - reference["tensors"]["audio_embeds"]).abs().max().item() < 1e-4


def test_a_local_release_folder_converts_once(fixture_dir, hub_cache, conversions, reference):
    model = BlapForConditionalGeneration.from_pretrained(fixture_dir)
    processor = BlapProcessor.from_pretrained(fixture_dir)
    assert len(conversions) == 1
    converted = conversions[0]
    assert converted.parent == hub_cache / "blap-converted" / "local"
    assert (converted / "model.safetensors").is_file() and (converted / "processor_config.json").is_file()
    assert Path(model.config._name_or_path) == converted
    assert_reproduces_the_original(model, processor, reference)
    # The next loads read the cache.
    again = BlapForConditionalGeneration.from_pretrained(fixture_dir)
    assert len(conversions) == 1 and Path(again.config._name_or_path) == converted


def test_a_hub_release_converts_once_per_revision(fake_hub, hub_cache, conversions, reference, fixture_dir):
    model = BlapForConditionalGeneration.from_pretrained(REPO_ID)
    converted = hub_cache / "blap-converted" / "models--Tino3141--blap" / COMMIT
    assert conversions == [converted]
    # Downloaded: the checkpoint, its config and the base-model folders the converter looks up beside the config.
    assert ["*.ckpt", "config.json", "flan-t5-tiny/*", "bert-base-uncased/*"] in fake_hub
    processor = BlapProcessor.from_pretrained(REPO_ID)
    assert_reproduces_the_original(model, processor, reference)

    captioner = pipeline("audio-to-text", model=REPO_ID)
    paths = [str(fixture_dir / path) for path in reference["info"]["audio_files"]]
    results = captioner(paths, batch_size=2, **reference["info"]["generate"])
    assert [result[0]["generated_text"] for result in results] == reference["info"]["generated_text"]
    assert conversions == [converted]  # model, processor and pipeline: one conversion


def test_a_folder_in_neither_format_gets_one_clear_error(tmp_path, hub_cache):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    message = "is neither a transformers BLAP folder .* nor the original BLAP release"
    for loader in (BlapForConditionalGeneration, BlapProcessor):
        with pytest.raises(ValueError, match=message):
            loader.from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match=message):
        BlapForConditionalGeneration.from_pretrained(tmp_path)
