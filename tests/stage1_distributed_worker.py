"""One process of the 2-process stage-1 check (run by tests/test_stage1_distributed.py, not collected by pytest).

Usage: python stage1_distributed_worker.py OUT_DIR RANK WORLD_SIZE
(the processes meet through a file in OUT_DIR, so no network port can be taken by someone else)
"""

import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from transformers_blap import BlapForRepresentationLearning

from tiny import tiny_stage1_config

# How the global batch of 4 pairs is split over the 2 processes.
SPLITS = {"even": (2, 2), "uneven": (3, 1)}
NEGATIVES_SEED = 123


def global_batch() -> dict[str, torch.Tensor]:
    """Four clips and captions, identical in every process and in the single-process reference."""
    generator = torch.Generator().manual_seed(7)
    input_ids = torch.tensor(
        [
            [101, 2000, 2001, 2002, 102, 0],
            [101, 2003, 102, 0, 0, 0],
            [101, 2004, 2005, 2006, 2007, 102],
            [101, 2008, 2009, 102, 0, 0],
        ]
    )
    return {
        "input_features": torch.randn(4, 1, 101, 16, generator=generator),
        "input_ids": input_ids,
        "attention_mask": (input_ids != 0).long(),
    }


def build_model() -> BlapForRepresentationLearning:
    """
    The same weights everywhere, perturbed so that clips and captions get clearly different embeddings (at
    initialisation they are nearly equal); eval mode, so that dropout draws no random numbers (the negatives do).
    """
    torch.manual_seed(0)
    model = BlapForRepresentationLearning(tiny_stage1_config()).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name != "temperature":
                param.add_(0.3 * torch.randn_like(param))
    return model


def local_batch(batch: dict[str, torch.Tensor], split: tuple[int, ...], rank: int) -> dict[str, torch.Tensor]:
    start = sum(split[:rank])
    local = {key: value[start : start + split[rank]] for key, value in batch.items()}
    # Each process pads its captions to its own longest one, as a collator would.
    length = int(local["attention_mask"].sum(1).max())
    local["input_ids"] = local["input_ids"][:, :length]
    local["attention_mask"] = local["attention_mask"][:, :length]
    return local


def main(out_dir: str, rank: int, world_size: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{Path(out_dir).resolve() / 'rendezvous'}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(minutes=5),
    )
    model = DistributedDataParallel(build_model())
    batch = global_batch()
    for case, split in SPLITS.items():
        model.zero_grad()
        torch.manual_seed(NEGATIVES_SEED)
        out = model(**local_batch(batch, split, rank), return_loss=True)
        out.loss.backward()  # DDP averages the gradients over the processes
        losses = torch.stack([out.loss, out.loss_atc, out.loss_atm, out.loss_lm]).detach()
        dist.all_reduce(losses)
        if rank == 0:
            grads = {name: param.grad.clone() for name, param in model.module.named_parameters()}
            torch.save({"losses": losses / world_size, "grads": grads}, Path(out_dir) / f"{case}.pt")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    # Only once `main` has returned and freed the DDP model: a reducer freed after the process group drops the group's
    # last reference, whose destructor then joins gloo's threads while holding the GIL they need (a hang at exit).
    dist.destroy_process_group()
