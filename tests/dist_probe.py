"""A tiny stage-independent distributed job, run by tests/test_slurm.py through launchers/launch.sh.

`python -m tests.dist_probe --out DIR [--wait_stop_s S]` on every rank:
1. initialises the process group with humpback_ds.dist.init() (gloo on CPU);
2. all-reduces the ranks and all-gathers each rank's node name (SLURMD_NODENAME, else hostname);
3. with --wait_stop_s > 0 and no DIR/checkpoint.json yet, behaves like a trainer that runs until
   pre-empted: polls the stop file (HUMPBACK_STOP_FILE, checked by rank 0 and broadcast so all
   ranks agree; rank 0 touches DIR/waiting when it starts polling), then writes DIR/checkpoint.json and exits 0; exits 3 when no stop file appears
   within S seconds. A later run that finds the checkpoint "resumes" and completes at once;
4. rank 0 appends one JSON line per run to DIR/runs.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as td

from humpback_ds import dist

POLL_S = 0.5


def _node_name() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def _stop_requested() -> bool:
    """Rank 0 looks for the stop file; every rank gets its answer (one collective per poll)."""
    stop_file = os.environ.get("HUMPBACK_STOP_FILE", "")
    flag = torch.tensor([int(dist.is_main() and bool(stop_file) and Path(stop_file).exists())])
    td.broadcast(flag, src=0)
    return bool(flag.item())


def _wait_for_stop(timeout_s: float, out: Path) -> bool:
    if dist.is_main():  # tells the test that the job is up and polling
        out.mkdir(parents=True, exist_ok=True)
        (out / "waiting").touch()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _stop_requested():
            return True
        time.sleep(POLL_S)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="directory shared by all nodes")
    parser.add_argument("--wait_stop_s", type=float, default=0.0)
    args = parser.parse_args(argv)
    out = Path(args.out)

    dist.init()
    total = torch.tensor([dist.rank()])
    td.all_reduce(total, op=td.ReduceOp.SUM)
    nodes: list[str | None] = [None] * dist.world_size()
    td.all_gather_object(nodes, _node_name())

    checkpoint = out / "checkpoint.json"
    resumed = checkpoint.exists()
    event = "completed"
    if args.wait_stop_s > 0 and not resumed:
        if not _wait_for_stop(args.wait_stop_s, out):
            print(f"dist_probe: no stop file within {args.wait_stop_s} s", file=sys.stderr)
            td.destroy_process_group()
            return 3
        event = "stopped"
    record = {
        "event": event,
        "resumed": resumed,
        "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        "world_size": dist.world_size(),
        "rank_sum": int(total.item()),
        "nodes": nodes,
        "stop_file_seen": event == "stopped",
    }
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        if event == "stopped":
            checkpoint.write_text(json.dumps({"stopped_at_restart": record["restart_count"]}))
        with (out / "runs.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
    dist.barrier()
    td.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
