"""Seed stage: first turns of OpenAssistant oasst1 -> seed Pair records (METHOD.md 'The loop' 1).

Input: an oasst1 export in either published shape (the flat message table as .jsonl, .jsonl.gz or
.parquet, or the nested *.trees.jsonl(.gz) export), read by oasst.py. Both are streamed. In memory
stay only the accepted roots, their direct replies, replies whose parent has not been read yet, and
message ids (later prompter messages, duplicate check); later turns are counted
("later_turn_ignored") and dropped.

One pair per conversation tree, from its first turn only:
- The root must be a prompter message whose `lang` is `cfg.lang`, not deleted, not empty or
  whitespace, not failed by review (`review_result` false). Otherwise the tree is rejected as
  root_not_prompter, not_english (any language other than cfg.lang), prompt_deleted, prompt_empty
  or prompt_review_failed.
- A direct assistant reply is eligible unless deleted, empty or whitespace, or failed by review.
  Skipped replies are counted by reason (manifest "reply_skipped"). Prompter messages below the
  root are never a first-turn reply: they count as later turns.
- The best-ranked eligible reply is used (rank 0 is best; a tie goes to the smaller message id).
- Unranked replies (rank null): a ranked eligible reply always wins. With no ranked eligible reply,
  a single unranked one is used when `cfg.keep_unranked` (oasst1 leaves a lone reply unranked),
  else the tree is rejected as "unranked". Several unranked eligible replies carry no human
  preference: the tree is rejected as "unranked_ambiguous".
- No assistant reply at all: "no_reply". Replies but none eligible: their shared reason
  (deleted / empty / review_failed), or "no_eligible_reply" when the reasons differ. A tree line
  with a null prompt: "no_prompt". Tree rejections sum to trees read minus trees kept.

Sampling: kept pairs are sorted by tree id, `random.Random(cfg.seed).sample` draws
`cfg.num_examples` of them (all when fewer), and they are written sorted by tree id: the output
does not depend on the input's row order. Texts are copied verbatim.

Malformed lines (bad JSON, a missing field, a wrong type, a duplicate message id) are reported as
file:line (file:row for Parquet), copied to <output>.quarantine.jsonl and counted; more than
`cfg.max_bad_fraction` of them fails the stage. Of two messages with one id the first read wins.

Manifest: counts (lines_read, bad_lines, messages, trees_read, kept, written = sampled,
later_turn_ignored, orphan_replies = replies whose parent never appeared), rejected (trees by
reason), reply_skipped, format, and min/median/max characters of the written instructions/outputs.
"""

from __future__ import annotations

import json
import random
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from humpback_ds import console
from humpback_ds.config import ConfigError, SeedConfig, to_dict
from humpback_ds.manifest import Manifest
from humpback_ds.oasst import (
    FORMATS,
    Message,
    detect_shape,
    parquet_rows,
    parse_message,
    tree_messages,
)
from humpback_ds.records import (
    DataError,
    Pair,
    Quarantine,
    ReadStats,
    check_bad_fraction_early,
    iter_json_lines,
    reject,
    write_records,
)


def root_reason(m: Message, lang: str) -> str | None:
    if m.role != "prompter":
        return "root_not_prompter"
    if (m.lang or "").lower() != lang.lower():
        return "not_english"
    if m.deleted:
        return "prompt_deleted"
    if not m.text.strip():
        return "prompt_empty"
    return "prompt_review_failed" if m.review_result is False else None


def reply_reason(m: Message) -> str | None:
    if m.deleted:
        return "deleted"
    if not m.text.strip():
        return "empty"
    return "review_failed" if m.review_result is False else None


