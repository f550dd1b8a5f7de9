"""The whole pipeline on the real local Slurm cluster (two nodes, one process each).

slurm/pipeline.sh submits prep -> iter1 -> eval as a chain of afterok jobs; iter1 (slurm/iter.sh)
trains m1 across both nodes. Re-running the finished run locally must do no work, and a changed
setting re-runs exactly the steps downstream of it. Last, a pre-empted and requeued iteration must
give the same outputs as the uninterrupted one. (The tests share one run directory, in this order.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import slurm_cluster

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "humpback_ds" / "sample_data"
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.dist]


def _write_run_file(path: Path, run_dir: Path, select_top_n: int = 16) -> Path:
    demo = (ROOT / "launchers" / "demo.toml").read_text()
    body = demo.split("\n[train]\n", 1)[1]  # the demo's stage tables, from [train] on
    path.write_text(
        f"""[run]
run_dir = "{run_dir}"
base_model = "tiny"
seed_input = "{SAMPLE / "oasst" / "messages.jsonl"}"
web_input = ["{SAMPLE / "web"}"]
eval_prompts = "{SAMPLE / "eval" / "prompts.jsonl"}"
iterations = 1

[train]
{body}
[train.iteration]
max_steps = 60
save_every = 5
""".replace("top_n = 16", f"top_n = {select_top_n}")
    )
    return path


def _env(log_dir: Path) -> dict[str, str]:
    # One process per node: the 2-node job is a world of 2, one rank on n1 and one on n2.
    return {**os.environ, "NPROC": "1", "LOG_DIR": str(log_dir), "DS_ACCELERATOR": "cpu"}


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def chain(cluster: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("slurm_chain")
    run_dir, logs = work / "run", work / "logs"
    logs.mkdir()  # Slurm opens --output before the job starts
    run_file = _write_run_file(work / "run.toml", run_dir)
    proc = subprocess.run(
        [
            "bash",
            "slurm/pipeline.sh",
            "--config",
            str(run_file),
            "--nodes",
            "2",
            "--",
            f"--output={logs}/%x-%j.out",
        ],
        cwd=ROOT,
        env=_env(logs),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    jobs = dict(line.split() for line in proc.stdout.splitlines())
    assert list(jobs) == ["prep", "iter1", "eval"]
    cluster.extend(jobs.values())
    for name, job in jobs.items():
        log = logs / f"humpback-{name.rstrip('1')}-{job}.out"
        fields = slurm_cluster.wait_for(job, {"COMPLETED"}, timeout_s=900, log=log)
        assert fields["ExitCode"] == "0:0", (name, fields)
    return {"work": work, "run_dir": run_dir, "run_file": run_file, "logs": logs, "jobs": jobs}


def test_chain_completes_and_iter_trains_m1_across_two_nodes(chain):
    run_dir = chain["run_dir"]
    from transformers import AutoModelForCausalLM

    m1 = AutoModelForCausalLM.from_pretrained(run_dir / "models" / "m1")
    assert sum(p.numel() for p in m1.parameters()) == 158_016
    manifest = json.loads((run_dir / "models" / "m1" / "manifest.json").read_text())
    assert manifest["plan"]["dp"] == 2  # NPROC=1: the two ranks ran on the two nodes
    assert manifest["counts"]["steps"] == 60 and manifest["config"]["task"] == "iteration"
    assert manifest["config"]["base_model"] == str(run_dir / "models" / "base")
    iter_log = (chain["logs"] / f"humpback-iter-{chain['jobs']['iter1']}.out").read_text()
    assert "launch.sh: node 0/2" in iter_log and "launch.sh: node 1/2" in iter_log

    candidates = _lines(run_dir / "data" / "candidates.jsonl")
    scored = _lines(run_dir / "iter1" / "scored.jsonl")
    selected = _lines(run_dir / "iter1" / "train.jsonl")
    seed = _lines(run_dir / "data" / "seed.jsonl")
    assert len(seed) == 30 and len(candidates) == 40
    assert [s["id"] for s in scored] == sorted(c["id"] for c in candidates)
    augmented = [p for p in selected if p["source"] == "augmented"]
    assert len(augmented) == 16 and len(selected) == 30 + 16  # top_n = 16 of the candidates
    assert all(
        p["instruction"].endswith("Answer with knowledge from web search.") for p in augmented
    )
    winrate = json.loads((run_dir / "eval" / "m1_vs_m0.jsonl.manifest.json").read_text())
    assert 0.0 <= winrate["win_rate"]["win_rate"] <= 100.0
    assert (run_dir / "report" / "index.html").stat().st_size > 10_000


def test_finished_run_reruns_nothing_and_a_change_reruns_exactly_downstream(chain):
    run_file = chain["run_file"]
    env = {**os.environ, "NPROC": "2", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "-m", "humpback_ds", "run", "--config", str(run_file)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do: all 13 steps" in proc.stderr

    _write_run_file(run_file, chain["run_dir"], select_top_n=8)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "step 'select1'" in proc.stderr and "config top_n: 16 -> 8" in proc.stderr

    proc = subprocess.run([*cmd, "--force"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [
        [c.strip() for c in line.split("│")[1:-1]]
        for line in proc.stderr.splitlines()
        if line.count("│") == 6
    ]
    ran = {row[0] for row in rows if row[1] == "ran"}
    assert ran == {"select1", "m1", "answer_m1", "judge_m1_vs_m0", "report"}
    selected = _lines(chain["run_dir"] / "iter1" / "train.jsonl")
    assert sum(p["source"] == "augmented" for p in selected) == 8


def test_preempted_iteration_requeues_and_equals_uninterrupted(chain, cluster):
    run_dir, logs = chain["run_dir"], chain["logs"]
    ref = chain["work"] / "reference"
    ref.mkdir()
    # keep the uninterrupted iteration's outputs; the requeued job must reproduce them
    shutil.move(run_dir / "iter1", ref / "iter1")
    shutil.move(run_dir / "models" / "m1", ref / "m1")
    for suffix in (".step.json", ".step.toml"):
        shutil.move(run_dir / "models" / f"m1{suffix}", ref / f"m1{suffix}")

    job = slurm_cluster.submit(
        [
            "--nodes=2",
            f"--output={logs}/%x-%j.out",
            "slurm/iter.sh",
            "--config",
            str(chain["run_file"]),
            "--iteration",
            "1",
        ],
        env=_env(logs),
    )
    cluster.append(job)
    metrics = run_dir / "models" / "m1" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 12):
        assert time.monotonic() < deadline, "m1 training did not start"
        assert slurm_cluster.job_fields(job).get("JobState") in (
            "PENDING",
            "RUNNING",
            "CONFIGURING",
        )
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    fields = slurm_cluster.wait_for(job, {"PENDING"}, timeout_s=300)
    assert fields["Restarts"] == "1"
    stopped_at = len(metrics.read_text().splitlines())
    assert 12 <= stopped_at < 60  # it stopped in the middle of training
    slurm_cluster.release(job)
    fields = slurm_cluster.wait_for(job, {"COMPLETED"}, timeout_s=600)
    assert fields["ExitCode"] == "0:0"
    log = (logs / f"humpback-iter-{job}.out").read_text()
    assert "requeueing job" in log

    assert (run_dir / "iter1" / "train.jsonl").read_bytes() == (
        ref / "iter1" / "train.jsonl"
    ).read_bytes()
    assert (run_dir / "iter1" / "scored.jsonl").read_bytes() == (
        ref / "iter1" / "scored.jsonl"
    ).read_bytes()
    got, want = _lines(metrics), _lines(ref / "m1" / "metrics.jsonl")
    assert [m["step"] for m in got] == list(range(1, 61))  # resumed: no step lost or repeated
    for a, b in zip(got, want, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), a["step"]
