"""Running launched jobs from tests without leaving anything behind.

`run_group` is `subprocess.run` for a launcher and its ranks: the command gets a process group of
its own, and on a timeout the WHOLE group is killed. (`subprocess.run(timeout=...)` kills only the
launcher: its ranks live on, keep cores busy and slow every later test.)
`run_cli` runs `humpback-ds` with one process or several, through it.
`Spawner` (the `spawn` fixture) starts background launchers the same way and kills their groups
when the test ends, passed or failed.
`shm_buffers` lists DeepSpeed's CPU all-reduce files in /dev/shm (66 MB of RAM each until removed).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from humpback_ds.dist import SHM_DIR, free_port

ROOT = Path(__file__).resolve().parent.parent
DEEPSPEED = Path(sys.executable).parent / "deepspeed"


def run_group(
    cmd: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout: float = 400,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` in a new session; on timeout kill its process group and fail with its output."""
    with subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=None if env is None else dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(
                f"{' '.join(map(str, cmd))} ran past {timeout} s and was killed with its ranks\n"
                + out[-3000:]
                + err[-3000:]
            ) from None
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)


class Spawner:
    """Background processes, each in a process group of its own, all killed by `close`."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def popen(self, cmd: Sequence[str], **kwargs: object) -> subprocess.Popen:
        proc = subprocess.Popen(list(cmd), start_new_session=True, **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        """Kill every group, even of a launcher that has exited (its ranks may still run)."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_cli(args: Sequence[str], nproc: int) -> subprocess.CompletedProcess[str]:
    """`humpback-ds ARGS` through the real CLI: one plain process, or `nproc` under the deepspeed
    launcher; fails the test with the output unless it exits 0."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "HUMPBACK_COLLECTIVE_TIMEOUT_S": "120"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "humpback_ds", *args]
    else:
        port = f"--master_port={free_port()}"
        cmd = [str(DEEPSPEED), f"--num_gpus={nproc}", port, "--module", "humpback_ds", *args]
    res = run_group(cmd, env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def shm_buffers() -> set[Path]:
    return set(SHM_DIR.glob("deepspeed_allreduce_buffer_*"))