def choose(replies: list[Message], keep_unranked: bool, skipped: Counter) -> Message | str:
    """The reply to use, or the tree's rejection reason (rules in the module docstring)."""
    if not replies:
        return "no_reply"
    reasons = [reply_reason(r) for r in replies]
    skipped.update(r for r in reasons if r)
    eligible = [r for r, why in zip(replies, reasons, strict=True) if why is None]
    if not eligible:
        return str(reasons[0]) if len(set(reasons)) == 1 else "no_eligible_reply"
    ranked = [r for r in eligible if r.rank is not None]
    if ranked:
        return min(ranked, key=lambda r: (r.rank, r.id))
    if len(eligible) > 1:
        return "unranked_ambiguous"
    return eligible[0] if keep_unranked else "unranked"


class FirstTurns:
    """Accepted roots and their direct replies, gathered from messages in any order."""

    def __init__(self, lang: str):
        self.lang = lang
        self.replies: dict[str, list[Message]] = {}  # accepted root id -> its direct replies
        self.roots: dict[str, Message] = {}
        self.closed: set[str] = set()  # roots rejected on their own: replies are dropped
        self.later: set[str] = set()  # non-root prompter messages: replies to them are later turns
        self.pending: dict[str, list[Message]] = defaultdict(list)  # parent not seen yet
        self.ids: set[str] = set()
        self.rejected: Counter = Counter()
        self.trees = self.messages = self.later_turn = 0

    def check_new(self, ids: list[str]) -> None:
        seen: set[str] = set()
        for i in ids:
            if i in self.ids or i in seen:
                raise ValueError(f"duplicate message_id {i!r:.60}")
            seen.add(i)

    def add(self, m: Message) -> None:
        self.ids.add(m.id)
        self.messages += 1
        if m.parent_id is None:
            self.trees += 1
            reason = root_reason(m, self.lang)
            if reason:
                self.rejected[reason] += 1
                self.closed.add(m.id)
            else:
                self.roots[m.id], self.replies[m.id] = m, []
        elif m.role == "prompter":
            self.later_turn += 1
            self.later.add(m.id)
        else:
            self._place(m)
        for waiting in self.pending.pop(m.id, []):
            self._place(waiting)

    def _place(self, m: Message) -> None:
        if m.parent_id in self.replies:
            self.replies[m.parent_id].append(m)
        elif m.parent_id in self.later:
            self.later_turn += 1
        elif m.parent_id not in self.closed:
            self.pending[str(m.parent_id)].append(m)

    def orphans(self) -> int:
        """Assistant messages whose parent never appeared."""
        return sum(len(v) for v in self.pending.values())

    def pairs(self, keep_unranked: bool, skipped: Counter) -> list[Pair]:
        out = []
        for root_id, replies in self.replies.items():
            root, best = self.roots[root_id], choose(replies, keep_unranked, skipped)
            if isinstance(best, str):
                self.rejected[best] += 1
                continue
            out.append(make_pair(root, best))
        return sorted(out, key=lambda p: p.id)


def make_pair(root: Message, reply: Message) -> Pair:
    meta = {"prompt_id": root.id, "reply_id": reply.id, "reply_rank": reply.rank, "lang": root.lang}
    return Pair(id=root.tree_id, instruction=root.text, output=reply.text, source="seed", meta=meta)


def sample_pairs(pairs: list[Pair], n: int, seed: int) -> list[Pair]:
    """n pairs drawn with a seeded RNG from the id-sorted list, returned sorted by id."""
    pairs = sorted(pairs, key=lambda p: p.id)
    if len(pairs) > n:
        pairs = sorted(random.Random(seed).sample(pairs, n), key=lambda p: p.id)
    return pairs


def read_export(
    path: Path,
    turns: FirstTurns,
    stats: ReadStats,
    q: Quarantine,
    cfg: SeedConfig,
    tick: Callable[[], None],
) -> str:
    """Feed every message of the export to `turns`; malformed lines go to the quarantine."""
    shape = detect_shape(path)
    if shape == "parquet":
        rows = parquet_rows(path, stats, cfg.max_bad_fraction)
    else:
        rows = iter_json_lines(path, stats, q, cfg.max_bad_fraction)
    for lineno, obj in rows:
        tick()
        try:
            if shape == "trees":
                messages = tree_messages(obj)
                if not messages:
                    turns.trees += 1
                    turns.rejected["no_prompt"] += 1
            else:
                messages = [parse_message(obj)]
            turns.check_new([m.id for m in messages])
        except ValueError as e:
            reject(stats, q, lineno, str(e), json.dumps(obj, ensure_ascii=False, default=str))
            check_bad_fraction_early(stats, cfg.max_bad_fraction)  # clearly the wrong file
            continue
        for m in messages:
            turns.add(m)
    return shape


