"""Processes started by torchrun: rank, world size and device from the environment; gloo on CPU, nccl on GPU.

Gradients are exchanged by torch's DistributedDataParallel; this module only starts and stops the process
group and sums a few scalars (token counts, losses) across processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Dist:
    """Join the process group when started by torchrun (WORLD_SIZE > 1) and pick this process's device."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, dev)


def teardown(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: torch.Tensor, d: Dist) -> torch.Tensor:
    """Element-wise sum over processes (the tensor itself when there is one process)."""
    if d.world > 1:
        values = values.to(d.device)
        dist.all_reduce(values)
    return values


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()
