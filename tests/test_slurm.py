"""launchers/launch.sh and slurm/stage.sh, on one machine and on a real two-node Slurm cluster.

The cluster (slurmctld + slurmd n1, n2 on this host, tools/slurm_local.sh) is started once per
session when running as root with apt available, and stopped again if this session started it;
otherwise the `slurm` tests skip with the reason. Distributed work is tests/dist_probe.py, a
stage-independent gloo job, so these tests do not depend on the trainer.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import slurm_cluster
from procs import Spawner, free_port

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launchers" / "launch.sh"
STAGE = ROOT / "slurm" / "stage.sh"
PROBE_ENV = {"NPROC": "1", "HUMPBACK_MODULE": "tests.dist_probe", "DS_ACCELERATOR": "cpu"}


def _runs(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]


# --- without Slurm ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nnodes", "2", "--node_rank", "2", "train"], "--node_rank 2 is not below --nnodes 2"),
        (["--nproc", "two", "train"], "--nproc must be a whole number, got 'two'"),
        (["--bogus", "train"], "unknown option '--bogus'"),
        (["--nproc", "1"], "no stage given"),
    ],
)
def test_launch_rejects_bad_options(args: list[str], message: str) -> None:
    proc = subprocess.run(["bash", str(LAUNCH), *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_launch_help_lists_options() -> None:
    proc = subprocess.run(["bash", str(LAUNCH), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for option in ("--nproc", "--nnodes", "--node_rank", "--master_addr", "--master_port"):
        assert option in proc.stdout
    assert "set -euo" not in proc.stdout


def test_stage_refuses_to_run_outside_slurm() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", str(STAGE), "train"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert "submit with sbatch" in proc.stderr


@pytest.mark.dist
@pytest.mark.slow
def test_launch_single_node_two_processes(tmp_path: Path) -> None:
    env = {**os.environ, **PROBE_ENV, "NPROC": "2", "MASTER_PORT": str(free_port())}
    proc = subprocess.run(
        ["bash", str(LAUNCH), "--", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = _runs(tmp_path)
    assert run["world_size"] == 2
    assert run["rank_sum"] == 0 + 1
    assert run["event"] == "completed"
    host = socket.gethostname()
    assert run["nodes"] == [os.environ.get("SLURMD_NODENAME", host)] * 2


@pytest.mark.dist
@pytest.mark.slow
def test_launch_two_nodes_no_ssh(tmp_path: Path, spawn: Spawner) -> None:
    """What stage.sh does per node, without Slurm: two launchers, node ranks 0 and 1."""
    env = {**os.environ, **PROBE_ENV}
    common = ["--no_ssh", "--nnodes", "2", "--nproc", "1", "--master_port", str(free_port())]
    procs = [
        spawn.popen(
            ["bash", str(LAUNCH), *common, "--node_rank", str(r), "--", "--out", str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for r in (0, 1)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    (run,) = _runs(tmp_path)
    assert (run["world_size"], run["rank_sum"]) == (2, 0 + 1)
    assert "launch.sh: node 1/2, 1 processes, master 127.0.0.1:" in logs[1]


def test_cluster_start_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(slurm_cluster.ClusterUnavailable, match="not root"):
        slurm_cluster.start()


# --- on the local Slurm cluster --------------------------------------------------------------


@pytest.mark.slurm
@pytest.mark.dist
def test_sbatch_two_nodes_runs_a_task_on_each(cluster: list[str], tmp_path: Path) -> None:
    log = tmp_path / "job.out"
    task = 'echo "procid=$SLURM_PROCID node=$SLURMD_NODENAME"'
    job = slurm_cluster.submit(
        ["--nodes=2", "--ntasks-per-node=1", f"--output={log}", "--wrap", f"srun bash -c '{task}'"]
    )
    cluster.append(job)
    fields = slurm_cluster.wait_for(job, {"COMPLETED"}, timeout_s=60, log=log)
    assert fields["NumNodes"] == "2"
    assert sorted(log.read_text().split("\n")[:-1]) == ["procid=0 node=n1", "procid=1 node=n2"]


@pytest.mark.slurm
@pytest.mark.dist
@pytest.mark.slow
def test_stage_runs_a_two_node_gloo_job(cluster: list[str], tmp_path: Path) -> None:
    out, log = tmp_path / "out", tmp_path / "batch.out"
    env = {**PROBE_ENV, "LOG_DIR": str(tmp_path)}
    job = slurm_cluster.submit([f"--output={log}", str(STAGE), "--out", str(out)], env)
    cluster.append(job)
    fields = slurm_cluster.wait_for(job, {"COMPLETED"}, timeout_s=300, log=log)
    assert fields["ExitCode"] == "0:0"
    (run,) = _runs(out)
    assert run["world_size"] == 2
    assert run["rank_sum"] == 0 + 1
    assert run["nodes"] == ["n1", "n2"]  # rank 0 on the first node, rank 1 on the second
    for node in (0, 1):
        node_log = (tmp_path / f"humpback-{job}-node{node}.out").read_text()
        assert f"launch.sh: node {node}/2, 1 processes, master n1:" in node_log


@pytest.mark.slurm
@pytest.mark.dist
@pytest.mark.slow
def test_preemption_stops_requeues_and_resumes(cluster: list[str], tmp_path: Path) -> None:
    out, log = tmp_path / "out", tmp_path / "batch.out"
    env = {**PROBE_ENV, "LOG_DIR": str(tmp_path)}
    job = slurm_cluster.submit(
        [f"--output={log}", str(STAGE), "--out", str(out), "--wait_stop_s", "240"], env
    )
    cluster.append(job)
    slurm_cluster.wait_for_file(out / "waiting", job, timeout_s=300)

    # What Slurm does 60 s before the time limit (--signal=B:USR1@60): USR1 to the batch shell.
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=30)
    fields = slurm_cluster.wait_for(job, {"PENDING"}, timeout_s=120, log=log)
    assert fields["Restarts"] == "1"
    assert (tmp_path / f"stop-{job}").exists()  # created by the trap; the next run removes it
    (stopped,) = _runs(out)
    assert (stopped["event"], stopped["restart_count"], stopped["world_size"]) == ("stopped", 0, 2)

    slurm_cluster.release(job)
    fields = slurm_cluster.wait_for(job, {"COMPLETED"}, timeout_s=300, log=log)
    assert fields["ExitCode"] == "0:0"
    stopped, resumed = _runs(out)
    assert (resumed["event"], resumed["resumed"], resumed["restart_count"]) == (
        "completed",
        True,
        1,
    )
    assert resumed["nodes"] == ["n1", "n2"]
    assert not (tmp_path / f"stop-{job}").exists()
    batch = log.read_text()
    assert "stage.sh: USR1" in batch
    assert f"requeueing job {job} to resume" in batch
    assert "(restart 1)" in batch
