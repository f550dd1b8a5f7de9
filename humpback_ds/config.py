"""Stage configuration: one frozen dataclass per stage, defaults = the paper's settings.

Precedence: dataclass defaults < the stage's table in a TOML run file < `--field=value` overrides.
Unknown keys are errors that list the valid ones. The `help` of each field is the CLI help.
Section references are to Li et al. 2023, "Self-Alignment with Instruction Backtranslation"
(see ../shared/METHOD.md for the facts this project reproduces).
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A user's configuration mistake; the message names the field and the fix."""


def param(default: Any = MISSING, help: str = "", *, factory: Any = MISSING) -> Any:
    """A config field with its CLI help text. No default means the field is required."""
    return field(default=default, default_factory=factory, metadata={"help": help})


# --------------------------------------------------------------------------------------------
# Data stages
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Fields shared by every stage that reads JSONL records."""

    max_bad_fraction: float = param(
        0.01,
        "Fail the stage when more than this fraction of input lines is malformed. Bad lines are "
        "quarantined to <output>.quarantine.jsonl either way.",
    )


@dataclass(frozen=True, kw_only=True)
class SeedConfig(DataConfig):
    """Seed data: first turns of OpenAssistant oasst1 (paper §3 / METHOD.md 'The loop' 1)."""

    input: str = param(
        help="oasst1 export: message table (.jsonl, .jsonl.gz, .parquet) or *.trees.jsonl(.gz)"
    )
    output: str = param(help="Output JSONL of Pair records")
    num_examples: int = param(3200, "Pairs to sample (>= 1); the paper used ~3,200 (§3)")
    seed: int = param(0, "Sampling seed (deterministic selection)")
    lang: str = param("en", "Keep trees whose root prompt has this language (paper: English)")
    keep_unranked: bool = param(
        True,
        "Use a reply with no human rank when it is the only eligible reply to the root (oasst1 "
        "leaves single replies unranked); ranked replies always win, and several unranked "
        "eligible replies reject the tree as 'unranked_ambiguous'",
    )


@dataclass(frozen=True, kw_only=True)
class SegmentConfig(DataConfig):
    """Unlabelled data -> self-contained segments (paper §3 / METHOD.md 'The loop' 2)."""

    input: list[str] = param(
        help="HTML / Markdown / text files, directories of them, JSONL(.gz) or Parquet dumps"
    )
    output: str = param(help="Output JSONL of Segment records")
    text_field: str = param("text", "Field holding plain text or Markdown in JSONL/Parquet dumps")
    html_field: str = param("html", "Field holding HTML in JSONL/Parquet dumps (used when present)")
    id_field: str = param("id", "Field holding a document id in dumps (line number when absent)")
    min_chars: int = param(600, "Shortest segment kept, in characters (paper: 600)")
    max_chars: int = param(3000, "Longest segment kept, in characters (paper: 3,000)")
    near_dup_threshold: float = param(
        0.8, "MinHash Jaccard at or above which a segment is a near-duplicate"
    )
    num_perm: int = param(128, "MinHash permutations")
    shingle_size: int = param(3, "Words per MinHash shingle of the near-duplicate filter")
    repetition_ngram: int = param(3, "Word n-gram size for the repeated-sentence filter")
    repetition_threshold: float = param(
        0.7, "Drop a segment when two of its sentences have n-gram Jaccard above this"
    )
    num_workers: int = param(0, "Worker processes; 0 = all cores")


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TrainConfig(DataConfig):
    """Supervised fine-tuning under DeepSpeed ZeRO-3 (paper §4.1 'Training details')."""

    task: Literal["backward", "seed", "iteration"] = param(
        help="backward: output -> instruction; seed / iteration: instruction -> output"
    )
    base_model: str = param(
        help="HF checkpoint directory of the BASE model (every model starts from it)"
    )
    data: str = param(help="Training JSONL of Pair records")
    output_dir: str = param(help="Where checkpoints, metrics.jsonl and the final HF model go")
    ds_config: str = param(
        "", "DeepSpeed JSON; empty = ds_configs/zero3_cpu.json on CPU, ds_configs/zero3.json on GPU"
    )
    lr: float = param(1e-5, "Peak learning rate (§4.1)")
    final_lr: float = param(
        9e-6, "Absolute learning rate at the last step, reached linearly (§4.1)"
    )
    weight_decay: float = param(0.1, "AdamW weight decay (§4.1)")
    adam_beta1: float = param(0.9, "AdamW beta1 (inherited from LIMA)")
    adam_beta2: float = param(0.95, "AdamW beta2 (inherited from LIMA)")
    dropout: float = param(0.1, "Dropout on attention and residual paths (§4.1)")
    global_batch_size: int = param(
        0, "Examples per optimizer step; 0 = 32, or 8 below 3,000 examples (§4.1)"
    )
    micro_batch_size: int = param(1, "Examples (or packed rows) per device per micro step")
    max_steps: int = param(0, "Optimizer steps; 0 = from the paper's data-size table (METHOD.md)")
    max_seq_len: int = param(
        2048, "Tokens per example; longer examples are truncated (LLaMA-1: 2048)"
    )
    packing: bool = param(True, "Pack examples into rows without cross-example attention")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = param(
        "sdpa",
        "Attention kernel; flash_attention_2 (GPU, flash-attn installed) makes packing fast: "
        "varlen kernels cost sum(len^2) per packed row instead of T^2",
    )
    gradient_checkpointing: bool = param(
        False, "Recompute each decoder layer in backward (33B/65B at 2,048 tokens need it)"
    )
    precision: Literal["auto", "bf16", "fp32"] = param("auto", "auto = bf16 on GPU, fp32 on CPU")
    seed: int = param(42, "Data order and initialisation seed")
    save_every: int = param(
        100, "Steps between resumable DeepSpeed checkpoints (0 = only at the end)"
    )
    log_every: int = param(1, "Steps between metrics.jsonl lines")
    stop_file: str = param(
        "", "A file whose appearance makes the trainer checkpoint and exit (pre-emption)"
    )


# --------------------------------------------------------------------------------------------
# Generation (DeepSpeed-Inference)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class GenerationConfig(DataConfig):
    """Fields shared by every stage that generates or scores with the inference engine."""

    model: str = param(help="HF checkpoint directory")
    tp_size: int = param(1, "Tensor-parallel size; world / tp_size replicas split the records")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = param(
        "auto", "auto = bf16 on GPU, fp32 on CPU"
    )
    temperature: float = param(0.7, "Nucleus sampling temperature (paper decoding, §4.1)")
    top_p: float = param(0.9, "Nucleus sampling top-p (paper decoding, §4.1)")
    greedy: bool = param(False, "Greedy decoding instead of sampling")
    max_new_tokens: int = param(512, "Generation limit per record")
    token_budget: int = param(
        16384, "Prompt + generated tokens per batch (batches are length-sorted)"
    )
    kernel_inject: bool = param(False, "DeepSpeed kernel injection (GPU opt-in; not usable on CPU)")
    seed: int = param(0, "Base seed; each record's seed derives from it and the record id")
    shared_prefix_min: int = param(
        256, "Rows of a batch sharing at least this many leading tokens compute them once"
    )


@dataclass(frozen=True, kw_only=True)
class AugmentConfig(GenerationConfig):
    """Self-augmentation: the backward model writes one instruction per segment (§2.2)."""

    segments: str = param(help="Segment JSONL")
    output: str = param(help="Candidate JSONL")
    max_new_tokens: int = param(256, "Longest candidate instruction, in tokens")
    max_instruction_chars: int = param(1000, "Drop longer instructions as overlong")
    copy_overlap: float = param(
        0.8,
        "Drop an instruction as a copy of its segment when at least this share of its word "
        "trigrams occur in the segment",
    )


@dataclass(frozen=True, kw_only=True)
class CurateConfig(GenerationConfig):
    """Self-curation: m_{t-1} rates every candidate 1-5 (§2.2, Table 19 prompt)."""

    candidates: str = param(help="Candidate JSONL")
    output: str = param(help="Scored JSONL")
    mode: Literal["generate", "logprob"] = param(
        "generate",
        "generate: the paper's sampled rationale + last 'Score: N'; logprob: one forward pass",
    )
    num_samples: int = param(1, "generate mode: ratings sampled per candidate and averaged")


@dataclass(frozen=True, kw_only=True)
class SelectConfig(DataConfig):
    """Selection: keep candidates scored >= k, tag them, mix with tagged seed (§2.2, §2.3)."""

    scored: str = param(help="Scored JSONL")
    seed_data: str = param(help="Seed Pair JSONL")
    output: str = param(help="Training JSONL (Pair records with tags appended)")
    threshold: float = param(5.0, "Keep score >= threshold; final Humpback uses k = 5 (§4.1)")
    top_n: int = param(0, "Keep at most this many of the best candidates (0 = no cap)")
    use_expected: bool = param(
        False, "logprob mode: compare the expected score instead of the argmax"
    )


@dataclass(frozen=True, kw_only=True)
class AnswerConfig(GenerationConfig):
    """Answers for evaluation prompts in alpaca_eval's format (§4.1 evaluation decoding)."""

    prompts: str = param(help="JSON or JSONL list of instructions")
    output: str = param(help="alpaca_eval-format JSON list")
    tag: Literal["both", "seed", "augmented", "none"] = param(
        "both", "Inference tag appended to the instruction (paper's best: both, §4.1)"
    )
    generator: str = param(
        "", "Name written in the 'generator' field; empty = model directory name"
    )
    max_new_tokens: int = param(1024, "Answer length limit in tokens")


