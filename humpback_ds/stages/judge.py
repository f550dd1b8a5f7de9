"""A local pairwise judge: which of two answers is better, asked in both orders (AlpacaEval-style).

A (`--outputs`, the model under test) and B (`--reference`) are alpaca_eval outputs files, matched
by instruction. For every instruction the judge model (any HF checkpoint) sees the judge prompt
twice, A shown as (1) then B shown as (1), so that a preference for a position cancels out.
- logprob (default): one forward pass per order over the prompt + "Better answer: ("; the whole
  continuations "1" and "2" are scored; the margin logP("1") - logP("2") of each order gives
  P(A better) = sigmoid((margin_A_first - margin_B_first) / 2) (humpback_ds.winrate).
- generate: a sampled verdict per order, parsed for "(1)" / "(2)"; each order gives A 1, 0 or
  0.5 (unparsed) and the two are averaged: orders that disagree make a draw.
When both answers are the same text the two orders are the same prompt, asked once. Answers too
long for the judge's context are cut to fit (in tokens, marked " [...]") and counted.
Per-prompt records go to `--output` (JSONL); the win rate (alpaca_eval's definition: draws count
half, with its standard error) and the agreement between the two orders go to its manifest.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from humpback_ds import console, dist, prompts, winrate
from humpback_ds.config import JudgeConfig
from humpback_ds.generator import Generator, Job, record_seed
from humpback_ds.parts import (
    PartStore,
    open_store,
    part_line,
    refuse_overwrite,
    run_jobs,
    stage_manifest,
)
from humpback_ds.records import AtomicWriter, DataError
from humpback_ds.stages.answer import read_prompts

TRUNCATED = " [...]"  # marks an answer cut to fit the judge's context
CONTEXT_MARGIN = 8  # tokens kept free beyond the prompt (and generate mode's max_new_tokens)
ORDERS = ("a_first", "b_first")
_VERDICT = re.compile(r"better answer\s*:?\s*\(?\s*([12])\s*\)?", re.IGNORECASE)
_PAREN = re.compile(r"\(([12])\)")


def parse_verdict(text: str) -> int | None:
    """1 or 2 from a sampled verdict: the last "Better answer: (N)", else the only "(N)" named."""
    found = _VERDICT.findall(text)
    if found:
        return int(found[-1])
    named = set(_PAREN.findall(text))
    return int(named.pop()) if len(named) == 1 else None


@dataclass(frozen=True)
class Pair:
    id: str
    instruction: str
    output_a: str
    output_b: str
    generator_a: str
    generator_b: str


@dataclass(frozen=True)
class Side:
    """One order of one pair: the unit of work (id "<pair id>/<order>")."""

    id: str
    prompt: str


def match(outputs: str | Path, reference: str | Path) -> list[Pair]:
    """Pairs in the order of `outputs`; an instruction present in one file only is an error."""
    a = {o["instruction"]: o for o in read_prompts(outputs, need_output=True)}
    b = {o["instruction"]: o for o in read_prompts(reference, need_output=True)}
    only_a, only_b = [i for i in a if i not in b], [i for i in b if i not in a]
    if only_a or only_b:

        def show(xs: list[str]) -> str:
            return "; ".join(repr(x[:80]) for x in xs[:5]) + (" ..." if len(xs) > 5 else "")

        raise DataError(
            f"judge: the two files must answer the same instructions. {len(only_a)} only in "
            f"{outputs}: {show(only_a) or '-'}; {len(only_b)} only in {reference}: {show(only_b) or '-'}. "
            "Answer the same prompts file with both models (humpback-ds answer --prompts ...)."
        )
    width = max(6, len(str(len(a))))
    return [
        Pair(
            f"{k:0{width}d}",
            i,
            a[i]["output"],
            b[i]["output"],
            str(a[i].get("generator") or Path(outputs).parent.name),
            str(b[i].get("generator") or Path(reference).parent.name),
        )
        for k, i in enumerate(a)
    ]


def sides(pairs: list[Pair]) -> list[Side]:
    """Both orders of every pair; when both answers are equal the two orders are one prompt."""
    out = []
    for p in pairs:
        out.append(
            Side(f"{p.id}/a_first", prompts.judge_prompt(p.instruction, p.output_a, p.output_b))
        )
        if p.output_a != p.output_b:
            out.append(
                Side(f"{p.id}/b_first", prompts.judge_prompt(p.instruction, p.output_b, p.output_a))
            )
    return out


def _cut(gen: Generator, text: str, room: int) -> str:
    ids = gen.tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= room else gen.tokenizer.decode(ids[:room]) + TRUNCATED


def fit(gen: Generator, pairs: list[Pair], reserve: int) -> tuple[list[Pair], int]:
    """Answers cut (in tokens, both to the same room) so that every judge prompt, plus `reserve`
    tokens, fits the judge model's context; returns the pairs and how many answers were cut."""
    limit = getattr(gen.model.config, "max_position_embeddings", None)
    if not limit:
        return pairs, 0
    out, cut = [], 0
    for p in pairs:
        frame = len(
            gen.encode(f"{prompts.judge_prompt(p.instruction, '', '')} {prompts.JUDGE_PREFIX}1")
        )
        room = (limit - frame - reserve) // 2
        if room < 16:
            raise DataError(
                f"judge: the instruction {p.instruction[:80]!r} leaves no room for the "
                f"answers in the judge's {limit}-token context; use a longer-context judge"
            )
        a, b = _cut(gen, p.output_a, room), _cut(gen, p.output_b, room)
        cut += (a != p.output_a) + (b != p.output_b)
        out.append(dataclasses.replace(p, output_a=a, output_b=b))
    return out, cut


