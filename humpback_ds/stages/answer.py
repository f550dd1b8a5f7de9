"""Answers for evaluation prompts, in the format `alpaca_eval` reads (paper §4.1 evaluation).

Each instruction gets the inference tag (`--tag`, default both tags, seed tag first: METHOD.md
"Tagging"), the `[INST] ... [/INST]` wrapper, and is answered with the paper's decoding (nucleus
sampling, T 0.7, top-p 0.9) by the DeepSpeed-Inference engine of humpback_ds.generator: tensor and
data parallel, exactly once across restarts. The output is a JSON list, in prompt order, of objects
with exactly the keys instruction, output, generator, dataset.

Prompts: a JSON list or a JSONL file; each item a string (the instruction) or an object with
"instruction" and optionally "dataset" (other keys are ignored, so an AlpacaEval-shaped file,
outputs included, works).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from humpback_ds import console, dist, prompts
from humpback_ds.config import AnswerConfig, ConfigError
from humpback_ds.generator import Generator, Job, record_seed
from humpback_ds.parts import (
    PartStore,
    open_store,
    part_line,
    refuse_overwrite,
    run_jobs,
    stage_manifest,
)
from humpback_ds.records import DataError, open_text, write_json

ALPACA_EVAL_KEYS = ("instruction", "output", "generator", "dataset")
DEFAULT_DATASET = "humpback-ds"  # the "dataset" of a prompt that names none


@dataclass(frozen=True)
class EvalPrompt:
    id: str  # position in the prompts file, zero-padded (ids sort in file order)
    instruction: str
    dataset: str = DEFAULT_DATASET


def _items(path: Path) -> list[tuple[str, Any]]:
    """(where, item) for each item of a JSON list, or of each line of a JSONL file."""
    with open_text(path) as fh:
        text = fh.read()
    if text.lstrip().startswith("["):  # a JSON list (whatever the file is called)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON list at line {e.lineno}: {e.msg}") from None
        return [(f"{path}: item {i}", item) for i, item in enumerate(data)]
    items = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                items.append((f"{path}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}:{lineno}: invalid JSON ({e.msg}); expected a JSON list or one JSON "
                    "value per line"
                ) from None
    return items


def read_prompts(path: str | Path, *, need_output: bool = False) -> list[dict[str, Any]]:
    """Items of an instruction file as dicts with at least "instruction" (and "output" if needed).

    Strings become {"instruction": s}. Repeated instructions are refused: alpaca_eval and the judge
    match answers by instruction.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    out, seen = [], {}
    for where, item in _items(path):
        obj = {"instruction": item} if isinstance(item, str) else item
        if not isinstance(obj, dict) or not isinstance(obj.get("instruction"), str):
            raise DataError(f'{where}: expected a string or an object with an "instruction" string')
        if not obj["instruction"].strip():
            raise DataError(f"{where}: empty instruction")
        if need_output and not isinstance(obj.get("output"), str):
            raise DataError(f'{where}: expected an "output" string (an alpaca_eval outputs file)')
        if obj["instruction"] in seen:
            raise DataError(
                f"{where}: repeats the instruction of {seen[obj['instruction']]}; "
                "answers are matched by instruction, so each must be unique"
            )
        seen[obj["instruction"]] = where
        out.append(obj)
    if not out:
        raise DataError(f"{path}: no instructions")
    return out


def load_eval_prompts(path: str | Path) -> list[EvalPrompt]:
    items = read_prompts(path)
    width = max(6, len(str(len(items))))
    return [
        EvalPrompt(f"{i:0{width}d}", o["instruction"], str(o.get("dataset") or DEFAULT_DATASET))
        for i, o in enumerate(items)
    ]


def build_prompt(instruction: str, tag: str) -> str:
    """The text the model continues: the instruction, its inference tag, the [INST] wrapper."""
    if tag not in prompts.TAGS_BY_NAME:
        raise ConfigError(
            f"answer: --tag must be one of {sorted(prompts.TAGS_BY_NAME)}, got {tag!r}"
        )
    return prompts.forward_prompt(prompts.with_tag(instruction, prompts.TAGS_BY_NAME[tag]))


def generator_name(cfg: AnswerConfig) -> str:
    return cfg.generator or Path(cfg.model).resolve().name


def _write(cfg: AnswerConfig, store: PartStore, items: list[EvalPrompt]) -> list[dict[str, str]]:
    """The alpaca_eval list in prompt order, from the finished part files (rank 0)."""
    done = {e["id"]: e["record"] for e in store.entries()}
    missing = [p.id for p in items if p.id not in done]
    assert not missing, f"prompts {missing[:5]} were not answered"
    rows = [{k: done[p.id][k] for k in ALPACA_EVAL_KEYS} for p in items]
    write_json(cfg.output, rows)
    return rows


def run(cfg: AnswerConfig) -> Path:
    refuse_overwrite("answer", cfg.output, prompts=cfg.prompts)
    items = load_eval_prompts(cfg.prompts)
    name = generator_name(cfg)
    gen = Generator(cfg)
    by_id = {p.id: p for p in items}
    store, inputs = open_store(cfg, gen.replica, cfg.prompts)

    def make_job(p: EvalPrompt) -> Job:
        ids = gen.encode(build_prompt(p.instruction, cfg.tag))
        return Job(p.id, [ids], seeds=[record_seed(cfg.seed, p.id)])

    def work(batch: list[Job]) -> list[dict[str, Any]]:
        texts = gen.generate(batch, cfg.max_new_tokens)
        rows = []
        for job, text in zip(batch, texts, strict=True):
            p = by_id[job.id]
            rec = {
                "instruction": p.instruction,
                "output": text[0],
                "generator": name,
                "dataset": p.dataset,
            }
            rows.append(part_line(job.id, rec))
        return rows

    resumed = run_jobs(gen, store, items, make_job, work, cfg.max_new_tokens, "prompt")
    if dist.is_main():
        rows = _write(cfg, store, items)
        manifest = stage_manifest("answer", cfg, inputs)
        empty = sum(not r["output"].strip() for r in rows)
        manifest.counts.update(
            {
                "prompts": len(items),
                "answers": len(rows),
                "written": len(rows),
                "empty": empty,
                "resumed": resumed,
            }
        )
        manifest.extra.update(
            {"generator": name, "prompt_template": build_prompt("{instruction}", cfg.tag)}
        )
        manifest.write(cfg.output)
        mean_chars = sum(len(r["output"]) for r in rows) / len(rows)
        table = [*manifest.counts.items(), ("generator", name), ("mean answer chars", mean_chars)]
        console.show(console.summary_table(f"answer -> {cfg.output}", table))
    return Path(cfg.output)
