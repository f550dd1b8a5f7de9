"""Rank, world size, rank-0 printing, barrier and deterministic sharding of records.

Reads the environment the `deepspeed` launcher and torchrun set (RANK, WORLD_SIZE, LOCAL_RANK), so
it works before and without an initialised process group.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")

# A lost rank makes the others fail within this many seconds instead of hanging for DeepSpeed's
# default 10 minutes. Overridable: HUMPBACK_COLLECTIVE_TIMEOUT_S (raise it for 65B checkpoint saves).
DEFAULT_TIMEOUT_S = 300


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def collective_timeout() -> datetime.timedelta:
    return datetime.timedelta(
        seconds=float(os.environ.get("HUMPBACK_COLLECTIVE_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    )


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "") != "cpu"


def init() -> None:
    """Initialise the process group once (gloo on CPU, NCCL on GPU) with the project's timeout."""
    import deepspeed
    import torch.distributed as td

    if world_size() > 1 and not td.is_initialized():
        if not cuda_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        deepspeed.init_distributed(timeout=collective_timeout())


def barrier() -> None:
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        td.barrier()


def shard(items: Sequence[T], index: int, count: int) -> list[T]:
    """Deterministic round-robin split: item i goes to shard i % count."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} out of range for {count} shards")
    return [item for i, item in enumerate(items) if i % count == index]


def print0(*args: Any, **kwargs: Any) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)
