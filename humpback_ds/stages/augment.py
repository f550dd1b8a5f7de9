"""Self-augmentation (paper §2.2): the backward model writes one candidate instruction per segment.

Each segment's text goes into the backward prompt; the generated text is the candidate instruction
and the segment text its output. A candidate is dropped, with its reason counted, when the
instruction is
- empty: nothing but whitespace was generated;
- overlong: longer than `max_instruction_chars`;
- too long for the model: the prompt fills the model's context (nothing generated);
- a copy of the text: at least `copy_overlap` of its word trigrams occur in the segment (an
  instruction of one or two words: when it occurs there verbatim). The backward model then echoed
  the segment (a heading, its first sentence) instead of asking for it.
Runs on every rank of the launcher; see humpback_ds.parts for replicas and exactly-once output.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from humpback_ds import console, dist, prompts
from humpback_ds.config import AugmentConfig, to_dict
from humpback_ds.generator import Generator, Job, record_seed
from humpback_ds.parts import (
    open_store,
    part_line,
    read_unique,
    refuse_overwrite,
    run_jobs,
    stage_manifest,
)
from humpback_ds.records import Candidate, Segment

_WORD = re.compile(r"\w+")


def _trigrams(words: list[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + 3]) for i in range(len(words) - 2)}


def is_copy(instruction: str, text: str, overlap: float) -> bool:
    """The instruction repeats the segment rather than asking for it: at least `overlap` of its
    word trigrams occur in the text (see the module docstring)."""
    words = _WORD.findall(instruction.lower())
    text_words = _WORD.findall(text.lower())
    if not words:
        return False
    if len(words) < 3:
        joined = " ".join(text_words)
        return f" {' '.join(words)} " in f" {joined} "
    grams = _trigrams(words)
    return len(grams & _trigrams(text_words)) >= overlap * len(grams)


def drop_reason(instruction: str, text: str, max_chars: int, overlap: float) -> str:
    """Why a generated instruction is not a candidate ("" when it is one)."""
    if not instruction.strip():
        return "empty"
    if len(instruction) > max_chars:
        return "overlong"
    if is_copy(instruction, text, overlap):
        return "copy of the text"
    return ""


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
    reason = drop_reason(text, seg.text, cfg.max_instruction_chars, cfg.copy_overlap)
    if reason:  # the text stays in the part file for inspection
        return {**part_line(seg.id, None, reason), "text": text}
    lineage = {"segment_id": seg.id, "model": cfg.model, "decoding": decoding(cfg), "seed": seed}
    cand = Candidate(
        id=seg.id, segment_id=seg.id, instruction=text, output=seg.text, lineage=lineage
    )
    return part_line(seg.id, to_dict(cand))


def run(cfg: AugmentConfig) -> Path:
    refuse_overwrite("augment", cfg.output, segments=cfg.segments)
    segments = read_unique(cfg.segments, Segment, cfg.output, cfg.max_bad_fraction)
    gen = Generator(cfg)
    by_id = {s.id: s for s in segments}
    store, inputs = open_store(cfg, gen.replica, cfg.segments)

    def make_job(seg: Segment) -> Job | dict[str, Any]:
        prompt = gen.encode(prompts.backward_prompt(seg.text))
        if not gen.fits(prompt):
            return part_line(seg.id, None, "too long for the model")
        return Job(seg.id, [prompt], seeds=[record_seed(cfg.seed, seg.id)])

    def work(batch: list[Job]) -> list[dict[str, Any]]:
        texts = gen.generate(batch, cfg.max_new_tokens)
        return [
            _entry(cfg, by_id[j.id], t[0], j.seeds[0]) for j, t in zip(batch, texts, strict=True)
        ]

    resumed = run_jobs(gen, store, segments, make_job, work, cfg.max_new_tokens, "seg")
    if dist.is_main():
        manifest = stage_manifest("augment", cfg, inputs)
        written, reasons = store.merge()
        manifest.counts.update(
            {
                "segments": len(segments),
                "candidates": written,
                "written": written,
                "resumed": resumed,
            }
        )
        manifest.rejected.update(reasons)
        manifest.write(cfg.output)
        rows = [(k, v) for k, v in manifest.counts.items()]
        rows += [(f"dropped: {k}", v) for k, v in sorted(reasons.items())]
        console.show(console.summary_table("augment", rows))
    return Path(cfg.output)