@dataclass(frozen=True, kw_only=True)
class JudgeConfig(GenerationConfig):
    """Local pairwise judge: which of two answers is better, in both orders (AlpacaEval-style)."""

    outputs: str = param(help="alpaca_eval-format JSON of the model under test (A)")
    reference: str = param(help="alpaca_eval-format JSON of the reference model (B)")
    output: str = param(help="Per-prompt judgements JSONL; the win rate goes to its manifest")
    mode: Literal["logprob", "generate"] = param(
        "logprob",
        "logprob: P('1') vs P('2') after the judge prompt; generate: parse a sampled verdict",
    )


@dataclass(frozen=True, kw_only=True)
class ReportConfig:
    """The run report: one self-contained HTML page and a Markdown twin, with plots."""

    run_dir: str = param(help="Run directory (see humpback_ds/layout.py)")
    output_dir: str = param("", "Where index.html / report.md go; empty = RUN_DIR/report")
    examples_per_score: int = param(2, "Example candidates shown for each score")


@dataclass(frozen=True, kw_only=True)
class TinyModelConfig:
    """A tiny LLaMA + SentencePiece tokenizer built in code, for tests and the demo."""

    output_dir: str = param(help="Where the HF checkpoint directory is written")
    vocab_size: int = param(512, "SentencePiece BPE vocabulary size (byte fallback on)")
    hidden_size: int = param(64, "Model width")
    intermediate_size: int = param(176, "MLP width")
    num_layers: int = param(2, "Decoder layers")
    num_heads: int = param(4, "Attention heads")
    num_kv_heads: int = param(2, "Key/value heads (GQA when fewer than num_heads)")
    max_position_embeddings: int = param(
        4096, "Longest sequence (the tiny tokenizer needs ~3,000 tokens for a rating prompt)"
    )
    seed: int = param(0, "Weight initialisation and tokenizer training seed")


