"""Drive the local Slurm cluster of tools/slurm_local.sh from tests: start it, submit, wait, clean up.

Job state is read with `scontrol show job` (accounting, hence sacct, is off in the local cluster).
Every wait is bounded and fails with the job's state and log tail instead of hanging.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "slurm_local.sh"
FINISHED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
}
START_TIMEOUT_S = 600  # covers apt-get install on a first run


class ClusterUnavailable(RuntimeError):
    """The local cluster cannot run here; the message says why (tests skip with it)."""


def _run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def is_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    return _run(["bash", str(SCRIPT), "status"], timeout=30).returncode == 0


def start() -> None:
    """Start the cluster (installing Slurm if needed); raise ClusterUnavailable with the reason."""
    if os.geteuid() != 0:
        raise ClusterUnavailable(
            "not root: tools/slurm_local.sh installs packages and starts daemons"
        )
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        raise ClusterUnavailable("Slurm is not installed and apt-get is unavailable")
    try:
        proc = _run(["bash", str(SCRIPT), "start"], timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ClusterUnavailable(
            f"tools/slurm_local.sh start took over {START_TIMEOUT_S} s"
        ) from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise ClusterUnavailable(f"tools/slurm_local.sh start failed ({proc.returncode}):\n{tail}")


def stop() -> None:
    _run(["bash", str(SCRIPT), "stop"], timeout=60)


def submit(args: list[str], env: dict[str, str] | None = None) -> str:
    """`sbatch --parsable ARGS` from the project root (stage.sh finds launchers/ through it)."""
    proc = _run(
        ["sbatch", "--parsable", *args], timeout=30, cwd=ROOT, env={**os.environ, **(env or {})}
    )
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0]


def job_fields(job_id: str) -> dict[str, str]:
    """`scontrol show job -o` as a dict (empty once Slurm has forgotten the job)."""
    proc = _run(["scontrol", "show", "job", "-o", job_id], timeout=30)
    if proc.returncode != 0:
        return {}
    return dict(re.findall(r"(\w+)=(\S*)", proc.stdout))


def wait_for(
    job_id: str, states: set[str], timeout_s: float, log: Path | None = None
) -> dict[str, str]:
    """Poll until the job is in one of `states`; fail with its state and log tail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    fields: dict[str, str] = {}
    while time.monotonic() < deadline:
        fields = job_fields(job_id)
        if fields.get("JobState") in states:
            return fields
        if fields.get("JobState") in FINISHED:
            break  # finished in a state that was not asked for
        time.sleep(1)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else "(no log)"
    raise AssertionError(
        f"job {job_id}: wanted {sorted(states)} within {timeout_s} s, got "
        f"{fields.get('JobState', 'unknown')} (Reason={fields.get('Reason')}, "
        f"ExitCode={fields.get('ExitCode')}); log tail:\n{tail}"
    )


def wait_for_file(path: Path, job_id: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return
        if job_fields(job_id).get("JobState") in FINISHED:
            break
        time.sleep(0.5)
    raise AssertionError(
        f"{path} did not appear within {timeout_s} s (job {job_id}: {job_fields(job_id)})"
    )


def release(job_id: str, delay_s: int = 5) -> None:
    """A requeued job waits ~2 minutes (Reason=BeginTime); let it start in delay_s seconds.

    Not at once: slurmd revokes the old run's credential with one-second resolution, and a run
    started within that second is killed ("Job credential revoked", JobState=FAILED).
    """
    _run(["scontrol", "update", f"JobId={job_id}", f"StartTime=now+{delay_s}"], timeout=30)


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        _run(["scancel", *job_ids], timeout=30)
