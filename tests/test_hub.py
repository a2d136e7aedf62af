import ast
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx2
import huggingface_hub
import numpy as np
import pytest
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl
from huggingface_hub.errors import EntryNotFoundError
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor, pipeline
from transformers.dynamic_module_utils import get_imports, get_relative_import_files

from transformers_blap import BlapForConditionalGeneration, BlapProcessor
from transformers_blap.cli import main
from transformers_blap.hub import (
    CITATION,
    HUB_PIPELINE_TASK,
    PAPER_RESULTS,
    add_remote_code,
    push_folder,
    remote_code_files,
    remote_code_requirements,
    render_folder_card,
    render_model_card,
)

from blap_testing import RATE, save_tiny_blap, tiny_blap, tone
from tiny import tiny_config, tiny_processor

CODE_FILES = {
    "audio.py",
    "configuration_blap.py",
    "feature_extraction_blap.py",
    "modeling_blap.py",
    "pipeline_audio_to_text.py",
    "processing_blap.py",
    "remote_code_blap.py",
}
REPO_FILES = CODE_FILES | {
    "README.md",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, t5_tokenizer_dir):
    return save_tiny_blap(tmp_path_factory.mktemp("tiny-blap"), t5_tokenizer_dir)


# ------------------------------------------------------------------------------------------------------ the card


def test_model_card_validates_and_carries_metadata():
    results = PAPER_RESULTS + [
        {"dataset_type": "google/MusicCaps", "dataset_name": "MusicCaps", "metric_type": "cider", "metric_value": 9.1}
    ]
    card = render_model_card(
        tiny_config(),
        repo_id="someone/blap-musiccaps",
        datasets=["google/MusicCaps"],
        tags=["my-tag"],
        eval_results=results,
    )
    parsed = ModelCard(str(card))  # the Hub library's own parser: raises on malformed metadata or model-index
    data = parsed.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "audio-text-to-text"
    assert data.license == "apache-2.0"
    assert data.base_model is None  # the tiny config records no language-model source: no base model is claimed
    assert data.datasets == ["google/MusicCaps"]
    assert {"music-captioning", "custom_code", "my-tag"} <= set(data.tags)
    assert data.model_name == "blap-musiccaps"
    assert len(data.eval_results) == len(results)
    musiccaps_fense = [r for r in data.eval_results if r.dataset_name == "MusicCaps" and r.metric_type == "fense"]
    assert [r.metric_value for r in musiccaps_fense] == [56.6]
    # Why the tag is not "audio-to-text"; both usage routes; the citation.
    text = parsed.text
    assert 'The Hub has no "audio-to-text" task, so this card is tagged "audio-text-to-text"' in text
    assert 'pipeline("audio-to-text", model="someone/blap-musiccaps")' in text
    assert 'pipeline(model="someone/blap-musiccaps", trust_remote_code=True)' in text
    assert CITATION in text
    assert "| data set | BLEU@1 | BLEU@4 | FENSE | SPIDEr | SPICE | cider |" in text
    assert "| MusicCaps | 26.2 | 3.3 | 56.6 | 8.8 | 11.2 | 9.1 |" in text
    assert "Source: [BLAP paper, Table 1](https://openreview.net/forum?id=23LTPLTB88)." in text


def test_model_card_without_results_has_no_model_index():
    card = render_model_card(
        tiny_config(), license="mit", base_model=["google/flan-t5-xl", "laion/clap-htsat-unfused"]
    )
    assert "model-index" not in str(card)
    assert ModelCard(str(card)).data.base_model == ["google/flan-t5-xl", "laion/clap-htsat-unfused"]
    assert "No evaluation results are recorded" in str(card)
    # By default the base model is the language model the configuration was built from, when that is a Hub id.
    config = tiny_config()
    config.text_config._name_or_path = "google/flan-t5-base"
    assert ModelCard(str(render_model_card(config))).data.base_model == "google/flan-t5-base"
    assert "T5 from `google/flan-t5-base`, d_model 16" in str(render_model_card(config))


def test_model_card_rejects_bad_results():
    with pytest.raises(ValueError, match="Bad eval result"):
        render_model_card(tiny_config(), eval_results=[{"dataset_name": "MusicCaps", "metric_value": 1.0}])


