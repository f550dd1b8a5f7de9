"""Segment stage: web documents -> self-contained segments (METHOD.md 'The loop' 2).

    humpback-ds segment --input DOCS [DOCS ...] --output data/segments.jsonl

Inputs are HTML / Markdown / text files, directories of them (recursive, sorted), JSONL(.gz) and
Parquet dumps (read by documents.py). The parent process reads documents one at a time and hands batches of them to a
pool of workers, which cut them and run the per-segment filters (headers, length, repetition) and
compute each segment's exact-duplicate key and MinHash. At most 2 batches per worker are in flight
(`Pool.imap` would read the whole corpus ahead), so memory stays flat. The parent then
deduplicates in input order (exact: a set of digests; near: a MinHash LSH index, see Deduper), so
the output is identical for any number of workers.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasketch import MinHash, MinHashLSH
from rich.progress import TextColumn

from humpback_ds import console, markup, text
from humpback_ds.config import ConfigError, SegmentConfig, to_dict
from humpback_ds.documents import Doc, Reading, documents, expand_inputs
from humpback_ds.manifest import Manifest, read_manifest
from humpback_ds.records import AtomicWriter, Quarantine, Segment

BATCH_BYTES = 1 << 20  # documents per worker task: up to ~1 MB ...
BATCH_DOCS = 256  # ... or this many documents
REASONS = (
    "empty_header",
    "upper_header",
    "boilerplate_header",
    "too_short",
    "too_long",
    "repetitive",
    "exact_duplicate",
    "near_duplicate",
)


@dataclass(frozen=True)
class CutParams:
    min_chars: int
    max_chars: int
    ngram: int
    repetition: float
    num_perm: int
    shingle: int


@dataclass
class DocResult:
    """One document's surviving pieces (with dedup keys) and its rejections by reason."""

    segments: list[tuple[Segment, bytes, np.ndarray]] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)
    chrome: int = 0


# --------------------------------------------------------------------------------------------
# Worker side: one document -> pieces -> per-segment filters + dedup keys
# --------------------------------------------------------------------------------------------

_TEMPLATES: dict[int, MinHash] = {}


def _minhash(shingles: np.ndarray, num_perm: int) -> np.ndarray:
    """MinHash values of already-hashed shingles (text.analyse), with datasketch's own
    permutations; `int` as hashfunc passes each 32-bit shingle hash through unchanged."""
    if num_perm not in _TEMPLATES:
        _TEMPLATES[num_perm] = MinHash(num_perm=num_perm, hashfunc=int)
    template = _TEMPLATES[num_perm]
    m = MinHash(
        num_perm=num_perm, hashfunc=int, permutations=template.permutations, scheme=template.scheme
    )
    m.update_batch(shingles.tolist())
    return m.hashvalues


def process_doc(doc: Doc, p: CutParams) -> DocResult:
    """Cut one document and apply the filters that need no state from other documents."""
    result = DocResult()
    if doc.kind == "html":
        blocks, result.chrome = markup.html_blocks(doc.content)
    else:
        blocks = markup.markdown_blocks(doc.content)
    for index, piece in enumerate(text.document_pieces(blocks, p.min_chars, p.max_chars)):
        if piece.reason:
            result.rejected[piece.reason] += 1
            continue
        analysis = text.analyse(piece.text, p.ngram, p.repetition, p.shingle)
        if analysis.repetitive:
            result.rejected["repetitive"] += 1
            continue
        seg = Segment(
            id=text.segment_id(doc.doc_id, piece.path, index),
            doc_id=doc.doc_id,
            header=piece.header,
            text=piece.text,
            source=doc.source,
            meta={"header_path": list(piece.path)},
        )
        result.segments.append((seg, analysis.key, _minhash(analysis.shingles, p.num_perm)))
    return result


def process_batch(docs: list[Doc], p: CutParams) -> list[DocResult]:
    return [process_doc(d, p) for d in docs]


# --------------------------------------------------------------------------------------------
# Parent side: batches of documents through the worker pool, in input order
# --------------------------------------------------------------------------------------------


