"""DeepSpeed's CPU all-reduce buffers in /dev/shm are released once every rank has mapped them.

DeepSpeed (0.19, CPU accelerator, all ranks on one node) gives every rank a 66 MB file
/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank> and never removes it; on a machine
that runs many jobs on fresh ports the RAM runs out. humpback_ds.dist.init() unlinks each rank's
file after a barrier; the all-reduce keeps working through the mappings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from procs import DEEPSPEED, ROOT, SHM_DIR, free_port, run_group, shm_buffers

# Every rank: initialise (plain DeepSpeed or humpback_ds.dist), all-reduce through the shm op
# (a small tensor takes DeepSpeed's naive path, a 4 MB one its distributed path), write what it saw.
PROBE = """
import json, sys
from pathlib import Path
import deepspeed, torch
from deepspeed import comm
from humpback_ds import dist
if sys.argv[-1] == "humpback":  # the launcher puts --local_rank=N first
    dist.init()
else:
    deepspeed.init_distributed()
r = dist.rank()
sums = []
for n in (8, 1 << 20):
    t = torch.full((n,), float(r + 1))
    comm.inference_all_reduce(t)
    sums.append(t.unique().tolist())
comm.barrier()
seen = {"sums": sums, "own_file": dist.shm_buffer_path().exists()}
(Path(sys.argv[-2]) / f"rank{r}.json").write_text(json.dumps(seen))
"""


def _run(script: Path, mode: str, port: int) -> list[dict]:
    out = script.parent / f"{mode}-{port}"
    out.mkdir()
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    cmd = [str(DEEPSPEED), "--num_gpus=2", f"--master_port={port}", str(script), str(out), mode]
    res = run_group(cmd, env, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def _files(port: int) -> list[str]:
    return sorted(p.name for p in shm_buffers() if p.name.split("_")[-2] == str(port))


@pytest.mark.dist
@pytest.mark.slow
def test_plain_deepspeed_leaves_buffers_and_dist_init_releases_them(tmp_path: Path) -> None:
    if not SHM_DIR.is_dir():
        pytest.skip("no /dev/shm")
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    port = free_port()
    plain = _run(script, "plain", port)
    leaked = _files(port)
    for name in leaked:  # the trap shown; cleaned up before the no-leak check of conftest
        (SHM_DIR / name).unlink()
    uid = os.getuid()
    assert leaked == [f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_{port}_{r}" for r in (0, 1)]
    assert [d["sums"] for d in plain] == [[[3.0], [3.0]]] * 2

    port = free_port()
    ours = _run(script, "humpback", port)
    assert _files(port) == []
    assert [d["own_file"] for d in ours] == [False, False]  # unlinked before the all-reduces
    assert [d["sums"] for d in ours] == [[[3.0], [3.0]]] * 2  # which still went through shm


def test_clean_shm_removes_only_unmapped_buffers() -> None:
    if not SHM_DIR.is_dir():
        pytest.skip("no /dev/shm")
    stale = SHM_DIR / f"deepspeed_allreduce_buffer_{os.getuid()}_test_{free_port()}_0"
    live = SHM_DIR / f"deepspeed_allreduce_buffer_{os.getuid()}_test_{free_port()}_1"
    stale.write_bytes(b"\0" * 4096)
    live.write_bytes(b"\0" * 8192)
    holder = subprocess.Popen(  # maps `live` like a running rank, until its stdin closes
        [
            sys.executable,
            "-c",
            "import mmap, sys; f = open(sys.argv[1], 'r+b'); m = mmap.mmap(f.fileno(), 0); "
            "print('mapped', flush=True); sys.stdin.read()",
            str(live),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "mapped"
        res = subprocess.run(
            ["bash", str(ROOT / "tools" / "clean_shm.sh")], capture_output=True, text=True
        )
        assert res.returncode == 0, res.stderr
        assert not stale.exists() and live.exists()
        assert res.stdout.startswith("clean_shm: removed ") and "stale DeepSpeed shm" in res.stdout
    finally:
        holder.communicate("")
        stale.unlink(missing_ok=True)
        live.unlink(missing_ok=True)
