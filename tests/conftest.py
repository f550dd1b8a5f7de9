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