def _check(cfg: SeedConfig, src: Path, out: Path) -> None:
    if cfg.num_examples < 1:
        raise ConfigError(f"seed: --num_examples must be >= 1, got {cfg.num_examples}")
    if not 0.0 <= cfg.max_bad_fraction <= 1.0:
        raise ConfigError(f"seed: --max_bad_fraction must be in [0, 1], got {cfg.max_bad_fraction}")
    if not src.is_file():
        raise DataError(f"{src}: no such file; --input takes {FORMATS}")
    if out.resolve() == src.resolve():
        raise ConfigError(f"seed: --output {out} would overwrite --input; choose another path")


def _lengths(texts: list[str]) -> dict[str, float]:
    sizes = [len(t) for t in texts]
    return {"min": min(sizes), "median": statistics.median(sizes), "max": max(sizes)}


def run(cfg: SeedConfig) -> Path:
    src, out = Path(cfg.input), Path(cfg.output)
    _check(cfg, src, out)
    manifest = Manifest("seed", to_dict(cfg))
    manifest.add_input(src)
    q = Quarantine(out.with_name(out.name + ".quarantine.jsonl"))
    q.path.unlink(missing_ok=True)  # a stale file from an earlier run would mislead
    turns, stats, skipped = FirstTurns(cfg.lang), ReadStats(str(src)), Counter()
    with console.progress("line") as bar:
        task = bar.add_task(f"seed: reading {src.name}", total=None)
        try:
            shape = read_export(src, turns, stats, q, cfg, lambda: bar.advance(task))
        finally:
            q.close()
    pairs = turns.pairs(cfg.keep_unranked, skipped)
    if not pairs:
        raise DataError(
            f"{src}: no first-turn pair survived (rejected trees: "
            f"{dict(turns.rejected)}); check --lang and the input file"
        )
    sample = sample_pairs(pairs, cfg.num_examples, cfg.seed)
    write_records(out, sample)
    manifest.counts.update(
        {
            "lines_read": stats.read,
            "bad_lines": stats.bad,
            "messages": turns.messages,
            "trees_read": turns.trees,
            "kept": len(pairs),
            "written": len(sample),
            "later_turn_ignored": turns.later_turn,
            "orphan_replies": turns.orphans(),
        }
    )
    manifest.rejected.update(turns.rejected)
    lengths = {
        "instruction_chars": _lengths([p.instruction for p in sample]),
        "output_chars": _lengths([p.output for p in sample]),
    }
    manifest.extra.update({"format": shape, "reply_skipped": dict(skipped), **lengths})
    manifest.write(out)
    _summary(manifest, lengths, q.path if stats.bad else None)
    return out


def _summary(manifest: Manifest, lengths: dict[str, dict[str, float]], qpath: Path | None) -> None:
    rows: list[tuple[Any, ...]] = [(k, v) for k, v in manifest.counts.items()]
    rows += [(f"rejected: {k}", v) for k, v in sorted(manifest.rejected.items())]
    rows += [(f"reply skipped: {k}", v) for k, v in sorted(manifest.extra["reply_skipped"].items())]
    for name, s in lengths.items():
        rows.append(
            (f"{name} min / median / max", f"{s['min']:,} / {s['median']:,.0f} / {s['max']:,}")
        )
    if qpath is not None:
        rows.append(("quarantine", str(qpath)))
    console.show(console.summary_table(f"seed ({manifest.extra['format']})", rows))
