"""Typed records and JSONL I/O.

Writes are atomic (tmp file + fsync + rename). Reads validate every line against the record's
schema; a malformed line is reported with its file and line number, copied verbatim to a
quarantine side file, and counted. A stage fails with a clear message when the fraction of bad
lines passes its threshold; valid lines are never lost.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar


class DataError(ValueError):
    """Input data a user must fix; the message names the file, the line and the fix."""


@dataclass(kw_only=True)
class Pair:
    """An (instruction, output) training example."""

    id: str
    instruction: str
    output: str
    source: str = "seed"  # "seed" | "augmented"
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class Segment:
    """A self-contained piece of a web document: the text under one header."""

    id: str
    doc_id: str
    header: str
    text: str
    source: str = ""  # file path or URL of the document
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class Candidate:
    """A backtranslated pair: an instruction generated for a segment (self-augmentation)."""

    id: str
    segment_id: str
    instruction: str
    output: str
    lineage: dict[str, Any] = field(default_factory=dict)  # model, decoding parameters, ...


@dataclass(kw_only=True)
class Scored:
    """A candidate with its self-curation rating."""

    id: str
    segment_id: str
    instruction: str
    output: str
    mode: str  # "generate" | "logprob"
    model: str
    score: float | None  # None when unparsed (generate mode)
    parsed: bool
    reason: str = ""  # why a rating was not parsed
    raw: list[str] = field(default_factory=list)  # generate mode: the sampled ratings
    probs: list[float] = field(default_factory=list)  # logprob mode: P(1..5), normalised
    expected: float | None = None  # logprob mode: sum_k k * P(k)
    lineage: dict[str, Any] = field(default_factory=dict)


R = TypeVar("R")

_JSON_TYPES: dict[Any, tuple[type, ...]] = {
    str: (str,),
    int: (int,),
    float: (int, float),
    bool: (bool,),
    dict[str, Any]: (dict,),
    list[str]: (list,),
    list[float]: (list,),
}


def from_dict(cls: type[R], obj: Any) -> R:
    """Build a record from a parsed JSON object, or raise ValueError naming the field."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    hints = typing.get_type_hints(cls)
    unknown = set(obj) - set(hints)
    if unknown:
        raise ValueError(
            f"unknown field(s) {sorted(unknown)} for {cls.__name__}; valid: {sorted(hints)}"
        )
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name not in obj:
            if required:
                raise ValueError(f"missing field '{f.name}' for {cls.__name__}")
            continue
        value, hint = obj[f.name], hints[f.name]
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
        if optional:
            if value is None:
                continue
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        allowed = _JSON_TYPES.get(hint, (object,))
        if not isinstance(value, allowed) or (hint is not bool and isinstance(value, bool)):
            raise ValueError(
                f"field '{f.name}' must be {getattr(hint, '__name__', hint)}, got {value!r:.60}"
            )
    return cls(**obj)


def to_json(record: Any) -> str:
    return json.dumps(dataclasses.asdict(record), ensure_ascii=False)


def open_text(path: str | Path) -> IO[str]:
    """Open a text file for reading, transparently decompressing .gz."""
    path = Path(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="strict")
    return path.open("r", encoding="utf-8")


@dataclass
class ReadStats:
    """Counts of one JSONL read; `bad` lines went to the quarantine file."""

    path: str
    read: int = 0
    bad: int = 0
    first_errors: list[str] = field(default_factory=list)


