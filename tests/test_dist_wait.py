"""liveness.wait_for_all: a slow rank is waited for past the collective timeout; a hung one is named.

Two processes under the `deepspeed` launcher, collective timeout 6 s (HUMPBACK_COLLECTIVE_TIMEOUT_S).
Rank 1 reaches the barrier late: asleep for 15 s (its heartbeat thread keeps beating, as in a rank
busy writing a 65B export), or stopped with SIGSTOP (hung: no heartbeat). Rank 0 reports how it
ended. A plain barrier in the slow case shows why wait_for_all exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from procs import DEEPSPEED, ROOT, Spawner, free_port

TIMEOUT_S, SLOW_S = 6, 15

PROBE = """
import json, os, signal, sys, time
from pathlib import Path
from humpback_ds import dist, liveness
out, mode = Path(sys.argv[-2]), sys.argv[-1]
dist.init()
if dist.rank() == 1:
    if mode == "hung":
        os.kill(os.getpid(), signal.SIGSTOP)
    time.sleep(float(os.environ["SLOW_S"]))
t0 = time.monotonic()
try:
    if mode == "barrier":
        dist.barrier()
    else:
        liveness.wait_for_all("the probe", "a hint")
    seen = {"ok": True}
except Exception as e:
    seen = {"ok": False, "error": f"{type(e).__name__}: {e}"}
seen["waited"] = time.monotonic() - t0
(out / f"rank{dist.rank()}.json").write_text(json.dumps(seen))
sys.exit(0 if seen["ok"] else 1)
"""


def _run(tmp_path: Path, spawn: Spawner, mode: str) -> tuple[int | None, dict]:
    """Rank 0's report, and the launcher's exit code (None for "hung": the launcher would give a
    stopped rank 30 s after SIGTERM; the spawn fixture kills the group instead)."""
    script, out = tmp_path / "probe.py", tmp_path / mode
    script.write_text(PROBE)
    out.mkdir()
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "HUMPBACK_COLLECTIVE_TIMEOUT_S": str(TIMEOUT_S),
        "SLOW_S": str(SLOW_S),
    }
    port = free_port()
    cmd = [str(DEEPSPEED), "--num_gpus=2", f"--master_port={port}", str(script), str(out), mode]
    log = (tmp_path / f"{mode}.log").open("w")
    proc = spawn.popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    report, deadline = out / "rank0.json", time.monotonic() + 240
    while not report.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert report.is_file(), (tmp_path / f"{mode}.log").read_text()[-3000:]
    code = None if mode == "hung" else proc.wait(timeout=120)
    return code, json.loads(report.read_text())


@pytest.mark.dist
@pytest.mark.slow
def test_a_slow_rank_is_waited_for_past_the_collective_timeout(
    tmp_path: Path, spawn: Spawner
) -> None:
    code, rank0 = _run(tmp_path, spawn, "slow")
    assert code == 0 and rank0["ok"], rank0
    assert SLOW_S - 2 < rank0["waited"] < SLOW_S + 30, rank0  # waited for rank 1's 15 s


@pytest.mark.dist
@pytest.mark.slow
def test_a_plain_barrier_gives_up_on_the_same_slow_rank(tmp_path: Path, spawn: Spawner) -> None:
    code, rank0 = _run(tmp_path, spawn, "barrier")
    assert code != 0 and not rank0["ok"], rank0
    assert "Timed out" in rank0["error"] or "timeout" in rank0["error"].lower(), rank0
    assert TIMEOUT_S - 1 < rank0["waited"] < SLOW_S, rank0


@pytest.mark.dist
@pytest.mark.slow
def test_a_hung_rank_is_named_after_the_collective_timeout(tmp_path: Path, spawn: Spawner) -> None:
    _, rank0 = _run(tmp_path, spawn, "hung")
    assert not rank0["ok"], rank0
    err = rank0["error"]
    assert err.startswith("RankLost: rank 1 (host "), err
    assert f"was lost: no heartbeat for {TIMEOUT_S} s" in err
    assert "while waiting for all ranks to finish the probe. a hint" in err
    assert TIMEOUT_S <= rank0["waited"] < TIMEOUT_S + 20, rank0
