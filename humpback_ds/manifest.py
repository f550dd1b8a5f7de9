"""The manifest written beside every stage output.

It records what went in (paths with content hashes), the resolved config, counts (read, written,
rejected by reason), software versions and wall time. The pipeline compares manifests to skip a
finished stage and to refuse one whose inputs or config changed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from humpback_ds.records import write_json

_PACKAGES = ("humpback-ds", "torch", "deepspeed", "transformers", "datasets", "sentencepiece")


def manifest_path(output: str | Path) -> Path:
    """`out.jsonl` -> `out.jsonl.manifest.json`; a directory -> `dir/manifest.json`."""
    output = Path(output)
    if output.is_dir() or output.suffix == "":
        return output / "manifest.json"
    return output.with_name(output.name + ".manifest.json")


def content_hash(path: str | Path) -> str:
    """sha256 identity of a file or a directory.

    A file: its bytes. A directory with a manifest.json (everything this project writes): the
    manifest (its provenance) plus every file's name and size, so that a 65B checkpoint is not
    re-read to compare it. Any other directory (a downloaded base model): names and sizes of all
    files plus the bytes of those under 1 MiB (config, tokenizer).
    """
    path = Path(path)
    if not path.exists():
        return "missing"
    h = hashlib.sha256()
    if path.is_file():
        _hash_file(h, path)
        return h.hexdigest()
    has_manifest = (path / "manifest.json").is_file()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.relative_to(path)}\0{size}\0".encode())
        if f.name == "manifest.json" or (not has_manifest and size < (1 << 20)):
            _hash_file(h, f)
    return h.hexdigest()


def _hash_file(h: Any, path: Path) -> None:
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@dataclass
class Manifest:
    """Collects a stage's facts while it runs; `write` puts them beside the output."""

    stage: str
    config: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)  # path -> sha256
    counts: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)  # reason -> count
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def add_input(self, path: str | Path) -> None:
        self.inputs[str(path)] = content_hash(path)

    def reject(self, reason: str, n: int = 1) -> None:
        self.rejected[reason] += n

    def to_dict(self, output: str | Path) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "output": str(output),
            "inputs": self.inputs,
            "config": self.config,
            "counts": dict(self.counts),
            "rejected": dict(self.rejected),
            **self.extra,
            "versions": versions(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
            "wall_time_s": round(time.time() - self.started, 3),
        }

    def write(self, output: str | Path) -> Path:
        path = manifest_path(output)
        write_json(path, self.to_dict(output))
        return path


def read_manifest(output: str | Path) -> dict[str, Any] | None:
    path = manifest_path(output)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
