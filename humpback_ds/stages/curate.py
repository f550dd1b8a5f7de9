"""Self-curation (paper §2.2, Table 19 prompt): a model rates every candidate on a 5-point scale.

Two modes (METHOD.md "Score parsing"), both recording what they did per candidate:
- generate (the paper): `num_samples` sampled rationales per candidate, each parsed for its LAST
  `Score: N` (prompts.parse_score); the score is the mean of the parsed samples. A candidate with
  no parsed sample is kept with `parsed=False`, `score=None` and the reasons, and counted.
- logprob (ours): one forward pass over the rating prompt + " Score:"; the log-probabilities of the
  whole continuations " 1" .. " 5" are normalised into P(1..5); `score` is the argmax (ties: the
  lower score), `expected` is sum_k k * P(k). Always parsed.
A candidate whose rating prompt does not fit the model's context is kept unparsed with that
reason, in either mode.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from humpback_ds import console, dist, prompts
from humpback_ds.config import ConfigError, CurateConfig, to_dict
from humpback_ds.generator import Generator, Job, record_seed
from humpback_ds.parts import (
    PartStore,
    open_store,
    part_line,
    read_unique,
    refuse_overwrite,
    run_jobs,
    stage_manifest,
)
from humpback_ds.records import Candidate, Scored, load_records

CHOICES = [f" {k}" for k in prompts.SCORES]


def normalise(logps: list[float]) -> list[float]:
    """Log-probabilities of the five continuations -> probabilities summing to 1."""
    top = max(logps)
    weights = [math.exp(lp - top) for lp in logps]
    total = sum(weights)
    return [w / total for w in weights]


def _scored(cand: Candidate, cfg: CurateConfig, **rating: Any) -> Scored:
    """`cand` with its rating by cfg.model (mode, score, parsed, ...)."""
    return Scored(
        id=cand.id,
        segment_id=cand.segment_id,
        instruction=cand.instruction,
        output=cand.output,
        model=cfg.model,
        **rating,
    )


def from_logprobs(cand: Candidate, cfg: CurateConfig, logps: list[float]) -> Scored:
    probs = normalise(logps)
    best = max(range(len(probs)), key=lambda i: (probs[i], -i))
    expected = sum(k * p for k, p in zip(prompts.SCORES, probs, strict=True))
    return _scored(
        cand,
        cfg,
        mode="logprob",
        score=float(prompts.SCORES[best]),
        parsed=True,
        probs=probs,
        expected=expected,
        lineage={"logprobs": logps},
    )


def from_samples(cand: Candidate, cfg: CurateConfig, texts: list[str], seeds: list[int]) -> Scored:
    parses = [prompts.parse_score(t) for t in texts]
    scores = [p.score for p in parses if p.score is not None]
    reasons = Counter(p.reason for p in parses if p.score is None)
    reason = "; ".join(f"{n}/{len(texts)} samples: {r}" for r, n in sorted(reasons.items()))
    decoding = {
        "greedy": cfg.greedy,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "max_new_tokens": cfg.max_new_tokens,
        "num_samples": cfg.num_samples,
    }
    return _scored(
        cand,
        cfg,
        mode="generate",
        score=sum(scores) / len(scores) if scores else None,
        parsed=bool(scores),
        reason=reason,
        raw=texts,
        lineage={"decoding": decoding, "seeds": seeds},
    )


def too_long(cand: Candidate, cfg: CurateConfig, positions: int) -> dict[str, Any]:
    """A candidate whose rating prompt does not fit the model: kept unparsed, with the reason."""
    s = _scored(
        cand,
        cfg,
        mode=cfg.mode,
        score=None,
        parsed=False,
        reason=f"rating prompt longer than the model's {positions} positions",
    )
    return part_line(s.id, to_dict(s))


def _worker(cfg: CurateConfig, gen: Generator, by_id: dict[str, Candidate]) -> tuple[Any, Any, int]:
    """(make_job, work, new tokens per row) of the chosen mode."""
    if cfg.mode == "logprob":

        def make_job(c: Candidate) -> Job | dict[str, Any]:
            job = gen.choice_job(c.id, prompts.score_prompt(c.instruction, c.output), CHOICES)
            return job if gen.fits(job.rows[0]) else too_long(c, cfg, gen.max_positions)

        def work(batch: list[Job]) -> list[dict[str, Any]]:
            scored = [
                from_logprobs(by_id[j.id], cfg, lp)
                for j, lp in zip(batch, gen.score(batch), strict=True)
            ]
            return [part_line(s.id, to_dict(s)) for s in scored]

        return make_job, work, 0

    def make_job(c: Candidate) -> Job | dict[str, Any]:  # type: ignore[no-redef]
        row = gen.encode(prompts.curation_prompt(c.instruction, c.output))
        if not gen.fits(row):
            return too_long(c, cfg, gen.max_positions)
        seeds = [record_seed(cfg.seed, f"{c.id}/{k}") for k in range(cfg.num_samples)]
        return Job(c.id, [row] * cfg.num_samples, seeds=seeds)

    def work(batch: list[Job]) -> list[dict[str, Any]]:  # type: ignore[no-redef]
        texts = gen.generate(batch, cfg.max_new_tokens)
        scored = [
            from_samples(by_id[j.id], cfg, t, j.seeds) for j, t in zip(batch, texts, strict=True)
        ]
        return [part_line(s.id, to_dict(s)) for s in scored]

    return make_job, work, cfg.max_new_tokens


def run(cfg: CurateConfig) -> Path:
    if cfg.num_samples < 1:
        raise ConfigError(f"curate: --num_samples must be >= 1, got {cfg.num_samples}")
    refuse_overwrite("curate", cfg.output, candidates=cfg.candidates)
    candidates = read_unique(cfg.candidates, Candidate, cfg.output, cfg.max_bad_fraction)
    gen = Generator(cfg)
    by_id = {c.id: c for c in candidates}
    store, inputs = open_store(cfg, gen.replica, cfg.candidates)
    make_job, work, new_tokens = _worker(cfg, gen, by_id)
    resumed = run_jobs(gen, store, candidates, make_job, work, new_tokens, "cand")
    if dist.is_main():
        _finish(cfg, store, inputs, len(candidates), resumed)
    return Path(cfg.output)


def _finish(
    cfg: CurateConfig, store: PartStore, inputs: list[Path], read: int, resumed: int
) -> None:
    manifest = stage_manifest("curate", cfg, inputs)
    written, _ = store.merge()
    scored = load_records(cfg.output, Scored)
    unparsed = Counter(s.reason for s in scored if not s.parsed)
    hist = Counter(math.floor(s.score + 0.5) for s in scored if s.score is not None)
    manifest.counts.update(
        {
            "candidates": read,
            "scored": written,
            "written": written,
            "parsed": written - sum(unparsed.values()),
            "unparsed": sum(unparsed.values()),
            "resumed": resumed,
        }
    )
    manifest.extra["unparsed_reasons"] = dict(unparsed)  # kept in the output, never dropped
    manifest.extra["score_histogram"] = {str(k): hist[k] for k in prompts.SCORES}
    manifest.write(cfg.output)
    rows: list[tuple[Any, ...]] = [(k, v) for k, v in manifest.counts.items()]
    rows += [(f"score {k}", hist[k]) for k in prompts.SCORES]
    rows += [(f"unparsed: {r}", n) for r, n in sorted(unparsed.items())]
    console.show(console.summary_table(f"curate ({cfg.mode})", rows))