# ------------------------------------------------------------------------------------------- the saved folder


def test_saved_folder_carries_its_code(model_dir):
    files = {path.name for path in model_dir.iterdir()}
    assert REPO_FILES - {"README.md"} <= files
    config = json.loads((model_dir / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_blap.BlapConfig",
        "AutoModelForSpeechSeq2Seq": "modeling_blap.BlapForConditionalGeneration",
    }
    assert config["custom_pipelines"] == {
        HUB_PIPELINE_TASK: {
            "impl": "pipeline_audio_to_text.AudioToTextPipeline",
            "pt": ["AutoModelForSpeechSeq2Seq"],
            "type": "multimodal",
        }
    }
    processor = json.loads((model_dir / "processor_config.json").read_text())
    assert processor["auto_map"]["AutoProcessor"] == "processing_blap.BlapProcessor"
    assert processor["feature_extractor"]["auto_map"]["AutoFeatureExtractor"] == (
        "feature_extraction_blap.BlapFeatureExtractor"
    )
    assert {path.name for path in remote_code_files()} == CODE_FILES
    for name in CODE_FILES:
        code = (model_dir / name).read_text()
        assert not re.search(r"^\s*(from|import)\s+transformers_blap", code, flags=re.MULTILINE), name


def test_package_loads_a_hub_ready_folder_with_its_own_classes(model_dir):
    # With the package imported, the auto_map entries do not switch loading to remote code.
    assert type(AutoModelForSpeechSeq2Seq.from_pretrained(model_dir)) is BlapForConditionalGeneration
    assert type(AutoProcessor.from_pretrained(model_dir)) is BlapProcessor


def test_add_remote_code_completes_a_plain_folder(model_dir, tmp_path):
    for path in model_dir.iterdir():
        if path.suffix != ".py":
            (tmp_path / path.name).write_bytes(path.read_bytes())
    for name in ("config.json", "processor_config.json"):
        data = json.loads((tmp_path / name).read_text())
        data.pop("auto_map")
        data.pop("custom_pipelines", None)
        data.get("feature_extractor", {}).pop("auto_map", None)
        (tmp_path / name).write_text(json.dumps(data))
    add_remote_code(tmp_path)
    for name in CODE_FILES:
        assert (tmp_path / name).read_bytes() == (model_dir / name).read_bytes(), name
    config, saved_config = (json.loads((folder / "config.json").read_text()) for folder in (tmp_path, model_dir))
    assert config == saved_config
    processor = json.loads((tmp_path / "processor_config.json").read_text())
    assert processor["auto_map"] == {"AutoProcessor": "processing_blap.BlapProcessor"}
    assert processor["feature_extractor"]["auto_map"] == {
        "AutoFeatureExtractor": "feature_extraction_blap.BlapFeatureExtractor"
    }

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="not a 'blap' model"):
        add_remote_code(tmp_path)


# --------------------------------------------------------------------------------------------------- upload


class FakeHub:
    """Stands in for the Hub's HTTP API: repository creation, commits and the README download."""

    def __init__(self):
        self.files: dict[str, dict[str, bytes]] = {}
        self.commits: list[tuple[str, list[str]]] = []

    def install(self, monkeypatch, tmp_path: Path) -> None:
        hub = self

        def create_repo(api, repo_id, *, private=None, exist_ok=False, **kwargs):
            hub.files.setdefault(repo_id, {})
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def create_branch(api, repo_id, *, branch, exist_ok=False, **kwargs):
            assert repo_id in hub.files

        def create_commit(api, repo_id, operations, *, commit_message, commit_description=None, **kwargs):
            assert repo_id in hub.files, "the repository is created before the commit"
            paths = []
            for operation in operations:
                with operation.as_file() as handle:
                    hub.files[repo_id][operation.path_in_repo] = handle.read()
                paths.append(operation.path_in_repo)
            hub.commits.append((repo_id, paths))
            return CommitInfo(
                commit_url=f"https://huggingface.co/{repo_id}/commit/{len(hub.commits):040d}",
                commit_message=commit_message,
                commit_description=commit_description or "",
                oid=f"{len(hub.commits):040d}",
            )

        def hf_hub_download(repo_id, filename, **kwargs):
            if filename not in hub.files.get(repo_id, {}):
                raise EntryNotFoundError(f"{filename} is not in {repo_id}")
            target = tmp_path / "downloads" / repo_id / filename
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(hub.files[repo_id][filename])
            return str(target)

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_branch", create_branch)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)
        monkeypatch.setattr(huggingface_hub.repocard, "hf_hub_download", hf_hub_download)

    def checkout(self, repo_id: str, folder: Path) -> Path:
        folder.mkdir(parents=True)
        for name, data in self.files[repo_id].items():
            (folder / name).write_bytes(data)
        return folder


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    hub = FakeHub()
    hub.install(monkeypatch, tmp_path)
    return hub


