"""Every artifact path of a run directory, in one place (DESIGN.md 'Data flow')."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def seed_data(self) -> Path:
        return self.root / "data" / "seed.jsonl"

    @property
    def segments(self) -> Path:
        return self.root / "data" / "segments.jsonl"

    @property
    def candidates(self) -> Path:
        return self.root / "data" / "candidates.jsonl"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def backward_model(self) -> Path:
        return self.models_dir / "backward"

    def model(self, t: int) -> Path:
        """m0 is the seed model; m{t} for t >= 1 is iteration t's model."""
        return self.models_dir / f"m{t}"

    def scored(self, t: int) -> Path:
        return self.root / f"iter{t}" / "scored.jsonl"

    def selected(self, t: int) -> Path:
        return self.root / f"iter{t}" / "train.jsonl"

    def eval_outputs(self, t: int) -> Path:
        return self.eval_dir / f"m{t}" / "outputs.json"

    def judgement(self, a: int, b: int) -> Path:
        return self.eval_dir / f"m{a}_vs_m{b}.jsonl"

    @property
    def report(self) -> Path:
        return self.root / "report" / "index.html"

    @property
    def logs(self) -> Path:
        return self.root / "logs"
