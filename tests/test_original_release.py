"""
The authors' release as it is published (`.ckpt` + original `config.json`): `original_release_folder` converts it once
into the Hugging Face cache, keyed by revision, for `from_pretrained` and `pipeline("audio-to-text", ...)`; the core's
loaders refuse it with one line naming that call; `blap caption --model` goes through it. Offline: the fixture as a
local folder, and as a Hub repository whose downloads are served from the fixture.
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

from transformers_blap import BlapConfig, BlapForConditionalGeneration, BlapProcessor, OriginalReleaseError
from transformers_blap.cli import main
from transformers_blap.conversion import ConversionError, original_release_folder, release

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
    converted = original_release_folder(fixture_dir)
    assert conversions == [converted] and converted.parent == hub_cache / "blap-converted" / "local"
    assert (converted / "model.safetensors").is_file() and (converted / "processor_config.json").is_file()
    model = BlapForConditionalGeneration.from_pretrained(converted)
    processor = BlapProcessor.from_pretrained(converted)
    assert_reproduces_the_original(model, processor, reference)
    # The next call reads the cache.
    assert original_release_folder(fixture_dir) == converted and len(conversions) == 1


def test_the_core_refuses_the_release_in_one_line_naming_the_conversion(fixture_dir, hub_cache, conversions):
    for load in (
        BlapForConditionalGeneration.from_pretrained,
        BlapProcessor.from_pretrained,
        BlapConfig.from_pretrained,
    ):
        with pytest.raises(OriginalReleaseError) as raised:
            load(fixture_dir)
        message = str(raised.value)
        assert "\n" not in message and "is the original BLAP release" in message
        assert f"transformers_blap.conversion.original_release_folder({str(fixture_dir)!r})" in message
    with pytest.raises(ValueError, match="Unrecognized model"):  # transformers' own AutoConfig: no replacement
        pipeline("audio-to-text", model=str(fixture_dir))
    assert conversions == []


def test_a_hub_release_converts_once_per_revision(fake_hub, hub_cache, conversions, reference, fixture_dir, tmp_path):
    converted = original_release_folder(REPO_ID)
    assert converted == hub_cache / "blap-converted" / "models--Tino3141--blap" / COMMIT
    assert conversions == [converted]
    # Downloaded: the checkpoint, its config and the base-model folders the converter looks up beside the config.
    assert ["*.ckpt", "config.json", "flan-t5-tiny/*", "bert-base-uncased/*"] in fake_hub
    model = BlapForConditionalGeneration.from_pretrained(converted)
    assert_reproduces_the_original(model, BlapProcessor.from_pretrained(converted), reference)

    captioner = pipeline("audio-to-text", model=original_release_folder(REPO_ID))
    paths = [str(fixture_dir / path) for path in reference["info"]["audio_files"]]
    results = captioner(paths, batch_size=2, **reference["info"]["generate"])
    assert [result[0]["generated_text"] for result in results] == reference["info"]["generated_text"]
    assert conversions == [converted]  # one conversion per revision

    # `blap caption --model REPO` loads the converted folder.
    generate = reference["info"]["generate"]
    assert generate["length_penalty"] == 1.0  # transformers' default: the command has no option for it
    options = ["--num-beams", str(generate["num_beams"]), "--max-new-tokens", str(generate["max_new_tokens"])]
    options += ["--min-length", str(generate["min_length"]), "--no-progress", "--batch-size", "2"]
    output = tmp_path / "captions.jsonl"
    assert main(["caption", *paths, "--model", REPO_ID, "--output", str(output), *options]) == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [record["caption"] for record in records] == reference["info"]["generated_text"]
    assert conversions == [converted]


def test_original_release_folder_refuses_other_folders(tmp_path, hub_cache):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "blap"}))
    with pytest.raises(ConversionError, match="holds no original BLAP config.json"):
        original_release_folder(tmp_path)


def test_a_folder_in_neither_format_gets_one_clear_error(tmp_path, hub_cache):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ValueError, match="is neither a transformers BLAP folder .* nor the original BLAP release"):
        BlapForConditionalGeneration.from_pretrained(tmp_path)