# --------------------------------------------------------------------------------------------
# A whole run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The [run] table of a run file. Stage tables ([seed], [train], [train.backward], ...) hold
    per-stage overrides; paths between stages come from humpback_ds/layout.py."""

    run_dir: str = param(help="Run directory: every artifact of the run goes under it")
    base_model: str = param(
        help="HF checkpoint directory of the base model, or 'tiny' to build one"
    )
    seed_input: str = param(help="oasst1 export for the seed stage")
    web_input: list[str] = param(help="Unlabelled documents for the segment stage")
    eval_prompts: str = param("", "Evaluation instructions (JSON/JSONL); empty = no evaluation")
    judge_model: str = param("", "HF checkpoint of the pairwise judge; empty = the last model")
    iterations: int = param(2, "Self-curation iterations; Humpback is M2 (paper §2.2)")
    nproc: int = param(0, "Processes per node for distributed stages; 0 = all GPUs, or 2 on CPU")
    nnodes: int = param(1, "Nodes for distributed stages (under Slurm: the job's nodes)")


# --------------------------------------------------------------------------------------------
# Building configs
# --------------------------------------------------------------------------------------------


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _unknown_key_error(cls: type, key: str, where: str) -> ConfigError:
    valid = field_names(cls)
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(
        f"{where}: unknown key '{key}' for {cls.__name__}.{hint} Valid keys: {', '.join(valid)}"
    )


def _convert(name: str, raw: Any, annotation: Any, where: str) -> Any:
    """Turn a TOML value or a CLI string into the field's type, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if raw not in choices:
            raise ConfigError(f"{where}: '{name}' must be one of {list(choices)}, got {raw!r}")
        return raw
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return None if raw in (None, "None", "none") else _convert(name, raw, inner[0], where)
    if origin is list:
        (item,) = typing.get_args(annotation)
        values = raw if isinstance(raw, list) else [raw]
        return [_convert(name, v, item, where) for v in values]
    if annotation is bool:
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("true", "1", "yes", "on"):
            return True
        if str(raw).lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: '{name}' must be true or false, got {raw!r}")
    if annotation in (int, float, str):
        if annotation is not str and isinstance(raw, bool):
            raise ConfigError(f"{where}: '{name}' must be {annotation.__name__}, got {raw!r}")
        try:
            return annotation(raw)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}: '{name}' must be {annotation.__name__}, got {raw!r}"
            ) from None
    raise TypeError(f"unsupported config type {annotation!r} for {name}")  # a bug, not a user error


