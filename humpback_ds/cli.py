"""`humpback-ds <stage> [--config RUN.toml] [--field=value ...]`: a dispatch table of stages.

Each stage is a config dataclass (humpback_ds.config) and a `run(cfg)` function. The run file's
table named after the stage (`[seed]`, `[tiny_model]`, ...) supplies values below the command line.
Under the `deepspeed` launcher the injected `--local_rank=N` is accepted and ignored (LOCAL_RANK is
read from the environment).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from humpback_ds import config as C
from humpback_ds.records import DataError

# name -> (module, function, config class, one-line description)
STAGES: dict[str, tuple[str, str, type, str]] = {
    "tiny-model": (
        "humpback_ds.modeling",
        "build_tiny_model",
        C.TinyModelConfig,
        "build a tiny LLaMA + SentencePiece tokenizer (tests, demo)",
    ),
    "seed": (
        "humpback_ds.stages.seed",
        "run",
        C.SeedConfig,
        "oasst1 export -> first-turn seed pairs",
    ),
    "segment": (
        "humpback_ds.stages.segment",
        "run",
        C.SegmentConfig,
        "web documents -> self-contained segments",
    ),
    "train": (
        "humpback_ds.stages.train",
        "run",
        C.TrainConfig,
        "ZeRO-3 fine-tuning: backward model, seed model m0, iteration models",
    ),
    "augment": (
        "humpback_ds.stages.augment",
        "run",
        C.AugmentConfig,
        "backward model writes one candidate instruction per segment",
    ),
    "curate": (
        "humpback_ds.stages.curate",
        "run",
        C.CurateConfig,
        "a model rates every candidate 1-5 (generate or logprob mode)",
    ),
    "select": (
        "humpback_ds.stages.select",
        "run",
        C.SelectConfig,
        "keep candidates scored >= k, tag, mix with the seed data",
    ),
    "answer": (
        "humpback_ds.stages.answer",
        "run",
        C.AnswerConfig,
        "answers for evaluation prompts (alpaca_eval format)",
    ),
    "judge": (
        "humpback_ds.stages.judge",
        "run",
        C.JudgeConfig,
        "local pairwise judge: win rate of A vs B with standard error",
    ),
    "report": (
        "humpback_ds.stages.report",
        "run",
        C.ReportConfig,
        "HTML + Markdown run report with plots",
    ),
}


PIPELINE = {
    "run": "the whole run from a run file: seed ... m{T}, then evaluation (finished steps are skipped)",
    "iterate": "one iteration T: curate with m{T-1}, select, train m{T} from the base model",
    "status": "what is done, running, pending in a run directory (--run_dir DIR)",
}


PIPELINE_USAGE = """usage:
  humpback-ds run --config RUN.toml [--force] [--steps a,b | --from STEP --until STEP] [--<run field>=v]
  humpback-ds iterate --config RUN.toml --iteration T [--force]
  humpback-ds status --run_dir DIR   (or --config RUN.toml)

The run file has a [run] table (the fields below) and one table per stage ([seed], [segment],
[train] with [train.backward] / [train.seed] / [train.iteration], [augment], [curate], [select],
[answer], [judge], [report]); launchers/demo.toml is a complete example. A finished step is skipped;
a changed one is refused unless --force, which re-runs it and the steps downstream of it."""


def _strip_local_rank(argv: list[str]) -> list[str]:
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg.startswith("--local_rank=") or arg.startswith("--local-rank="):
            continue
        if arg in ("--local_rank", "--local-rank") and i + 1 < len(argv):
            skip = True
            continue
        out.append(arg)
    return out


def _usage() -> str:
    lines = ["usage: humpback-ds <stage> [--config RUN.toml] [--field=value ...]", "", "stages:"]
    lines += [f"  {name:<12} {desc}" for name, (_, _, _, desc) in STAGES.items()]
    lines += ["", "pipeline:"] + [f"  {name:<12} {desc}" for name, desc in PIPELINE.items()]
    lines.append("\n`humpback-ds <stage> --help` lists a stage's options and defaults.")
    return "\n".join(lines)


def parse(stage: str, argv: list[str]) -> Any:
    """Build the stage's config from `--config RUN.toml` and the command-line overrides."""
    _, _, cls, _ = STAGES[stage]
    table: dict[str, Any] = {}
    toml_path = "run file"
    rest = []
    i = 0
    while i < len(argv):
        if argv[i] == "--config" and i + 1 < len(argv):
            toml_path = argv[i + 1]
            i += 2
        elif argv[i].startswith("--config="):
            toml_path = argv[i].split("=", 1)[1]
            i += 1
        else:
            rest.append(argv[i])
            i += 1
    if toml_path != "run file":
        table = C.load_toml(toml_path).get(stage.replace("-", "_"), {})
    return C.build(
        cls, toml_table=table, overrides=C.parse_overrides(cls, rest), toml_path=toml_path
    )


def main(argv: list[str] | None = None) -> int:
    argv = _strip_local_rank(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    stage, rest = argv[0], argv[1:]
    if stage in PIPELINE:
        from humpback_ds import pipeline

        if any(a in ("-h", "--help") for a in rest):
            print(f"humpback-ds {stage}: {PIPELINE[stage]}\n\n{PIPELINE_USAGE}\n")
            print(C.describe(C.RunConfig))
            return 0
        try:
            return pipeline.main(stage, rest)
        except (C.ConfigError, DataError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except pipeline.Preempted as e:
            print(f"stopped: {e}", file=sys.stderr)
            return pipeline.EXIT_PREEMPTED
    if stage not in STAGES:
        print(f"error: unknown stage '{stage}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func, cls, _ = STAGES[stage]
    if any(a in ("-h", "--help") for a in rest):
        print(C.describe(cls))
        return 0
    try:
        cfg = parse(stage, rest)
        getattr(importlib.import_module(module), func)(cfg)
    except C.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