def combine(
    pair: Pair, mode: str, a_first: dict[str, Any], b_first: dict[str, Any]
) -> dict[str, Any]:
    """The per-prompt record from the two orders' results."""
    rec: dict[str, Any] = {
        "id": pair.id,
        "instruction": pair.instruction,
        "generator_a": pair.generator_a,
        "generator_b": pair.generator_b,
        "output_a": pair.output_a,
        "output_b": pair.output_b,
        "mode": mode,
    }
    if mode == "logprob":
        m1 = a_first["logp"][0] - a_first["logp"][1]  # > 0 favours (1) = A
        m2 = b_first["logp"][0] - b_first["logp"][1]  # > 0 favours (1) = B
        p_first, p_second = winrate.sigmoid(m1), winrate.sigmoid(-m2)
        p_a = winrate.preference_from_margins(m1, m2)
        rec.update(logp_a_first=a_first["logp"], logp_b_first=b_first["logp"])
    else:
        v1, v2 = a_first["verdict"], b_first["verdict"]
        p_first = {1: 1.0, 2: 0.0, None: 0.5}[v1]  # A was (1)
        p_second = {1: 0.0, 2: 1.0, None: 0.5}[v2]  # A was (2)
        p_a = winrate.preference_from_verdicts(v1, v2)
        rec.update(
            text_a_first=a_first["text"],
            text_b_first=b_first["text"],
            verdict_a_first=v1,
            verdict_b_first=v2,
        )
    rec.update(
        p_a_first=p_first,
        p_a_second=p_second,
        p_a=p_a,
        preference=winrate.to_alpaca(p_a),
        verdict=winrate.verdict(p_a),
    )
    return rec


def _worker(cfg: JudgeConfig, gen: Generator, by_id: dict[str, Side]) -> tuple[Any, Any, int]:
    """(make_job, work, new tokens per row) of the chosen mode."""
    if cfg.mode == "logprob":

        def make_job(s: Side) -> Job:
            return gen.choice_job(s.id, f"{s.prompt} {prompts.JUDGE_PREFIX}", prompts.JUDGE_CHOICES)

        def work(batch: list[Job]) -> list[dict[str, Any]]:
            return [
                part_line(j.id, {"logp": lp}) for j, lp in zip(batch, gen.score(batch), strict=True)
            ]

        return make_job, work, 0

    def make_job(s: Side) -> Job:  # type: ignore[no-redef]
        return Job(s.id, [gen.encode(s.prompt)], seeds=[record_seed(cfg.seed, s.id)])

    def work(batch: list[Job]) -> list[dict[str, Any]]:  # type: ignore[no-redef]
        texts = gen.generate(batch, cfg.max_new_tokens)
        return [
            part_line(j.id, {"text": t[0], "verdict": parse_verdict(t[0])})
            for j, t in zip(batch, texts, strict=True)
        ]

    return make_job, work, cfg.max_new_tokens


def run(cfg: JudgeConfig) -> Path:
    refuse_overwrite("judge", cfg.output, outputs=cfg.outputs, reference=cfg.reference)
    pairs = match(cfg.outputs, cfg.reference)
    gen = Generator(cfg)
    reserve = CONTEXT_MARGIN + (cfg.max_new_tokens if cfg.mode == "generate" else 0)
    pairs, cut = fit(gen, pairs, reserve)
    work_items = sides(pairs)
    store, inputs = open_store(cfg, gen.replica, cfg.outputs, cfg.reference)
    make_job, work, new_tokens = _worker(cfg, gen, {s.id: s for s in work_items})
    resumed = run_jobs(gen, store, work_items, make_job, work, new_tokens, "side")
    if dist.is_main():
        _finish(cfg, store, pairs, inputs, {"resumed": resumed, "answers_cut_to_fit": cut})
    return Path(cfg.output)


def _finish(
    cfg: JudgeConfig,
    store: PartStore,
    pairs: list[Pair],
    inputs: list[Path],
    counts: dict[str, int],
) -> None:
    """Per-prompt records from both orders, the win rate and agreement into the manifest (rank 0)."""
    done = {e["id"]: e["record"] for e in store.entries()}
    records = []
    for p in pairs:
        first = done[f"{p.id}/a_first"]
        records.append(combine(p, cfg.mode, first, done.get(f"{p.id}/b_first", first)))
    with AtomicWriter(cfg.output) as w:
        for rec in records:
            w.write_line(json.dumps(rec, ensure_ascii=False))
    result = winrate.win_rate([r["preference"] for r in records])
    agree = winrate.agreement([r["p_a_first"] for r in records], [r["p_a_second"] for r in records])
    unparsed = sum(
        (r.get("verdict_a_first", 0) is None) + (r.get("verdict_b_first", 0) is None)
        for r in records
    )
    manifest = stage_manifest("judge", cfg, inputs)
    manifest.counts.update(
        {
            "pairs": len(records),
            "written": w.count,
            "judge_calls": len(done),
            "unparsed_verdicts": unparsed,
            **counts,
        }
    )
    a, b = pairs[0].generator_a, pairs[0].generator_b
    manifest.extra.update(
        win_rate=result.to_dict(),
        agreement=agree,
        generator_a=a,
        generator_b=b,
        judge_template=prompts.JUDGE_TEMPLATE,
    )
    manifest.write(cfg.output)
    rows = [
        (f"win rate of {a} vs {b}", f"{result.win_rate:.2f} ± {result.standard_error:.2f}"),
        ("discrete win rate", result.discrete_win_rate),
        ("wins / losses / draws", f"{result.n_wins} / {result.n_wins_base} / {result.n_draws}"),
        ("agreement of the two orders", agree),
        *manifest.counts.items(),
    ]
    console.show(console.summary_table(f"judge -> {cfg.output}", rows))
