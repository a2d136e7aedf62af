"""
Data parallelism: two CPU processes (torchrun, gloo) give the same losses and the same trained weights as one process
on the same global batch, with and without gradient accumulation; the accelerate / DeepSpeed / FSDP configurations in
configs/ are valid.
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
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils.deepspeed import HfDeepSpeedConfig
from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

from transformers_blap import BlapForConditionalGeneration

from stage2_utils import deterministic_model, sgd_args

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


# ------------------------------------------------------------------------------------- multi-GPU configurations

CONFIGS = TESTS.parent / "configs"
ACCELERATE_CONFIGS = sorted((CONFIGS / "accelerate").glob("*.yaml"))


class TrainerDeepSpeedConfig(HfDeepSpeedConfig):
    """transformers' `HfTrainerDeepSpeedConfig` logic (fill "auto" from the training arguments, report mismatches)
    on accelerate's config class, which, unlike transformers' wrapper, does not need deepspeed installed."""

    is_auto = HfTrainerDeepSpeedConfig.is_auto
    fill_match = HfTrainerDeepSpeedConfig.fill_match
    fill_only = HfTrainerDeepSpeedConfig.fill_only
    trainer_config_process = HfTrainerDeepSpeedConfig.trainer_config_process
    trainer_config_finalize = HfTrainerDeepSpeedConfig.trainer_config_finalize

    def __init__(self, config):
        super().__init__(config)
        self._dtype = None
        self.mismatches = []


def test_the_repository_has_the_multi_gpu_configurations():
    assert [path.name for path in ACCELERATE_CONFIGS] == [
        "ddp.yaml",
        "ddp_multinode.yaml",
        "deepspeed_zero2.yaml",
        "deepspeed_zero3.yaml",
        "fsdp.yaml",
    ]


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda path: path.name)
def test_accelerate_configs_are_valid_launch_configurations(path, monkeypatch):
    monkeypatch.chdir(TESTS.parent)  # the DeepSpeed configs name their JSON relative to the repository root
    config = load_config_from_file(str(path))  # unknown top-level keys raise here
    parser = launch_command_parser()
    options = {action.dest for action in parser._actions}
    for section, prefix in ((config.deepspeed_config or {}, ""), (config.fsdp_config or {}, "fsdp_")):
        for key in section:
            assert (key if key.startswith(prefix) else prefix + key) in options, f"{path.name}: unknown option {key}"
    args, _, _ = _validate_launch_command(parser.parse_args(["--config_file", str(path), "scripts/train_stage2.py"]))
    assert args.num_processes == 8 * args.num_machines and args.num_machines >= 1
    if args.use_deepspeed:
        assert Path(args.deepspeed_config_file).is_file()
    else:
        assert args.mixed_precision == "bf16"
    if args.use_fsdp:
        assert args.fsdp_version == 2
        wrapped = set(args.fsdp_transformer_layer_cls_to_wrap.split(","))
        assert wrapped == set(BlapForConditionalGeneration._no_split_modules)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_are_completed_by_the_training_arguments(stage, tmp_path):
    config = TrainerDeepSpeedConfig(str(CONFIGS / "deepspeed" / f"zero{stage}.json"))
    assert config.get_value("zero_optimization.stage") == stage
    args = sgd_args(tmp_path, bf16=True, per_device_train_batch_size=3, gradient_accumulation_steps=2)
    config.trainer_config_process(args)
    config.trainer_config_finalize(args, deterministic_model(), num_training_steps=100)
    assert config.mismatches == []
    assert "auto" not in json.dumps(config.config)
    assert config.config["train_micro_batch_size_per_gpu"] == 3 and config.config["bf16"] == {"enabled": True}
    if stage == 3:
        assert config.get_value("zero_optimization.stage3_gather_16bit_weights_on_model_save") is True
