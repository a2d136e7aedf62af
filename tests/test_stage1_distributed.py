"""Stage-1 losses across processes: 2 CPU processes (gloo, DDP) equal one process holding the whole batch."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from stage1_distributed_worker import NEGATIVES_SEED, SPLITS, build_model, global_batch

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory) -> dict[str, dict]:
    out_dir = tmp_path_factory.mktemp("stage1_ddp")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), str(TESTS)]), OMP_NUM_THREADS="1")
    worker = str(TESTS / "stage1_distributed_worker.py")
    logs = [out_dir / f"rank{rank}.log" for rank in range(2)]
    processes = [
        subprocess.Popen(
            [sys.executable, worker, str(out_dir), str(rank), "2"],
            env=env,
            stdout=logs[rank].open("w"),
            stderr=subprocess.STDOUT,
        )
        for rank in range(2)
    ]
    deadline = time.monotonic() + 600
    # A failed process leaves the other waiting in a collective: stop both at the first failure or at the deadline.
    while any(process.poll() is None for process in processes):
        failed = any(process.poll() not in (None, 0) for process in processes)
        if failed or time.monotonic() > deadline:
            for process in processes:
                process.kill()
            break
        time.sleep(0.5)
    for process in processes:
        process.wait()
    for rank, process in enumerate(processes):
        assert process.returncode == 0, f"rank {rank} exited with {process.returncode}:\n{logs[rank].read_text()}"
    return {case: torch.load(out_dir / f"{case}.pt", weights_only=True) for case in SPLITS}


@pytest.fixture(scope="module")
def single_process_result() -> dict:
    model = build_model()
    torch.manual_seed(NEGATIVES_SEED)
    out = model(**global_batch(), return_loss=True)
    out.loss.backward()
    losses = torch.stack([out.loss, out.loss_atc, out.loss_atm, out.loss_lm]).detach()
    return {"losses": losses, "grads": {name: param.grad.clone() for name, param in model.named_parameters()}}


@pytest.mark.parametrize("case", list(SPLITS))
def test_two_processes_equal_one_process_on_the_global_batch(case, two_process_results, single_process_result):
    distributed = two_process_results[case]
    reference = single_process_result
    # loss, loss_atc, loss_atm, loss_lm: the mean over processes equals the single process's losses.
    torch.testing.assert_close(distributed["losses"], reference["losses"], rtol=1e-5, atol=1e-6)
    assert set(distributed["grads"]) == set(reference["grads"])
    worst = 0.0
    for name, grad in reference["grads"].items():
        torch.testing.assert_close(distributed["grads"][name], grad, rtol=1e-4, atol=1e-5, msg=name)
        worst = max(worst, (distributed["grads"][name] - grad).abs().max().item())
    assert any(grad.abs().sum() > 0 for name, grad in reference["grads"].items() if name.startswith("audio_encoder."))
    print(
        f"{case}: losses {distributed['losses'].tolist()} vs {reference['losses'].tolist()};"
        f" max |grad diff| {worst:.2e}"
    )
