"""Shared fixtures: hermetic (no network), CPU DeepSpeed, one tiny model per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = ROOT / "humpback_ds" / "sample_data"


@pytest.fixture(autouse=True)
def no_shm_buffer_left_behind() -> Iterator[None]:
    """Every test leaves /dev/shm as it found it: DeepSpeed's CPU all-reduce files are 66 MB of
    RAM each and are never freed by DeepSpeed (humpback_ds.dist.release_shm_buffer)."""
    from procs import shm_buffers

    before = shm_buffers()
    yield
    left = sorted(shm_buffers() - before)
    for path in left:  # removed either way, so one failure does not starve later tests of RAM
        path.unlink(missing_ok=True)
    assert not left, f"the test left DeepSpeed shm all-reduce buffers behind: {left}"


@pytest.fixture
def spawn() -> Iterator[object]:
    """procs.Spawner: background launchers whose process groups are killed when the test ends."""
    from procs import Spawner

    spawner = Spawner()
    yield spawner
    spawner.close()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaMA + SentencePiece tokenizer HF checkpoint, built once per test session."""
    from humpback_ds.config import TinyModelConfig
    from humpback_ds.modeling import build_tiny_model

    out = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_model(TinyModelConfig(output_dir=str(out)))
    return out


@pytest.fixture(scope="session")
def cluster() -> Iterator[list[str]]:
    """The local cluster; yields a list the tests add their job ids to (cancelled at the end)."""
    import slurm_cluster

    was_up = slurm_cluster.is_up()
    if not was_up:
        try:
            slurm_cluster.start()
        except slurm_cluster.ClusterUnavailable as e:
            pytest.skip(f"local Slurm cluster unavailable: {e}")
    jobs: list[str] = []
    yield jobs
    slurm_cluster.cancel(jobs)
    if not was_up:
        slurm_cluster.stop()