def test_model_and_processor_push_to_hub_publish_a_complete_repo(fake_hub, t5_tokenizer_dir):
    model, processor = tiny_blap(t5_tokenizer_dir)
    model.push_to_hub("someone/blap", tags=["extra-tag"])
    processor.push_to_hub("someone/blap")

    files = fake_hub.files["someone/blap"]
    assert set(files) == REPO_FILES
    assert set(fake_hub.commits[0][1]) == REPO_FILES - {
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    config = json.loads(files["config.json"])
    assert HUB_PIPELINE_TASK in config["custom_pipelines"]
    assert "AutoModelForSpeechSeq2Seq" in config["auto_map"]
    assert json.loads(files["processor_config.json"])["auto_map"] == {"AutoProcessor": "processing_blap.BlapProcessor"}
    # transformers' own card, with BLAP's tags (`blap push` and the trainers write BLAP's full card).
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "transformers"
    assert {"music-captioning", "custom_code", "extra-tag"} <= set(card.data.tags)
    # Saving and pushing leave the live config as it was.
    assert getattr(model.config, "auto_map", None) is None
    assert getattr(model.config, "custom_pipelines", None) is None


def test_blap_push_uploads_everything_in_one_commit(fake_hub, model_dir, tmp_path, capsys):
    report_file = tmp_path / "report.json"  # as `blap evaluate` writes it (the fields the card reads)
    report = {"benchmark": {"benchmark": "song_describer", "split": "test"}, "metrics_x100": {"bleu_4": 0.52}}
    report_file.write_text(json.dumps(report))
    results_file = tmp_path / "results.json"
    results = [{"dataset_type": "google/MusicCaps", "dataset_name": "MusicCaps", "metric_type": "cider"}]
    results[0]["metric_value"] = 9
    results_file.write_text(json.dumps(results))
    before = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in model_dir.iterdir()}
    status = main(
        ["push", str(model_dir), "someone/blap-cli", "--dataset", "google/MusicCaps", "--license", "cc-by-4.0"]
        + ["--eval-report", str(report_file), "--eval-results", str(results_file), "--tag", "converted"]
    )
    assert status == 0
    assert capsys.readouterr().out.strip().startswith("https://huggingface.co/someone/blap-cli/commit/")
    assert len(fake_hub.commits) == 1
    assert sorted(fake_hub.commits[0][1]) == sorted(REPO_FILES)
    files = fake_hub.files["someone/blap-cli"]
    for name in CODE_FILES:
        assert files[name] == (model_dir / name).read_bytes()
    card = ModelCard(files["README.md"].decode())
    assert card.data.license == "cc-by-4.0"
    assert card.data.datasets == ["google/MusicCaps"]
    assert "converted" in card.data.tags
    assert [(r.dataset_type, r.dataset_split, r.metric_name, r.metric_value) for r in card.data.eval_results] == [
        ("renumics/song-describer-dataset", "test", "BLEU@4", 0.52),
        ("google/MusicCaps", None, None, 9),
    ]
    assert {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in model_dir.iterdir()} == before