class Quarantine:
    """Append-only side file of rejected lines, created on first use."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh: IO[str] | None = None
        self.count = 0

    def add(self, source: str, line: int, error: str, text: str) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("w", encoding="utf-8")
        entry = {"file": source, "line": line, "error": error, "text": text}
        self._fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self.count += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def iter_json_lines(
    path: str | Path, stats: ReadStats, quarantine: Quarantine | None, max_bad_fraction: float
) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed JSON) of every well-formed line; bad lines are quarantined."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    lineno = 0
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        try:
            for lineno, raw in enumerate(fh, start=1):  # noqa: B007 (read in the handler)
                if not raw.strip():
                    continue
                stats.read += 1
                try:
                    yield lineno, json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    error = f"not UTF-8 at byte {e.start} ({e.reason}); re-encode the file as UTF-8"
                    reject(stats, quarantine, lineno, error, raw.decode("utf-8", "replace"))
                except json.JSONDecodeError as e:
                    error = f"invalid JSON: {e.msg} at column {e.colno}"
                    reject(stats, quarantine, lineno, error, raw.decode("utf-8"))
        except (OSError, EOFError) as e:  # a truncated or corrupt .gz
            raise DataError(f"{path}: cannot be read after line {lineno}: {e}") from None
    check_bad_fraction(stats, max_bad_fraction)


def reject(
    stats: ReadStats, quarantine: Quarantine | None, lineno: int, error: str, line: str
) -> None:
    """Count a bad line, remember the first few errors, and copy the line to the quarantine."""
    stats.bad += 1
    if len(stats.first_errors) < 5:
        stats.first_errors.append(f"{stats.path}:{lineno}: {error}")
    if quarantine is not None:
        quarantine.add(stats.path, lineno, error, line.rstrip("\n"))


def check_bad_fraction(stats: ReadStats, max_bad_fraction: float) -> None:
    if stats.bad and stats.bad > max_bad_fraction * max(stats.read, 1):
        raise DataError(
            f"{stats.path}: {stats.bad} of {stats.read} lines are malformed "
            f"(more than max_bad_fraction={max_bad_fraction}). First errors:\n  "
            + "\n  ".join(stats.first_errors)
            + "\nFix the input, or raise --max_bad_fraction to quarantine them and go on."
        )


def read_records(
    path: str | Path,
    cls: type[R],
    *,
    quarantine: Quarantine | None = None,
    max_bad_fraction: float = 0.0,
    stats: ReadStats | None = None,
) -> Iterator[R]:
    """Stream records of type `cls` from a JSONL(.gz) file, validating each line."""
    stats = stats if stats is not None else ReadStats(str(path))
    for lineno, obj in iter_json_lines(path, stats, quarantine, max_bad_fraction):
        try:
            record = from_dict(cls, obj)
        except (ValueError, TypeError) as e:
            reject(stats, quarantine, lineno, str(e), json.dumps(obj, ensure_ascii=False))
            check_bad_fraction_early(stats, max_bad_fraction)
            continue
        yield record


def check_bad_fraction_early(stats: ReadStats, max_bad_fraction: float) -> None:
    """Stop early on a file that is clearly the wrong schema (first 100 lines all bad)."""
    if stats.read >= 100 and stats.bad == stats.read:
        check_bad_fraction(stats, max_bad_fraction)


def load_records(path: str | Path, cls: type[R], **kwargs: Any) -> list[R]:
    return list(read_records(path, cls, **kwargs))


class AtomicWriter:
    """Write a text file that appears complete or not at all (tmp + fsync + rename)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        self._fh: IO[str] | None = None
        self.count = 0

    def __enter__(self) -> AtomicWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.tmp.open("w", encoding="utf-8")
        return self

    def write_line(self, text: str) -> None:
        assert self._fh is not None
        self._fh.write(text + "\n")
        self.count += 1

    def write(self, record: Any) -> None:
        self.write_line(to_json(record))

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        assert self._fh is not None
        if exc_type is not None:
            self._fh.close()
            self.tmp.unlink(missing_ok=True)
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.tmp, self.path)


def write_records(path: str | Path, records: typing.Iterable[Any]) -> int:
    with AtomicWriter(path) as w:
        for r in records:
            w.write(r)
    return w.count


def write_json(path: str | Path, obj: Any) -> None:
    with AtomicWriter(path) as w:
        w.write_line(json.dumps(obj, indent=2, ensure_ascii=False, default=str))
