"""Selection (paper §2.2, §2.3): keep candidates scored >= k, tag them, mix with the tagged seed.

A candidate's value is its `score` (the argmax in logprob mode, the mean of parsed samples in
generate mode), or its `expected` score with `use_expected` (logprob records; a generate record has
none and keeps its score). Unparsed candidates are never kept and are counted. With `top_n` the
best `top_n` of the kept are taken (higher value first, ties by id). Augmented instructions get
AUGMENTED_TAG and seed instructions SEED_TAG (prompts.with_tag). The output holds the seed pairs in
their file order, then the kept candidates by id: deterministic, the trainer shuffles.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from humpback_ds import console, dist, prompts
from humpback_ds.config import ConfigError, SelectConfig, to_dict
from humpback_ds.manifest import Manifest
from humpback_ds.records import (
    DataError,
    Pair,
    Quarantine,
    ReadStats,
    Scored,
    load_records,
    write_records,
)


def value(record: Scored, use_expected: bool) -> float | None:
    if use_expected and record.expected is not None:
        return record.expected
    return record.score


def choose(scored: list[Scored], cfg: SelectConfig) -> tuple[list[Scored], Counter]:
    """The kept candidates, best first, and the counts of why the others were not kept."""
    why: Counter = Counter()
    passing: list[tuple[float, Scored]] = []
    for r in scored:
        v = value(r, cfg.use_expected)
        if v is None:
            why["unparsed"] += 1
        elif v < cfg.threshold:
            why["below threshold"] += 1
        else:
            passing.append((v, r))
    passing.sort(key=lambda vr: (-vr[0], vr[1].id))
    if cfg.top_n and len(passing) > cfg.top_n:
        why["over top_n"] += len(passing) - cfg.top_n
        passing = passing[: cfg.top_n]
    return [r for _, r in passing], why


def to_pairs(seed: list[Pair], kept: list[Scored], use_expected: bool) -> list[Pair]:
    """Seed pairs tagged SEED_TAG, then kept candidates (by id) tagged AUGMENTED_TAG."""
    out = [
        Pair(
            id=p.id,
            instruction=prompts.with_tag(p.instruction, prompts.SEED_TAG),
            output=p.output,
            source="seed",
            meta=p.meta,
        )
        for p in seed
    ]
    for r in sorted(kept, key=lambda r: r.id):
        meta = {"score": value(r, use_expected), "mode": r.mode, "segment_id": r.segment_id}
        out.append(
            Pair(
                id=r.id,
                instruction=prompts.with_tag(r.instruction, prompts.AUGMENTED_TAG),
                output=r.output,
                source="augmented",
                meta=meta,
            )
        )
    ids = Counter(p.id for p in out)
    clash = sorted(i for i, n in ids.items() if n > 1)
    if clash:
        raise DataError(
            f"ids {clash[:5]} occur in both the seed data and the scored candidates "
            "(or twice in one); give the seed pairs distinct ids"
        )
    return out


def histogram(scored: list[Scored], use_expected: bool) -> Counter:
    """Values rounded half up to 1..5, and 'unparsed'."""
    hist: Counter = Counter()
    for r in scored:
        v = value(r, use_expected)
        hist["unparsed" if v is None else str(math.floor(v + 0.5))] += 1
    return hist


def _length(rows: list[Any]) -> str:
    if not rows:
        return "-"
    ins = [len(r.instruction) for r in rows]
    out = [len(r.output) for r in rows]
    return f"{statistics.mean(ins):,.0f} / {statistics.mean(out):,.0f}"


def run(cfg: SelectConfig) -> Path:
    out = Path(cfg.output)
    if out.resolve() in (Path(cfg.scored).resolve(), Path(cfg.seed_data).resolve()):
        raise ConfigError(f"select: --output {out} would overwrite an input; choose another path")
    if cfg.top_n < 0:
        raise ConfigError(f"select: --top_n must be >= 0 (0 = no cap), got {cfg.top_n}")
    if not dist.is_main():  # a CPU stage: under a launcher, rank 0 does it
        return out
    quarantine = Quarantine(out.with_name(out.name + ".quarantine.jsonl"))
    quarantine.path.unlink(missing_ok=True)  # a stale file from an earlier run would mislead
    stats = [ReadStats(cfg.scored), ReadStats(cfg.seed_data)]
    try:
        scored = load_records(
            cfg.scored,
            Scored,
            quarantine=quarantine,
            stats=stats[0],
            max_bad_fraction=cfg.max_bad_fraction,
        )
        seed = load_records(
            cfg.seed_data,
            Pair,
            quarantine=quarantine,
            stats=stats[1],
            max_bad_fraction=cfg.max_bad_fraction,
        )
    finally:
        quarantine.close()
    kept, why = choose(scored, cfg)
    pairs = to_pairs(seed, kept, cfg.use_expected)
    write_records(out, pairs)
    manifest = Manifest("select", to_dict(cfg))
    manifest.add_input(cfg.scored)
    manifest.add_input(cfg.seed_data)
    hist = histogram(scored, cfg.use_expected)
    manifest.counts.update(
        {"scored": len(scored), "seed": len(seed), "kept": len(kept), "written": len(pairs)}
    )
    if stats[0].bad or stats[1].bad:
        manifest.counts["bad_lines"] = stats[0].bad + stats[1].bad
    manifest.rejected.update(why)
    manifest.extra["score_histogram"] = dict(sorted(hist.items()))
    manifest.write(out)
    rows: list[tuple[Any, ...]] = [(f"score {k}", hist[k]) for k in (*"12345", "unparsed")]
    rows += [(k, v) for k, v in manifest.counts.items()]
    rows += [(f"not kept: {k}", v) for k, v in sorted(why.items())]
    rows += [
        ("mean chars instruction / output: all", _length(scored)),
        ("mean chars instruction / output: kept", _length(kept)),
    ]
    console.show(console.summary_table(f"select (score >= {cfg.threshold})", rows))
    return out
