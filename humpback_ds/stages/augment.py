"""Self-augmentation (paper §2.2): the backward model writes one candidate instruction per segment.

Each segment's text goes into the backward prompt; the generated text is the candidate instruction
and the segment text its output. A candidate is dropped, with its reason counted, when the
instruction is
- empty: nothing but whitespace was generated;
- overlong: longer than `max_instruction_chars`;
- too long for the model: the prompt fills the model's context (nothing generated);
- a copy of the text: at least COPY_OVERLAP of its word trigrams occur in the segment (an
  instruction of one or two words: when it occurs there verbatim). The backward model then echoed
  the segment (a heading, its first sentence) instead of asking for it.
Runs on every rank of the launcher; see humpback_ds.generator for replicas and exactly-once output.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from humpback_ds import console, dist, prompts
from humpback_ds.config import AugmentConfig, ConfigError, to_dict
from humpback_ds.generator import (
    Generator,
    Job,
    PartStore,
    fingerprint,
    read_unique,
    record_seed,
    run_jobs,
)
from humpback_ds.manifest import Manifest
from humpback_ds.records import Candidate, Segment

# Share of an instruction's word trigrams found in its segment from which it counts as a copy.
COPY_OVERLAP = 0.8

_WORD = re.compile(r"\w+")


def _trigrams(words: list[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + 3]) for i in range(len(words) - 2)}


def is_copy(instruction: str, text: str) -> bool:
    """The instruction repeats the segment rather than asking for it (see the module docstring)."""
    words = _WORD.findall(instruction.lower())
    text_words = _WORD.findall(text.lower())
    if not words:
        return False
    if len(words) < 3:
        joined = " ".join(text_words)
        return f" {' '.join(words)} " in f" {joined} "
    grams = _trigrams(words)
    return len(grams & _trigrams(text_words)) >= COPY_OVERLAP * len(grams)


def drop_reason(instruction: str, text: str, max_chars: int) -> str:
    """Why a generated instruction is not a candidate ("" when it is one)."""
    if not instruction.strip():
        return "empty"
    if len(instruction) > max_chars:
        return "overlong"
    if is_copy(instruction, text):
        return "copy of the text"
    return ""


def model_inputs(model: str) -> list[Path]:
    """The files that identify a checkpoint cheaply: its config and, when present, its manifest."""
    path = Path(model)
    return [p for p in (path / "config.json", path / "manifest.json") if p.is_file()]


def decoding(cfg: AugmentConfig) -> dict[str, Any]:
    if cfg.greedy:
        return {"greedy": True, "max_new_tokens": cfg.max_new_tokens}
    return {
        "greedy": False,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "max_new_tokens": cfg.max_new_tokens,
    }


def _entry(cfg: AugmentConfig, seg: Segment, text: str, seed: int) -> dict[str, Any]:
    reason = drop_reason(text, seg.text, cfg.max_instruction_chars)
    if reason:  # the text stays in the part file for inspection
        return {"id": seg.id, "record": None, "reason": reason, "text": text}
    lineage = {"segment_id": seg.id, "model": cfg.model, "decoding": decoding(cfg), "seed": seed}
    cand = Candidate(
        id=seg.id, segment_id=seg.id, instruction=text, output=seg.text, lineage=lineage
    )
    return {"id": seg.id, "record": to_dict(cand), "reason": ""}


def run(cfg: AugmentConfig) -> Path:
    if Path(cfg.output).resolve() == Path(cfg.segments).resolve():
        raise ConfigError(f"augment: --output {cfg.output} would overwrite --segments")
    segments = read_unique(cfg.segments, Segment, cfg.output, cfg.max_bad_fraction)
    gen = Generator(cfg)
    by_id = {s.id: s for s in segments}
    inputs = [Path(cfg.segments), *model_inputs(cfg.model)]
    store = PartStore(cfg.output, gen.replica, fingerprint(cfg, inputs))

    def make_job(seg: Segment) -> Job | dict[str, Any]:
        prompt = gen.encode(prompts.backward_prompt(seg.text))
        if not gen.fits(prompt):
            return {"id": seg.id, "record": None, "reason": "too long for the model"}
        return Job(seg.id, [prompt], seeds=[record_seed(cfg.seed, seg.id)])

    def work(batch: list[Job]) -> list[dict[str, Any]]:
        texts = gen.generate(batch, cfg.max_new_tokens)
        return [
            _entry(cfg, by_id[j.id], t[0], j.seeds[0]) for j, t in zip(batch, texts, strict=True)
        ]

    resumed = run_jobs(gen, store, segments, make_job, work, cfg.max_new_tokens, "seg")
    if dist.is_main():
        manifest = Manifest("augment", to_dict(cfg))
        for p in inputs:
            manifest.add_input(p)
        written, reasons = store.merge()
        manifest.counts.update(
            {"segments": len(segments), "candidates": written, "resumed": resumed}
        )
        manifest.rejected.update(reasons)
        manifest.write(cfg.output)
        rows = [(k, v) for k, v in manifest.counts.items()]
        rows += [(f"dropped: {k}", v) for k, v in sorted(reasons.items())]
        console.show(console.summary_table("augment", rows))
    return Path(cfg.output)
