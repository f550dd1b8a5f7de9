"""Rank, world size, process group start-up, barrier, rank-0 printing, deterministic sharding.

Reads the environment the `deepspeed` launcher and torchrun set (RANK, WORLD_SIZE, LOCAL_RANK), so
it works before and without an initialised process group. init() also releases DeepSpeed's CPU
shared-memory buffers (release_shm_buffer) and starts this rank's heartbeat (humpback_ds.liveness).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# A lost rank makes the others fail within this many seconds instead of hanging for DeepSpeed's
# default 10 minutes. Overridable: HUMPBACK_COLLECTIVE_TIMEOUT_S. Where a rank is slow rather than
# lost (a 65B export), liveness.wait_for_all waits for it as long as its heartbeat moves.
DEFAULT_TIMEOUT_S = 300
SHM_DIR = Path("/dev/shm")


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


def init(always: bool = False) -> None:
    """Initialise the process group once (gloo on CPU, NCCL on GPU) with the project's timeout.

    With one process it is left out unless `always` (ZeRO needs one); a process started without a
    launcher (plain `python -m`, no RANK) then gets a group of one on a free local port, since
    DeepSpeed would otherwise fall back to MPI discovery (mpi4py) and fail."""
    import deepspeed
    import torch.distributed as td

    if (always or world_size() > 1) and not td.is_initialized():
        if "RANK" not in os.environ:
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(free_port()))
        if not cuda_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        deepspeed.init_distributed(timeout=collective_timeout())
    if td.is_initialized() and not cuda_available():  # the shm all-reduce is CPU-only
        release_shm_buffer()
    from humpback_ds.liveness import Heartbeat  # it uses this module: imported on first use

    Heartbeat.start()


def free_port() -> int:
    """A local TCP port free right now (for a rendezvous on this machine)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shm_buffer_path(r: int | None = None) -> Path:
    """The /dev/shm file DeepSpeed's CPU all-reduce (the shm comm op) maps for rank `r`."""
    addr = os.environ.get("MASTER_ADDR", "")
    port = os.environ.get("MASTER_PORT", "")
    return (
        SHM_DIR
        / f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank() if r is None else r}"
    )


_shm_released = False


def release_shm_buffer() -> None:
    """Unlink this rank's DeepSpeed shm all-reduce buffer once every rank has mapped it.

    On CPU, when all ranks share a node, DeepSpeed gives each rank a 66 MB file in /dev/shm named
    after MASTER_ADDR, MASTER_PORT and the rank, and never removes it: every run on a new port
    left 66 MB per rank of RAM behind (22 GB after a day of tests, and the machine swapped). Each
    rank maps all peers' files inside init_distributed, so after a barrier the names are no longer
    needed: the mappings stay valid until the processes exit, and then the kernel frees the memory,
    even when a rank is killed."""
    global _shm_released
    if _shm_released:
        return
    _shm_released = True
    barrier()  # on every rank, whether or not this one has a file: a skipped barrier would hang
    with contextlib.suppress(FileNotFoundError):  # none when the ranks span several nodes
        shm_buffer_path().unlink()


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
