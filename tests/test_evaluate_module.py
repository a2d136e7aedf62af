"""The `evaluate` metric module loads from its local file, offline, and gives what `caption_metrics` gives."""

import json
import os
import subprocess
import sys

import evaluate
import pytest

from transformers_blap.evaluation import BLAP_CAPTION_METRIC_PATH, caption_metrics

PREDICTIONS = ["A calm piano melody with soft strings.", "Loud rock song, distorted guitars and drums!"]
REFERENCES = [["A soft solo piano piece.", "Calm piano and strings."], ["Energetic rock with electric guitars."]]
METRICS = ["bleu_1", "bleu_4", "rouge_l", "cider_d"]


def test_loads_offline_from_the_local_file(tmp_path):
    script = (
        "import evaluate, json, sys\n"
        "metric = evaluate.load(sys.argv[1], cache_dir=sys.argv[2])\n"
        "print(json.dumps(metric.compute(predictions=json.loads(sys.argv[3]), references=json.loads(sys.argv[4]), "
        "metrics=json.loads(sys.argv[5]))))\n"
    )
    offline = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_EVALUATE_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
        PYTHONPATH=os.pathsep.join(sys.path),
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, BLAP_CAPTION_METRIC_PATH, str(tmp_path / "cache")]
        + [json.dumps(value) for value in (PREDICTIONS, REFERENCES, METRICS)],
        env=offline,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    scores = json.loads(completed.stdout.strip().splitlines()[-1])
    assert scores == pytest.approx(caption_metrics(PREDICTIONS, REFERENCES, metrics=METRICS), abs=1e-12)


def test_single_references_and_batches(tmp_path):
    metric = evaluate.load(BLAP_CAPTION_METRIC_PATH, cache_dir=str(tmp_path))
    single = [references[0] for references in REFERENCES]
    assert metric.compute(predictions=PREDICTIONS, references=single, metrics=METRICS) == pytest.approx(
        caption_metrics(PREDICTIONS, single, metrics=METRICS), abs=1e-12
    )
    for prediction, references in zip(PREDICTIONS, REFERENCES):
        metric.add_batch(predictions=[prediction], references=[references])
    assert metric.compute(metrics=METRICS) == pytest.approx(
        caption_metrics(PREDICTIONS, REFERENCES, metrics=METRICS), abs=1e-12
    )
