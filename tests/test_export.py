"""`blap export`: a `blap caption` journal as a Hugging Face dataset (Parquet + card), and its upload to the Hub."""

import base64
import io
import json
from pathlib import Path

import datasets
import httpx2
import pytest
import soundfile as sf
from huggingface_hub import DatasetCard
from huggingface_hub.utils import _http

from transformers_blap.cli import main

from blap_testing import tone, write_audio


@pytest.fixture()
def journal(tmp_path) -> Path:
    """A journal as `blap caption` leaves it after a rerun: a failure, its retry, an undecodable file."""
    for name, frequency in (("a.wav", 220.0), ("b.wav", 440.0)):
        write_audio(tmp_path / name, tone(1.5, frequency=frequency))
    records = [
        {
            "path": str(tmp_path / "a.wav"),
            "caption": "a calm piano piece",
            "windows": [{"start": 0.0, "end": 1.5, "caption": "a calm piano piece"}],
            "duration": 1.5,
            "error": None,
            "warnings": [],
        },
        {"path": str(tmp_path / "b.wav"), "caption": None, "windows": [], "duration": None, "error": "OSError: busy"},
        {"path": str(tmp_path / "x.mp3"), "caption": None, "windows": [], "duration": None, "error": "bad: not audio"},
        {
            "path": str(tmp_path / "b.wav"),
            "caption": "quiet hum",
            "windows": [{"start": 0.0, "end": 1.0, "caption": "quiet"}, {"start": 0.5, "end": 1.5, "caption": "hum"}],
            "duration": 1.5,
            "error": None,
            "warnings": ["silent"],
            "tags": [{"label": "drone", "score": 0.75}],
        },
    ]
    path = tmp_path / "captions.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records) + '{"path": "torn', encoding="utf-8")
    return path


def test_export_writes_a_dataset_that_load_dataset_reads(journal, tmp_path, capsys):
    folder = tmp_path / "dataset"
    command = "blap caption music --model demo/blap-synthetic --output captions.jsonl --num-beams 3"
    argv = ["export", str(journal), "--to", str(folder), "--model", "demo/blap-synthetic", "--revision", "v1"]
    argv += ["--generation", "num_beams=3", "--generation", "prompt=Describe it", "--caption-command", command]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "2 tracks in 1 Parquet shard(s)" in printed and "1 failed input(s) left out" in printed

    dataset = datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    assert isinstance(dataset.features["audio"], datasets.Audio)
    assert dataset.column_names == ["audio", "path", "caption", "windows", "duration", "tags", "warnings"]
    rows = list(dataset.cast_column("audio", datasets.Audio(decode=False)))
    assert [row["caption"] for row in rows] == ["a calm piano piece", "quiet hum"]  # the retry's caption, no error
    assert rows[0]["audio"] == {"bytes": None, "path": str(tmp_path / "a.wav")}
    assert rows[1]["windows"] == [
        {"start": 0.0, "end": 1.0, "caption": "quiet"},
        {"start": 0.5, "end": 1.5, "caption": "hum"},
    ]
    assert (rows[0]["tags"], rows[1]["tags"]) == ([], [{"label": "drone", "score": 0.75}])
    assert (rows[0]["warnings"], rows[1]["warnings"], rows[1]["duration"]) == ([], ["silent"], 1.5)

    card = DatasetCard.load(folder / "README.md")
    assert card.data.configs[0]["data_files"][0]["path"] == "data/train-*"
    for fact in ("`demo/blap-synthetic`", "`v1`", '"num_beams": 3', '"prompt": "Describe it"', command):
        assert fact in card.text
    assert "Rows (captioned tracks): 2" in card.text and "Failed inputs, left out: 1" in card.text
    assert f"`{tmp_path / 'x.mp3'}`: bad: not audio" in card.text

    assert main(["export", str(journal), "--to", str(folder)]) == 2  # an existing dataset is never overwritten
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.jsonl"), "--to", str(tmp_path / "other")]) == 2
    assert "no such captions file" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []  # no staging left


def test_export_embeds_audio_in_several_shards(journal, tmp_path):
    folder = tmp_path / "dataset"
    assert main(["export", str(journal), "--to", str(folder), "--embed-audio", "--shard-rows", "1"]) == 0
    assert sorted(path.name for path in (folder / "data").iterdir()) == [
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
    ]
    rows = list(
        datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "cache")).cast_column(
            "audio", datasets.Audio(decode=False)
        )
    )
    for row, name in zip(rows, ("a.wav", "b.wav")):
        assert row["audio"]["path"] == name and row["audio"]["bytes"] == (tmp_path / name).read_bytes()
        samples, rate = sf.read(io.BytesIO(row["audio"]["bytes"]))
        assert rate == 16_000 and len(samples) == 24_000


class FakeHub:
    """The Hub's HTTP API as far as creating a dataset repository and committing files goes."""

    def __init__(self):
        self.created: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.commits: list[str] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if request.method == "POST" and path == "/api/repos/create":
            self.created.append(json.loads(request.content))
            return httpx2.Response(200, json={"url": "https://huggingface.co/datasets/me/captions"})
        if request.method == "POST" and path == "/api/validate-yaml":
            return httpx2.Response(200, json={})
        if request.method == "POST" and path == "/api/datasets/me/captions/preupload/main":
            files = json.loads(request.content)["files"]
            return httpx2.Response(
                200,
                json={"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
            )
        if request.method == "POST" and path == "/api/datasets/me/captions/commit/main":
            for line in request.content.decode().splitlines():
                entry = json.loads(line)
                if entry["key"] == "header":
                    self.commits.append(entry["value"]["summary"])
                elif entry["key"] == "file":
                    self.files[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
            oid = "0" * 40
            return httpx2.Response(
                200, json={"commitUrl": f"https://huggingface.co/datasets/me/captions/commit/{oid}", "commitOid": oid}
            )
        return httpx2.Response(404, json={"error": f"{request.method} {path} is not part of this fake"})


def test_push_to_hub_uploads_the_folder(journal, tmp_path, monkeypatch, capsys):
    hub = FakeHub()
    _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(hub)))
    try:
        folder = tmp_path / "dataset"
        argv = ["export", str(journal), "--to", str(folder), "--push-to-hub", "me/captions", "--private"]
        assert main([*argv, "--token", "hf_test"]) == 0
    finally:
        _http.set_client_factory(_http.default_client_factory)
    assert capsys.readouterr().out.splitlines()[-1] == "https://huggingface.co/datasets/me/captions/commit/" + "0" * 40
    assert hub.created == [{"name": "captions", "organization": "me", "visibility": "private", "type": "dataset"}]
    local = {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    assert hub.files == local and len(hub.commits) == 1
