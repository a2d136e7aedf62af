"""
Two optimizer steps of BlapStage2Trainer on the tiny model, run by `test_stage2_distributed.py` either as one process
or under `torchrun` (CPU, gloo). Process 0 writes the logged losses and the trained stage-2 weights to `--output`.

    python tests/stage2_ddp_worker.py --data DIR --output DIR --per_device_batch_size 4
    torchrun --nproc_per_node 2 tests/stage2_ddp_worker.py --data DIR --output DIR --per_device_batch_size 2
"""

import argparse
import json
import os
import sys
from pathlib import Path

import safetensors.torch
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transformers_blap.training import BlapStage2Trainer  # noqa: E402

from stage2_utils import deterministic_model, sgd_args, trainable_state, write_clip_dataset  # noqa: E402
from tiny import tiny_processor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True, help="where the clips are written")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--per_device_batch_size", type=int, required=True)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    options = parser.parse_args()

    rank = int(os.environ.get("RANK", "0"))
    dataset = write_clip_dataset(options.data / f"rank{rank}")
    args = sgd_args(
        options.output / "trainer",
        learning_rate=0.5,
        max_steps=2,
        per_device_train_batch_size=options.per_device_batch_size,
        gradient_accumulation_steps=options.gradient_accumulation_steps,
        dataloader_num_workers=0,
    )
    model = deterministic_model()
    trainer = BlapStage2Trainer(model, args, train_dataset=dataset, processing_class=tiny_processor(options.tokenizer))
    trainer.train()
    if trainer.is_world_process_zero():
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        summary = {"world_size": args.world_size, "losses": losses, "global_step": trainer.state.global_step}
        (options.output / "summary.json").write_text(json.dumps(summary))
        safetensors.torch.save_file(trainable_state(model), options.output / "trainable.safetensors")


if __name__ == "__main__":
    main()
    # Under torchrun: leave the process group before exiting (gloo's threads can abort the exit otherwise).
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
