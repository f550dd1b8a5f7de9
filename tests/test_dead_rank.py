"""A dead rank does not hang the job: the survivors exit naming it, and a rerun resumes.

The train stage runs under launchers/launch.sh on CPU (gloo). Once a checkpoint exists, the rank-1
python process is SIGKILLed; rank 0's next collective fails and the trainer re-raises it as
liveness.RankLost naming rank 1's host and pid (found through the heartbeats in the process group's
store). The collective timeout (HUMPBACK_COLLECTIVE_TIMEOUT_S, set low here) bounds the wait.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from humpback_ds import liveness
from humpback_ds.records import write_records

sys.path.insert(0, str(Path(__file__).parent))
from procs import Spawner, free_port  # noqa: E402
from test_sft_data import make_pairs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STEPS, SAVE_EVERY = 40, 5
TIMEOUT_S = 30  # HUMPBACK_COLLECTIVE_TIMEOUT_S of these runs
# the survivor must be gone within the collective timeout plus the heartbeat check (3 beats) and
# the launcher's 1 s polling; the slack covers a loaded 2-core machine
BOUND_S = TIMEOUT_S + 3 * liveness.HEARTBEAT_S + 25


def launch(
    spawn: Spawner, launcher: list[str], stage: list[str], log: Path, timeout_s: int = TIMEOUT_S
) -> subprocess.Popen:
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "HUMPBACK_COLLECTIVE_TIMEOUT_S": str(timeout_s),
        "HUMPBACK_HEARTBEAT_WARN_S": "5",
    }
    with log.open("w") as f:
        return spawn.popen(
            ["bash", "launchers/launch.sh", *launcher, *stage],
            cwd=ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )


def stage_args(model: Path, data: Path, out: Path) -> list[str]:
    args = {
        "task": "seed",
        "base_model": model,
        "data": data,
        "output_dir": out,
        "max_steps": STEPS,
        "global_batch_size": 8,
        "micro_batch_size": 2,
        "max_seq_len": 64,
        "save_every": SAVE_EVERY,
        "lr": 1e-3,
        "final_lr": 1e-4,
    }
    return ["train", *[f"--{k}={v}" for k, v in args.items()]]


def two_nodes(port: int) -> list[list[str]]:
    """Launcher options of two one-process 'nodes' sharing a master (as slurm/stage.sh does)."""
    common = ["--no_ssh", "--nproc", "1", "--nnodes", "2", "--master_addr", "127.0.0.1"]
    return [[*common, "--node_rank", str(r), "--master_port", str(port)] for r in (0, 1)]


def rank_pid(out: Path, rank: int) -> int:
    """Pid of the python process of `rank` training into `out` (from /proc: cmdline + RANK)."""
    for p in Path("/proc").iterdir():
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
            env = (p / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        ours = f"--output_dir={out}".encode() in cmd and b"deepspeed.launcher.runner" not in cmd
        if ours and f"RANK={rank}".encode() in env:
            return int(p.name)
    raise AssertionError(f"no process of rank {rank} for {out}")


def wait_for(path: Path, procs: list[subprocess.Popen], logs: list[Path]) -> None:
    deadline = time.monotonic() + 300
    while not path.is_file():
        for p, log in zip(procs, logs, strict=True):
            assert p.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {path} after 300 s"
        time.sleep(0.2)


def steps_logged(out: Path) -> list[int]:
    return [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dead-rank") / "data.jsonl"
    write_records(path, make_pairs(24, seed=11))
    return path


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_killed_rank_on_another_node_is_named_and_a_rerun_resumes(
    tiny_model: Path, data: Path, tmp_path: Path, spawn: Spawner
) -> None:
    out = tmp_path / "out"
    stage = stage_args(tiny_model, data, out)
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    procs = [
        launch(spawn, opts, stage, log)
        for opts, log in zip(two_nodes(free_port()), logs, strict=True)
    ]
    wait_for(out / "checkpoints" / "latest", procs, logs)
    victim = rank_pid(out, 1)
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    codes = [p.wait(timeout=BOUND_S + 60) for p in procs]
    elapsed = time.monotonic() - killed
    log0 = logs[0].read_text()
    assert codes[1] == 256 - signal.SIGKILL  # node 1's launcher passes on its child's -9
    assert codes[0] == 1, log0[-3000:]
    assert elapsed < BOUND_S, f"rank 0 needed {elapsed:.1f} s to give up"
    lost = f"rank 1 (host {socket.gethostname()}, pid {victim}) was lost: its heartbeat stopped"
    assert lost in log0, log0[-3000:]
    assert "Rerun the same command to resume" in log0
    saved = int((out / "checkpoints" / "latest").read_text().removeprefix("step"))
    assert saved % SAVE_EVERY == 0 and SAVE_EVERY <= saved < STEPS
    assert not (out / "manifest.json").exists()

    # resubmit: the same command (on a fresh port, as a new job would get)
    procs = [
        launch(spawn, opts, stage, log)
        for opts, log in zip(two_nodes(free_port()), logs, strict=True)
    ]
    codes = [p.wait(timeout=600) for p in procs]
    log0 = logs[0].read_text()
    assert codes == [0, 0], log0[-3000:] + logs[1].read_text()[-3000:]
    assert f"resumed from {out / 'checkpoints'} at step {saved}" in log0
    assert steps_logged(out) == list(range(1, STEPS + 1))  # trimmed past `saved`, then continued
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["steps"] == STEPS
    assert manifest["counts"]["steps_run_now"] == STEPS - saved
    assert (out / "model.safetensors").is_file()


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_rank_under_one_launcher_is_named(
    tiny_model: Path, data: Path, tmp_path: Path, spawn: Spawner
) -> None:
    """One launcher, 2 processes: it kills the survivor too, but only after its message."""
    out = tmp_path / "out"
    log = tmp_path / "node.log"
    proc = launch(
        spawn,
        ["--nproc", "2", "--master_port", str(free_port())],
        stage_args(tiny_model, data, out),
        log,
    )
    wait_for(out / "checkpoints" / "latest", [proc], [log])
    victim = rank_pid(out, 1)
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    code = proc.wait(timeout=BOUND_S + 60)
    elapsed = time.monotonic() - killed
    text = log.read_text()
    assert code == 256 - signal.SIGKILL, text[-3000:]
    assert elapsed < BOUND_S, f"the launcher needed {elapsed:.1f} s to give up"
    assert f"rank 1 (host {socket.gethostname()}, pid {victim}) was lost" in text, text[-3000:]


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_hung_rank_is_named_after_the_collective_timeout(
    tiny_model: Path, data: Path, tmp_path: Path, spawn: Spawner
) -> None:
    """SIGSTOP keeps rank 1's sockets open: only the collective timeout ends rank 0's wait."""
    out, timeout_s = tmp_path / "out", 15
    stage = stage_args(tiny_model, data, out)
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    opts = two_nodes(free_port())
    procs = [launch(spawn, o, stage, log, timeout_s) for o, log in zip(opts, logs, strict=True)]
    wait_for(out / "checkpoints" / "latest", procs, logs)
    victim = rank_pid(out, 1)
    os.kill(victim, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        code = procs[0].wait(timeout=timeout_s + 3 * liveness.HEARTBEAT_S + 85)
        elapsed = time.monotonic() - stopped
    finally:
        os.kill(victim, signal.SIGKILL)
        procs[1].wait(timeout=60)
    log0 = logs[0].read_text()
    assert code == 1, log0[-3000:]
    assert timeout_s <= elapsed < timeout_s + 3 * liveness.HEARTBEAT_S + 25, elapsed
    assert f"Timed out waiting {timeout_s * 1000}ms" in log0, log0[-3000:]
    # the warning comes first: 5 s without a beat (HUMPBACK_HEARTBEAT_WARN_S), before the timeout
    warned = f"rank 1 (host {socket.gethostname()}, pid {victim}) sent no heartbeat for 5 s"
    assert log0.index(warned) < log0.index("Timed out waiting"), log0[-3000:]
    lost = f"rank 1 (host {socket.gethostname()}, pid {victim}) was lost: its heartbeat stopped"
    assert lost in log0, log0[-3000:]


def test_other_errors_pass_the_guard_unchanged() -> None:
    """Without a process group (or for a non-collective error) the original error propagates."""
    with (
        pytest.raises(RuntimeError, match="^Connection closed by peer$"),
        liveness.lost_rank_guard("x"),
    ):
        raise RuntimeError("Connection closed by peer")
    with pytest.raises(ValueError, match="bad"), liveness.lost_rank_guard():
        raise ValueError("bad")
    assert liveness.is_peer_error(RuntimeError("[gloo] Timed out waiting 20000ms for recv"))
    assert not liveness.is_peer_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
