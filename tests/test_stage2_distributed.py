"""
Data parallelism: two CPU processes (torchrun, gloo) give the same losses and the same trained weights as one process
on the same global batch, with and without gradient accumulation.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from stage2_utils import deterministic_model

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "stage2_ddp_worker.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(tmp_path: Path, name: str, tokenizer: Path, processes: int, batch_size: int, accumulation: int = 1):
    output = tmp_path / name
    worker_args = [
        str(WORKER),
        "--data",
        str(tmp_path / "data"),
        "--output",
        str(output),
        "--tokenizer",
        str(tokenizer),
        "--per_device_batch_size",
        str(batch_size),
        "--gradient_accumulation_steps",
        str(accumulation),
    ]
    if processes == 1:
        command = [sys.executable, *worker_args]
    else:
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--nnodes", "1"]
        command = [sys.executable, *launcher, "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
        command += worker_args
    src = str(TESTS.parent / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    summary = json.loads((output / "summary.json").read_text())
    return summary, safetensors.torch.load_file(output / "trainable.safetensors")


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path, t5_tokenizer_dir):
    single, single_weights = _run(tmp_path, "single", t5_tokenizer_dir, processes=1, batch_size=4)
    assert single["world_size"] == 1 and single["global_step"] == 2 and len(single["losses"]) == 2

    for name, batch_size, accumulation in (("ddp", 2, 1), ("ddp_accumulation", 1, 2)):
        summary, weights = _run(tmp_path, name, t5_tokenizer_dir, 2, batch_size, accumulation)
        assert summary["world_size"] == 2 and summary["global_step"] == 2
        assert summary["losses"] == pytest.approx(single["losses"], rel=1e-5), name
        assert sorted(weights) == sorted(single_weights)
        for key, value in single_weights.items():
            torch.testing.assert_close(weights[key], value, rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")
    # The two steps moved every weight: the equality above is not one of untouched initial values.
    initial = deterministic_model().state_dict()
    assert all(not torch.equal(initial[key], value) for key, value in single_weights.items())