def _batches(docs: Iterable[Doc], reading: Reading) -> Iterator[list[Doc]]:
    batch: list[Doc] = []
    size = 0
    for doc in docs:
        batch.append(doc)
        n = len(doc.content.encode("utf-8"))
        size += n
        reading.docs += 1
        reading.bytes += n
        if size >= BATCH_BYTES or len(batch) >= BATCH_DOCS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _results(batches: Iterator[list[Doc]], p: CutParams, workers: int) -> Iterator[list[DocResult]]:
    """Batch results in input order; at most 2 batches per worker in flight."""
    if workers <= 1:
        for batch in batches:
            yield process_batch(batch, p)
        return
    with multiprocessing.Pool(workers) as pool:
        pending: deque[Any] = deque()
        for batch in batches:
            pending.append(pool.apply_async(process_batch, (batch, p)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# --------------------------------------------------------------------------------------------
# Parent side: deduplication in input order, output, manifest
# --------------------------------------------------------------------------------------------


class Deduper:
    """Exact duplicates: a set of sha1 digests of the normalised text. Near duplicates: MinHash
    LSH with verification. The signature (datasketch MinHash) is cut into b bands of r rows, b and
    r chosen by datasketch's MinHashLSH optimiser for the threshold with weights 0.1 (false
    positive) / 0.9 (false negative), i.e. tuned for recall (14 x 9 for 128 permutations). Every
    earlier kept segment sharing a band is a candidate, and a candidate is a near duplicate when
    the estimated Jaccard (fraction of equal MinHash values) is >= threshold.

    The band index is one dict per band from the band's hash to the kept segment number (a list
    when several share it), and kept signatures are packed in one bytearray: ~2 KB per kept
    segment, where datasketch's own MinHashLSH index keeps a set per bucket plus every key's band
    hashes (~4.6 KB). Which candidates exist does not depend on the hash function (equal bands
    always collide; extra collisions are verified away), so the output is deterministic."""

    def __init__(self, threshold: float, num_perm: int):
        tuned = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.1, 0.9))
        self.threshold, self.num_perm, self.b, self.r = threshold, num_perm, tuned.b, tuned.r
        self.seen: set[bytes] = set()
        self.bands: list[dict[int, int | list[int]]] = [{} for _ in range(self.b)]
        self.sketches = bytearray()
        self.kept = 0

    def _similar(self, other: int, hashvalues: np.ndarray) -> bool:
        size = hashvalues.itemsize * self.num_perm
        kept = np.frombuffer(self.sketches, hashvalues.dtype, self.num_perm, other * size)
        return float(np.mean(kept == hashvalues)) >= self.threshold

    def check(self, key: bytes, hashvalues: np.ndarray) -> str | None:
        if key in self.seen:
            return "exact_duplicate"
        self.seen.add(key)
        raw, width = hashvalues.tobytes(), hashvalues.itemsize * self.r
        keys = [hash(raw[i * width : (i + 1) * width]) for i in range(self.b)]
        candidates: set[int] = set()
        for band, k in zip(self.bands, keys, strict=True):
            hit = band.get(k)
            if hit is not None:
                candidates.update(hit if isinstance(hit, list) else (hit,))
        if any(self._similar(other, hashvalues) for other in sorted(candidates)):
            return "near_duplicate"
        for band, k in zip(self.bands, keys, strict=True):
            hit = band.get(k)
            if hit is None:
                band[k] = self.kept
            elif isinstance(hit, list):
                hit.append(self.kept)
            else:
                band[k] = [hit, self.kept]
        self.sketches += raw
        self.kept += 1
        return None


def check_config(cfg: SegmentConfig) -> None:
    if not 0 < cfg.min_chars <= cfg.max_chars:
        raise ConfigError(
            f"min_chars={cfg.min_chars} / max_chars={cfg.max_chars}: need "
            "0 < min_chars <= max_chars"
        )
    if not 0 < cfg.near_dup_threshold <= 1 or not 0 <= cfg.repetition_threshold <= 1:
        raise ConfigError("near_dup_threshold must be in (0, 1] and repetition_threshold in [0, 1]")
    if cfg.num_perm < 2 or cfg.repetition_ngram < 1 or cfg.num_workers < 0:
        raise ConfigError("need num_perm >= 2, repetition_ngram >= 1 and num_workers >= 0")