def test_push_folder_refuses_incomplete_folders(fake_hub, model_dir, tmp_path):
    (tmp_path / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    (tmp_path / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes())
    with pytest.raises(FileNotFoundError, match="no processor_config.json"):
        push_folder(tmp_path, "someone/incomplete")
    assert main(["push", str(tmp_path / "missing"), "someone/incomplete"]) == 2
    assert fake_hub.commits == []


def test_blap_push_merges_card_options_into_the_folders_card(fake_hub, model_dir, tmp_path, capsys):
    folder = tmp_path / "trained"
    folder.mkdir()
    for path in model_dir.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    render_folder_card(folder, "someone/blap-trained", tags=["blap-stage2"]).save(folder / "README.md")
    original = (folder / "README.md").read_text()
    report_file = tmp_path / "report.json"
    report = {
        "benchmark": {"benchmark": "musiccaps", "split": "eval"},
        "metrics_x100": {"bleu_1": 21.5, "meteor": 9.5},
    }
    report_file.write_text(json.dumps(report))

    # Without card options the folder's card goes up as it is.
    assert main(["push", str(folder), "someone/blap-trained"]) == 0
    assert fake_hub.files["someone/blap-trained"]["README.md"].decode() == original

    argv = ["push", str(folder), "someone/blap-trained", "--license", "mit", "--dataset", "google/MusicCaps"]
    assert main([*argv, "--eval-report", str(report_file), "--tag", "musiccaps"]) == 0
    err = capsys.readouterr().err
    assert f"merged --license, --dataset, --tag, --eval-report into the card of {folder / 'README.md'}" in err
    card = ModelCard(fake_hub.files["someone/blap-trained"]["README.md"].decode())
    assert card.data.license == "mit" and card.data.datasets == ["google/MusicCaps"]
    assert {"blap-stage2", "musiccaps"} <= set(card.data.tags)
    assert [
        (r.dataset_type, r.dataset_split, r.metric_type, r.metric_name, r.metric_value) for r in card.data.eval_results
    ] == [
        ("google/MusicCaps", "eval", "bleu", "BLEU@1", 21.5),
        ("google/MusicCaps", "eval", "meteor", "METEOR", 9.5),
    ]
    assert "| data set | BLEU@1 | METEOR |\n|---|---|---|\n| MusicCaps (eval) | 21.5 | 9.5 |" in card.text
    assert "No evaluation results are recorded" not in card.text and card.text.count("## Evaluation") == 1
    assert (folder / "README.md").read_text() == original  # the folder is not modified

    # A hand-written card without the evaluation markers gets an evaluation section appended.
    (folder / "README.md").write_text("---\nlicense: mit\n---\n\n# My BLAP\n\nNotes.\n")
    assert main(["push", str(folder), "someone/blap-trained", "--eval-report", str(report_file)]) == 0
    text = fake_hub.files["someone/blap-trained"]["README.md"].decode()
    assert "# My BLAP\n\nNotes.\n\n## Evaluation\n\n<!-- blap:evaluation -->\n| data set | BLEU@1 | METEOR |" in text


def _refuse_dns(monkeypatch):
    def getaddrinfo(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_push_offline_or_refused_is_one_line(model_dir, monkeypatch, capsys):
    _refuse_dns(monkeypatch)  # the network boundary: no host name resolves
    assert main(["push", str(model_dir), "someone/blap", "--token", "hf_test"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(
        f"blap push: error: could not reach the Hub at {huggingface_hub.constants.ENDPOINT} to upload to someone/blap:"
        " [Errno -2] Name or service not known. Check the network connection"
    )
    monkeypatch.undo()

    def unauthorized(request):
        return httpx2.Response(401, json={"error": "Invalid credentials in Authorization header"}, request=request)

    huggingface_hub.utils.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(unauthorized)))
    try:
        assert main(["push", str(model_dir), "someone/blap", "--token", "hf_wrong"]) == 2
    finally:
        huggingface_hub.utils.set_client_factory(huggingface_hub.utils._http.default_client_factory)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("blap push: error: the Hub refused to upload someone/blap (")
    assert "log in with `hf auth login` or pass a token with write access" in err


# --------------------------------------------------------------------------- loading without the package

FRESH_INTERPRETER = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "transformers_blap":
                raise ModuleNotFoundError(f"{name} is blocked in this test")

    sys.meta_path.insert(0, BlockPackage())
    try:
        import transformers_blap
    except ImportError:
        pass
    else:
        raise SystemExit("transformers_blap is importable")

    import numpy as np
    from transformers import AutoProcessor, pipeline

    audio, reports = np.load(sys.argv[1]), []
    for folder in sys.argv[2:]:
        captioner = pipeline(model=folder, trust_remote_code=True, device="cpu")
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        objects = (captioner, captioner.model, processor, processor.feature_extractor)
        reports.append({
            "task": captioner.task,
            "classes": [type(obj).__module__ for obj in objects],
            "result": captioner(audio, sampling_rate=16000),
            "package_modules": sorted(name for name in sys.modules if name.startswith("transformers_blap")),
        })
    print(json.dumps(reports))
    """
)


def test_loads_with_trust_remote_code_where_the_package_is_not_importable(
    model_dir, fake_hub, t5_tokenizer_dir, tmp_path
):
    # Two folders: one written by save_pretrained, one checked out from what push_to_hub uploaded.
    model, processor = tiny_blap(t5_tokenizer_dir)
    model.push_to_hub("someone/blap-remote")
    processor.push_to_hub("someone/blap-remote")
    folders = [model_dir, fake_hub.checkout("someone/blap-remote", tmp_path / "checkout")]
    audio = tone(2.5, frequency=600.0)
    np.save(tmp_path / "audio.npy", audio)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HF_HUB_CACHE", "HF_HOME")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_MODULES_CACHE=str(tmp_path / "modules"))
    completed = subprocess.run(
        [sys.executable, "-c", FRESH_INTERPRETER, str(tmp_path / "audio.npy"), *map(str, folders)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    reports = json.loads(completed.stdout.strip().splitlines()[-1])
    for folder, report in zip(folders, reports, strict=True):
        assert report["task"] == HUB_PIPELINE_TASK
        assert all(module.startswith("transformers_modules.") for module in report["classes"]), report["classes"]
        assert report["package_modules"] == []
        expected = pipeline("audio-to-text", model=str(folder), device="cpu")(audio, sampling_rate=RATE)
        assert report["result"] == expected
        assert len(expected[0]["windows"]) == 3


HIDDEN_PACKAGES_INTERPRETER = textwrap.dedent(
    """
    import importlib.abc, json, sys

    HIDDEN = {"transformers_blap", "soundfile", "_soundfile", "soxr"}

    class Hide(importlib.abc.MetaPathFinder):
        # Every import system finder, blind to the hidden packages: to transformers' availability checks
        # (importlib.util.find_spec) and to imports they are simply not installed.
        def __init__(self, finder):
            self.finder = finder

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in HIDDEN:
                return None
            return self.finder.find_spec(name, path, target)

        def __getattr__(self, name):  # find_distributions, invalidate_caches, ...
            return getattr(self.finder, name)

    sys.meta_path[:] = [Hide(finder) for finder in sys.meta_path]
    for name in HIDDEN:
        try:
            __import__(name)
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit(f"{name} is importable")

    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor, pipeline

    folder, outcomes = sys.argv[1], {}
    for kind, load in (
        ("model", lambda: AutoModelForSpeechSeq2Seq.from_pretrained(folder, trust_remote_code=True)),
        ("processor", lambda: AutoProcessor.from_pretrained(folder, trust_remote_code=True)),
        ("pipeline", lambda: pipeline(model=folder, trust_remote_code=True, device="cpu")),
    ):
        try:
            outcomes[kind] = type(load()).__name__
        except Exception as error:
            outcomes[kind] = f"{type(error).__name__}: {error}"
    print(json.dumps(outcomes))
    """
)


def test_remote_code_names_its_missing_packages(model_dir, tmp_path):
    # The folder's card (and push_to_hub's) lists what the remote code imports, with this package's bounds.
    requirements = remote_code_requirements()
    assert [requirement.split("<")[0].split(">")[0] for requirement in requirements] == [
        "av",
        "huggingface_hub",
        "numpy",
        "soundfile",
        "soxr",
        "torch",
        "transformers",
    ]
    assert "transformers>=5.23.0" in requirements  # setup.cfg's bound, lower only
    assert "huggingface_hub>=2.4.0" in requirements  # the import name carries the distribution's bound
    card = str(render_model_card(tiny_config(), repo_id="someone/blap"))
    assert "pip install " + " ".join(f'"{requirement}"' for requirement in requirements) in card

    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HF_HUB_CACHE", "HF_HOME")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_MODULES_CACHE=str(tmp_path / "modules"))
    completed = subprocess.run(
        [sys.executable, "-c", HIDDEN_PACKAGES_INTERPRETER, str(model_dir)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    outcomes = json.loads(completed.stdout.strip().splitlines()[-1])
    assert outcomes["model"] == "BlapForConditionalGeneration"  # the model's own code needs neither
    missing = (
        "ImportError: This modeling file requires the following packages that were not found in your environment:"
        " soundfile, soxr. Run `pip install soundfile soxr`"
    )
    assert outcomes["processor"] == missing
    assert outcomes["pipeline"] == missing


def test_every_entry_module_names_what_its_siblings_import_at_load_time(model_dir):
    # transformers checks only the imports of the module an auto_map / custom_pipelines entry names (for a local
    # folder); the packages its flat siblings import when they load must be named there too.
    config = json.loads((model_dir / "config.json").read_text())
    processor = json.loads((model_dir / "processor_config.json").read_text())
    references = [
        *config["auto_map"].values(),
        *(entry["impl"] for entry in config["custom_pipelines"].values()),
        *processor["auto_map"].values(),
        *processor["feature_extractor"]["auto_map"].values(),
    ]
    entry_files = {model_dir / f"{reference.rsplit('.', 1)[0]}.py" for reference in references}
    assert {path.name for path in entry_files} == CODE_FILES - {"audio.py", "remote_code_blap.py"}
    for entry in entry_files:
        needed = set()
        for sibling in get_relative_import_files(entry):
            tree = ast.parse(Path(sibling).read_text())
            for node in tree.body:  # module level only: imports inside functions run when called
                if isinstance(node, ast.Import):
                    needed.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    needed.add(node.module.split(".")[0])
        unnamed = needed - set(sys.stdlib_module_names) - set(get_imports(entry))
        assert not unnamed, f"{entry.name} must import {sorted(unnamed)} for its siblings"


# ------------------------------------------------------------------------------------------- start-up noise


def test_entry_points_drop_bitsandbytes_kernel_warning_and_nothing_else(caplog):
    import inspect

    import bitsandbytes.backends.cpu.ops as bnb_cpu_ops

    from blap_cli import KNOWN_STARTUP_NOISE

    ((logger_name, prefix),) = KNOWN_STARTUP_NOISE
    # The message is the one bitsandbytes logs at import on AVX-512 BF16 CPUs without the `kernels` package.
    assert logger_name == bnb_cpu_ops.logger.name and f'"{prefix}: %s.' in inspect.getsource(bnb_cpu_ops)
    logger = logging.getLogger(logger_name)
    caplog.set_level(logging.WARNING)
    try:
        assert main(["push", "/nonexistent/folder", "someone/blap"]) == 2  # any `blap` run installs the filter
        logger.warning(f"{prefix}: %s. Please make sure you already `pip install kernels`", "No module named kernels")
        logger.warning("a real bitsandbytes problem")
    finally:
        logger.filters.clear()
    assert [record.getMessage() for record in caplog.records if record.name == logger_name] == [
        "a real bitsandbytes problem"
    ]


def test_training_with_push_to_hub_offline_fails_in_one_line_before_training(monkeypatch, tmp_path, t5_tokenizer_dir):
    from transformers_blap.hub import HubError
    from transformers_blap.training import BlapStage2Trainer

    from stage2_utils import deterministic_model, sgd_args

    _refuse_dns(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    args = sgd_args(tmp_path / "out", push_to_hub=True, hub_model_id="someone/blap-ft")
    with pytest.raises(HubError) as raised:
        BlapStage2Trainer(deterministic_model(), args, processing_class=tiny_processor(t5_tokenizer_dir))
    message = str(raised.value)
    assert "\n" not in message and message.startswith("could not reach the Hub at ")
    assert "to create someone/blap-ft: [Errno -2] Name or service not known" in message