def build(
    cls: type,
    *,
    toml_table: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    toml_path: str = "run file",
) -> Any:
    """Defaults < TOML table < overrides, each value checked against the field's type."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for where, source in ((toml_path, toml_table or {}), ("command line", overrides or {})):
        for key, raw in source.items():
            if key not in hints:
                raise _unknown_key_error(cls, key, where)
            values[key] = _convert(key, raw, hints[key], where)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in values and f.default is MISSING and f.default_factory is MISSING
    ]
    if missing:
        flags = " ".join(f"--{m} ..." for m in missing)
        raise ConfigError(f"{cls.__name__}: missing required field(s) {missing}; pass {flags}")
    return cls(**values)


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"run file {path} does not exist")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def parse_overrides(cls: type, argv: list[str]) -> dict[str, Any]:
    """`--field=value`, `--field value`, and `--field v1 v2 ...` for list fields."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(
                f"command line: unexpected argument {arg!r}; options look like --field=value"
            )
        key, eq, value = arg[2:].partition("=")
        if key not in hints:
            raise _unknown_key_error(cls, key, "command line")
        i += 1
        if eq:
            out[key] = value
            continue
        is_list = typing.get_origin(hints[key]) is list
        taken = []
        while i < len(argv) and not argv[i].startswith("--") and (is_list or not taken):
            taken.append(argv[i])
            i += 1
        if not taken:
            if hints[key] is bool:
                out[key] = True
                continue
            raise ConfigError(f"command line: --{key} needs a value")
        out[key] = taken if is_list else taken[0]
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def describe(cls: type) -> str:
    """CLI help from the dataclass: one line per field with its default."""
    lines = [(cls.__doc__ or cls.__name__).strip(), "", "options:"]
    for f in dataclasses.fields(cls):
        if f.default is not MISSING:
            default = f"(default: {f.default!r})"
        elif f.default_factory is not MISSING:
            default = f"(default: {f.default_factory()!r})"
        else:
            default = "(required)"
        lines.append(f"  --{f.name:<24} {f.metadata.get('help', '')} {default}")
    return "\n".join(lines)
