"""Sharding across processes started by torchrun: rank and world size from the environment, a gloo
process group (works on CPU) for the barrier between generation and the merge."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


def rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def shard(items: list, rank: int, world: int) -> list:
    """Every world-th item starting at `rank`: balanced, and independent of what is already done."""
    return items[rank::world]


@contextmanager
def process_group(world: int) -> Iterator[None]:
    """A gloo group for the duration of the run when there is more than one process, else nothing."""
    if world <= 1:
        yield
        return
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo")
    try:
        yield
    finally:
        if created:
            dist.destroy_process_group()


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
