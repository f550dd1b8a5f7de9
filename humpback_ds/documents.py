"""Input reading for the segment stage: files, directories and dumps -> documents, one at a time.

Inputs are HTML / Markdown / text files, directories of them (recursive, sorted), JSONL(.gz) and
Parquet dumps. A file is one document with its path (below the directory given) as its id; a dump
record is one document with id `<dump name>:<id field or line/row number>`. Malformed dump records
go to the quarantine and are counted; more than `max_bad_fraction` of them fails the read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from humpback_ds.config import SegmentConfig
from humpback_ds.records import (
    DataError,
    Quarantine,
    ReadStats,
    check_bad_fraction,
    iter_json_lines,
    reject,
)

HTML_SUFFIXES = (".html", ".htm", ".xhtml")
TEXT_SUFFIXES = (".md", ".markdown", ".txt", ".text")
DUMP_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")


@dataclass(frozen=True)
class Doc:
    doc_id: str
    source: str
    kind: str  # "html" | "markdown"
    content: str


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    for kind, suffixes in (
        ("html", HTML_SUFFIXES),
        ("markdown", TEXT_SUFFIXES),
        ("dump", DUMP_SUFFIXES),
    ):
        if name.endswith(suffixes):
            return kind
    return None


def expand_inputs(inputs: list[str]) -> list[tuple[Path, str]]:
    """Every input file with its document-id prefix, in a deterministic order."""
    files: list[tuple[Path, str]] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and _kind(f))
            if not found:
                raise DataError(f"{path}: no HTML, Markdown, text, JSONL or Parquet files inside")
            files += [(f, f"{path.name}/{f.relative_to(path).as_posix()}") for f in found]
        elif path.is_file():
            if not _kind(path):
                raise DataError(
                    f"{path}: unknown file type; use one of "
                    f"{HTML_SUFFIXES + TEXT_SUFFIXES + DUMP_SUFFIXES}"
                )
            files.append((path, path.name))
        else:
            raise DataError(f"{path}: no such file or directory (check --input)")
    return files


def _dump_doc(obj: Any, where: str, prefix: str, number: int, cfg: SegmentConfig) -> Doc | str:
    """A Doc from one dump record (id: `<dump name>:<id field or line/row number>`), or the
    reason the record is malformed."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    page, plain = obj.get(cfg.html_field), obj.get(cfg.text_field)
    ident = obj.get(cfg.id_field)
    doc_id = f"{prefix}:{number if ident is None else ident}"
    if isinstance(page, str) and page.strip():
        return Doc(doc_id, where, "html", page)
    if isinstance(plain, str):
        return Doc(doc_id, where, "markdown", plain)
    return (
        f"no string field '{cfg.html_field}' or '{cfg.text_field}' "
        "(set --html_field / --text_field to the dump's field names)"
    )


def _jsonl_docs(
    path: Path, prefix: str, cfg: SegmentConfig, stats: ReadStats, quarantine: Quarantine
) -> Iterator[Doc]:
    for lineno, obj in iter_json_lines(path, stats, quarantine, cfg.max_bad_fraction):
        doc = _dump_doc(obj, f"{path}:{lineno}", prefix, lineno, cfg)
        if isinstance(doc, str):
            reject(stats, quarantine, lineno, doc, json.dumps(obj, ensure_ascii=False))
            continue
        yield doc


def _parquet_docs(
    path: Path, prefix: str, cfg: SegmentConfig, stats: ReadStats, quarantine: Quarantine
) -> Iterator[Doc]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    names = pf.schema_arrow.names
    columns = [c for c in (cfg.id_field, cfg.html_field, cfg.text_field) if c in names]
    if cfg.html_field not in names and cfg.text_field not in names:
        raise DataError(
            f"{path}: no column '{cfg.html_field}' or '{cfg.text_field}' (columns: "
            f"{names}); set --html_field / --text_field"
        )
    row = 0
    for batch in pf.iter_batches(batch_size=256, columns=columns):
        for obj in batch.to_pylist():
            row += 1
            stats.read += 1
            doc = _dump_doc(obj, f"{path}:row {row}", prefix, row, cfg)
            if isinstance(doc, str):
                reject(
                    stats, quarantine, row, doc, json.dumps(obj, ensure_ascii=False, default=str)
                )
                continue
            yield doc
    check_bad_fraction(stats, cfg.max_bad_fraction)


@dataclass
class Reading:
    """What the parent has read so far."""

    files: int = 0
    docs: int = 0
    bytes: int = 0
    bad: int = 0


def documents(
    files: list[tuple[Path, str]], cfg: SegmentConfig, reading: Reading, quarantine: Quarantine
) -> Iterator[Doc]:
    """Every document of every input file, one at a time."""
    for path, prefix in files:
        reading.files += 1
        kind = _kind(path)
        if kind != "dump":
            yield Doc(prefix, str(path), kind or "", path.read_text("utf-8", errors="replace"))
            continue
        stats = ReadStats(str(path))
        reader = _parquet_docs if path.name.lower().endswith(".parquet") else _jsonl_docs
        yield from reader(path, prefix, cfg, stats, quarantine)
        reading.bad += stats.bad
