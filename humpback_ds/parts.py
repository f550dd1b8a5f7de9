"""Exactly-once output of the inference stages: replicas, part files, resumable runs.

`world / tp_size` replicas split a stage's records; each finished job becomes one line of its
replica's part file (`PartStore`), so a killed run resumes where it stopped, under any world size,
and the merged output holds every record once. `fingerprint` pins what produced the parts.
The engine that does the work is humpback_ds.generator.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from humpback_ds import console, dist, liveness
from humpback_ds.config import ConfigError, GenerationConfig, to_dict
from humpback_ds.manifest import Manifest, content_hash
from humpback_ds.records import AtomicWriter, DataError, Quarantine, load_records, write_json

if TYPE_CHECKING:
    from humpback_ds.generator import Generator, Job

R = TypeVar("R")


@dataclass(frozen=True)
class Replica:
    """Where this rank sits: replica `index` of `count`, rank `tp_rank` inside its TP group."""

    index: int
    count: int
    tp_rank: int
    tp_size: int
    group: Any = None  # the torch.distributed group of this replica (None when tp_size == 1)

    @property
    def first_rank(self) -> int:
        return self.index * self.tp_size

    @property
    def writes(self) -> bool:
        """Only TP rank 0 of each replica writes output."""
        return self.tp_rank == 0


def replica_layout(tp_size: int) -> Replica:
    """Split the world into replicas of tp_size consecutive ranks (creating every group on every rank)."""
    world, rank = dist.world_size(), dist.rank()
    if tp_size < 1 or world % tp_size:
        raise ConfigError(
            f"tp_size={tp_size} does not divide the world size {world}: launch a multiple of "
            f"--tp_size processes, or change --tp_size"
        )
    group = None
    if tp_size > 1:
        import torch.distributed as td

        for r in range(world // tp_size):
            g = td.new_group(list(range(r * tp_size, (r + 1) * tp_size)))
            group = g if rank // tp_size == r else group
    return Replica(rank // tp_size, world // tp_size, rank % tp_size, tp_size, group)


class PartStore:
    """Exactly-once output: `<output>.parts/part-<replica>.jsonl`, one line per finished job.

    A line is `{"id", "record", "reason"}` (record None when the job was dropped for `reason`),
    appended, flushed and fsynced per batch by TP rank 0 of its replica. A restart reads the ids of
    every part file (whatever world size wrote them), ignores a torn last line, and skips them.
    `run.json` pins the config and inputs that produced the parts: a changed run is refused.
    The parts stay after the merge (a rerun only merges again); delete them to generate anew.
    """

    def __init__(self, output: str | Path, replica: Replica, fingerprint: dict[str, Any]):
        self.output = Path(output)
        self.dir = self.output.with_name(self.output.name + ".parts")
        self.replica = replica
        self.fingerprint = fingerprint

    @property
    def own(self) -> Path:
        return self.dir / f"part-{self.replica.index:05d}.jsonl"

    def check(self) -> None:
        """Refuse parts left by a different run (every rank checks, rank 0 then records the run)."""
        pinned = self.dir / "run.json"
        if pinned.is_file() and json.loads(pinned.read_text()) != self.fingerprint:
            raise ConfigError(
                f"{self.dir} holds results of a run with another config or input ({pinned}); "
                f"rerun with the same settings to resume, or delete {self.dir} to start over"
            )
        dist.barrier()
        if dist.is_main() and not pinned.is_file():
            write_json(pinned, self.fingerprint)

    def entries(self) -> Iterator[dict[str, Any]]:
        for path in sorted(self.dir.glob("part-*.jsonl")):
            data = path.read_bytes()
            complete = data[
                : data.rfind(b"\n") + 1
            ]  # a torn last line (killed mid-write) is ignored
            for lineno, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{path}:{lineno}: corrupt part line ({e.msg}); delete {self.dir} to start over"
                    ) from None

    def done_ids(self) -> set[str]:
        return {e["id"] for e in self.entries()} if self.dir.is_dir() else set()

    def append(self, lines: list[dict[str, Any]]) -> None:
        """Append finished jobs durably; the first append drops a torn tail of our own file."""
        if not self.replica.writes or not lines:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.own.is_file():
            data = self.own.read_bytes()
            if data and not data.endswith(b"\n"):
                os.truncate(self.own, data.rfind(b"\n") + 1)
        with self.own.open("a", encoding="utf-8") as fh:
            for line in lines:
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def merge(self) -> tuple[int, Counter]:
        """Write the output sorted by id (atomic); returns (records written, drops by reason)."""
        by_id: dict[str, dict[str, Any]] = {}
        for entry in self.entries():
            assert by_id.setdefault(entry["id"], entry) == entry, f"id {entry['id']} done twice"
        reasons: Counter = Counter()
        with AtomicWriter(self.output) as w:
            for key in sorted(by_id):
                entry = by_id[key]
                if entry["record"] is None:
                    reasons[entry["reason"]] += 1
                else:
                    w.write_line(json.dumps(entry["record"], ensure_ascii=False))
        return w.count, reasons


def run_jobs(
    gen: Generator,
    store: PartStore,
    records: Sequence[Any],
    make_job: Callable[[Any], Job | dict[str, Any]],
    work: Callable[[list[Job]], list[dict[str, Any]]],
    new_tokens: int,
    unit: str,
) -> int:
    """Process the records not done yet on this replica's share, batch by batch; returns done count.

    `make_job` returns a Job, or a finished part line for a record settled without the model (a
    prompt too long for it). Every rank reads the finished ids before any rank writes (barrier),
    so all replicas agree on the split. Ends with liveness.wait_for_all: after it, rank 0 may merge.
    """
    store.check()
    done = store.done_ids()
    dist.barrier()
    todo = [r for r in records if r.id not in done]
    made = [make_job(r) for r in dist.shard(todo, gen.replica.index, gen.replica.count)]
    mine = [m for m in made if not isinstance(m, dict)]
    store.append([m for m in made if isinstance(m, dict)])  # finished without the model
    with console.progress(unit) as bar:
        task = bar.add_task(f"replica {gen.replica.index}/{gen.replica.count}", total=len(mine))
        for batch in gen.batches(mine, new_tokens):
            store.append(work(batch))
            bar.advance(task, len(batch))
    # replicas may finish far apart (uneven shares, a slower node): no collective deadline here
    liveness.wait_for_all(
        f"their {unit} share", "Rerun the same command: the finished records are kept in the parts"
    )
    return len(done)


# Fields that change how the work is spread, not what it produces: a run may resume under others.
LAYOUT_FIELDS = ("tp_size", "token_budget", "max_bad_fraction")


def fingerprint(cfg: GenerationConfig, inputs: Sequence[str | Path]) -> dict[str, Any]:
    """What pins a run's results: its config (layout fields aside) and its inputs' content."""
    conf = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in LAYOUT_FIELDS}
    return {"config": conf, "inputs": {str(p): content_hash(p) for p in inputs}}


def read_unique(
    path: str | Path, cls: type[R], output: str | Path, max_bad_fraction: float
) -> list[R]:
    """Input records with distinct ids; bad lines go to <output>.quarantine.jsonl (rank 0 writes it)."""
    out = Path(output)
    q = Quarantine(out.with_name(out.name + ".quarantine.jsonl")) if dist.is_main() else None
    try:
        records = load_records(path, cls, quarantine=q, max_bad_fraction=max_bad_fraction)
    finally:
        if q is not None:
            q.close()
    seen: set[str] = set()
    for i, r in enumerate(records, start=1):
        if r.id in seen:  # type: ignore[attr-defined]
            raise DataError(f"{path}: record {i} repeats id {r.id!r}; ids must be unique")  # type: ignore[attr-defined]
        seen.add(r.id)  # type: ignore[attr-defined]
    return records


def part_line(key: str, record: dict[str, Any] | None, reason: str = "") -> dict[str, Any]:
    """One finished job as a part line: its record, or None and why it was dropped."""
    return {"id": key, "record": record, "reason": reason}


def model_inputs(model: str) -> list[Path]:
    """The files that identify a checkpoint cheaply: its config and, when present, its manifest."""
    path = Path(model)
    return [p for p in (path / "config.json", path / "manifest.json") if p.is_file()]


def open_store(cfg: Any, replica: Replica, *data: str | Path) -> tuple[PartStore, list[Path]]:
    """The part store of `cfg.output`, pinned to cfg and its inputs (the data files, then the
    files identifying cfg.model); returns it and those inputs."""
    inputs = [*map(Path, data), *model_inputs(cfg.model)]
    return PartStore(cfg.output, replica, fingerprint(cfg, inputs)), inputs


def refuse_overwrite(stage: str, output: str, **inputs: str) -> None:
    """A stage must not write its output over one of its inputs (named by its CLI flag)."""
    for flag, path in inputs.items():
        if Path(output).resolve() == Path(path).resolve():
            raise ConfigError(f"{stage}: --output {output} would overwrite --{flag}")


def stage_manifest(stage: str, cfg: Any, inputs: Sequence[Path]) -> Manifest:
    """The manifest of an inference stage, its config and inputs recorded (counts: the caller)."""
    manifest = Manifest(stage, to_dict(cfg))
    for p in inputs:
        manifest.add_input(p)
    return manifest