def _already_done(output: Path, manifest: Manifest) -> bool:
    """Same inputs and config (worker count aside) as the manifest beside an existing output."""
    previous = read_manifest(output)
    if not output.is_file() or previous is None:
        return False
    same_config = {k: v for k, v in previous["config"].items() if k != "num_workers"} == {
        k: v for k, v in manifest.config.items() if k != "num_workers"
    }
    return same_config and previous["inputs"] == manifest.inputs


def _progress_total(files: list[tuple[Path, str]]) -> float | None:
    if any(f.name.endswith(".gz") or f.suffix == ".parquet" for f, _ in files):
        return None  # compressed sizes say nothing of the text inside
    return sum(f.stat().st_size for f, _ in files) / 1e6


def run(cfg: SegmentConfig) -> Path:
    check_config(cfg)
    output = Path(cfg.output)
    files = expand_inputs(cfg.input)
    manifest = Manifest("segment", to_dict(cfg))
    for raw in cfg.input:
        manifest.add_input(raw)
    if _already_done(output, manifest):
        console.console.print(
            f"segment: {output} is up to date with its inputs and config; skipped"
        )
        return output
    workers = cfg.num_workers or os.cpu_count() or 1
    params = CutParams(
        cfg.min_chars,
        cfg.max_chars,
        cfg.repetition_ngram,
        cfg.repetition_threshold,
        cfg.num_perm,
        cfg.shingle_size,
    )
    quarantine = Quarantine(output.with_name(output.name + ".quarantine.jsonl"))
    quarantine.path.unlink(missing_ok=True)  # a stale one from an earlier run would mislead
    reading, dedup, chrome = Reading(), Deduper(cfg.near_dup_threshold, cfg.num_perm), 0
    bar = console.progress("MB", extra=[TextColumn("{task.fields[docs]:,} docs")])
    try:
        with AtomicWriter(output) as writer, bar:
            task = bar.add_task("segment", total=_progress_total(files), docs=0)
            done = 0
            batches = _batches(documents(files, cfg, reading, quarantine), reading)
            for results in _results(batches, params, workers):
                for result in results:
                    chrome += result.chrome
                    manifest.rejected.update(result.rejected)
                    for seg, key, hashvalues in result.segments:
                        reason = dedup.check(key, hashvalues)
                        if reason:
                            manifest.reject(reason)
                        else:
                            writer.write_line(json.dumps(seg.__dict__, ensure_ascii=False))
                done += len(results)
                bar.update(task, completed=reading.bytes / 1e6, docs=done)
    finally:
        quarantine.close()
    manifest.counts.update(
        files=reading.files,
        documents=reading.docs,
        bytes=reading.bytes,
        bad_lines=reading.bad,
        chrome_elements_removed=chrome,
        written=writer.count,
    )
    if quarantine.count:
        manifest.extra["quarantine"] = str(quarantine.path)
    manifest.write(output)
    _summary(manifest, workers)
    return output


def _summary(manifest: Manifest, workers: int) -> None:
    counts, wall = manifest.counts, time.time() - manifest.started
    rows: list[tuple[Any, ...]] = [
        ("files", counts["files"]),
        ("documents", counts["documents"]),
        ("malformed dump lines (quarantined)", counts["bad_lines"]),
        ("page chrome elements removed", counts["chrome_elements_removed"]),
    ]
    rows += [(f"rejected: {reason}", manifest.rejected.get(reason, 0)) for reason in REASONS]
    rows += [
        ("segments written", counts["written"]),
        ("MB read", counts["bytes"] / 1e6),
        ("workers", workers),
        ("MB/s", counts["bytes"] / 1e6 / max(wall, 1e-9)),
    ]
    console.show(console.summary_table("segment", rows))
