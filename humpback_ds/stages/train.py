"""Stage `train`: fine-tune the BASE model on Pair records under DeepSpeed ZeRO-3.

`humpback-ds train --task {backward,seed,iteration} --base_model DIR --data PATH --output_dir DIR`,
one process per device under the `deepspeed` launcher or torchrun (gloo on CPU, NCCL on GPU).
output_dir is the HF checkpoint directory the next stage reads: config.json, model.safetensors,
the tokenizer and manifest.json, plus metrics.jsonl and the resumable checkpoints/ subfolder.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from humpback_ds import console, dist, liveness
from humpback_ds.config import ConfigError, TrainConfig, to_dict
from humpback_ds.manifest import Manifest, read_manifest
from humpback_ds.modeling import check_checkpoint, load_tokenizer, set_dropout
from humpback_ds.records import DataError, Pair, Quarantine, ReadStats, read_records
from humpback_ds.sft_data import Example, encode
from humpback_ds.trainer import BatchPlan, Trainer, fill_ds_config, plan_batch

DS_CONFIGS = Path(__file__).resolve().parents[2] / "ds_configs"

# Paper's optimizer steps by number of training examples (METHOD.md 'Training recipe', 7B runs).
STEPS_BY_SIZE = {
    100: 30,
    800: 300,
    1600: 600,
    3200: 500,
    6400: 600,
    12800: 600,
    25600: 1200,
    51200: 1600,
}


def default_steps(num_examples: int) -> int:
    """Steps of the table row NEAREST on a log scale (the table is not monotone: no interpolation)."""
    size = min(STEPS_BY_SIZE, key=lambda s: abs(math.log(s) - math.log(max(num_examples, 1))))
    return STEPS_BY_SIZE[size]


def default_global_batch(num_examples: int) -> int:
    """32 examples per step, 8 below 3,000 examples (METHOD.md)."""
    return 8 if num_examples < 3000 else 32


def resolve_precision(cfg: TrainConfig) -> bool:
    """True for bf16. auto = bf16 on GPU, fp32 on CPU; bf16 on CPU is allowed but slow."""
    if cfg.precision == "auto":
        return dist.cuda_available()
    return cfg.precision == "bf16"


def load_ds_config(cfg: TrainConfig) -> tuple[dict[str, Any], str]:
    path = (
        Path(cfg.ds_config)
        if cfg.ds_config
        else (DS_CONFIGS / ("zero3.json" if dist.cuda_available() else "zero3_cpu.json"))
    )
    if not path.is_file():
        raise ConfigError(f"ds_config: {path} does not exist; pass --ds_config PATH.json")
    try:
        return json.loads(path.read_text(encoding="utf-8")), str(path)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None


def load_examples(cfg: TrainConfig, tokenizer: Any, manifest: Manifest) -> list[Example]:
    """Read and tokenize every pair (each rank holds all of them: the data order needs it)."""
    stats = ReadStats(cfg.data)
    quarantine = (
        Quarantine(Path(cfg.output_dir) / "data.quarantine.jsonl") if dist.is_main() else None
    )
    pairs = list(
        read_records(
            cfg.data,
            Pair,
            quarantine=quarantine,
            max_bad_fraction=cfg.max_bad_fraction,
            stats=stats,
        )
    )
    if quarantine is not None:
        quarantine.close()
    if not pairs:
        raise ConfigError(f"data: {cfg.data} holds no valid Pair records")
    examples = [encode(p, tokenizer, cfg.task, cfg.max_seq_len) for p in pairs]
    manifest.counts.update(
        read=stats.read, examples=len(examples), truncated=sum(e.truncated for e in examples)
    )
    manifest.reject("malformed line", stats.bad)
    return examples


def load_model(cfg: TrainConfig, ds_config: dict[str, Any], bf16: bool) -> Any:
    """The base model, partitioned at load time by zero.Init (65B does not fit one host otherwise)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    keep = HfDeepSpeedConfig(ds_config)  # noqa: F841  (must live while from_pretrained runs)
    model = AutoModelForCausalLM.from_pretrained(
        str(check_checkpoint(cfg.base_model)),
        dtype=torch.bfloat16 if bf16 else torch.float32,
        attn_implementation=cfg.attn_implementation,
    )
    set_dropout(model, cfg.dropout)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def export(trainer: Trainer, cfg: TrainConfig, tokenizer: Any) -> None:
    """Consolidated HF checkpoint in output_dir: gathered weights (NOT the empty ZeRO-3 shards)."""
    state = trainer.consolidated_state_dict()
    if dist.is_main():
        trainer.engine.module.save_pretrained(cfg.output_dir, state_dict=state)
        tokenizer.save_pretrained(cfg.output_dir)


def resume_tag(ckpt_dir: Path, dp: int, ds_config: dict[str, Any]) -> str | None:
    """Tag of the checkpoint to resume from (None: start afresh). A checkpoint saved with another
    number of data-parallel ranks is converted once, by rank 0, to a universal checkpoint
    (deepspeed.checkpoint.ds_to_universal) and loaded with "load_universal" set in ds_config."""
    latest = ckpt_dir / "latest"
    if not latest.is_file():
        return None
    tag = latest.read_text(encoding="utf-8").strip()
    saved_dp = len(list((ckpt_dir / tag).glob("zero_pp_rank_*_mp_rank_00_model_states.pt")))
    if saved_dp == dp:
        return tag
    universal = f"{tag}_universal"
    if dist.is_main() and not (ckpt_dir / universal / "zero").is_dir():
        dist.print0(f"resume: {tag} was saved by {saved_dp} ranks, this run has {dp}: converting")
        subprocess.run(
            [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
             str(ckpt_dir / tag), "--output_folder", str(ckpt_dir / universal),
             "--num_extract_workers", "1", "--num_merge_workers", "1"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    # for a 65B model the conversion takes far longer than a collective timeout
    liveness.wait_for_all("the universal checkpoint conversion")
    ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
    return universal


def already_done(cfg: TrainConfig, manifest: Manifest) -> bool:
    """True when output_dir holds a finished model of the same config and inputs."""
    old = read_manifest(cfg.output_dir)
    if old is None or not (Path(cfg.output_dir) / "model.safetensors").is_file():
        return False
    if old.get("config") != manifest.config or old.get("inputs") != manifest.inputs:
        raise ConfigError(
            f"output_dir: {cfg.output_dir} holds a model trained with another config or data; "
            "choose another --output_dir or delete it"
        )
    return True


def run(cfg: TrainConfig) -> Path:
    out = Path(cfg.output_dir)
    manifest = Manifest("train", to_dict(cfg))
    if not Path(cfg.data).is_file():
        raise DataError(f"data: {cfg.data} does not exist; pass --data PATH of a Pair JSONL")
    check_checkpoint(cfg.base_model)
    manifest.add_input(cfg.data)
    manifest.add_input(Path(cfg.base_model) / "config.json")
    if already_done(cfg, manifest):
        dist.print0(f"train: {out} is complete for this config and data; skipped")
        return out
    dist.init(always=True)  # ZeRO needs a process group, even of one process
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(cfg.base_model, padding_side="right")
    examples = load_examples(cfg, tokenizer, manifest)
    n = len(examples)
    plan = plan_batch(
        cfg.global_batch_size or default_global_batch(n),
        cfg.micro_batch_size,
        dist.world_size(),
        cfg.max_steps or default_steps(n),
    )
    bf16 = resolve_precision(cfg)
    raw, source = load_ds_config(cfg)
    ds_config = fill_ds_config(raw, source, cfg, plan, bf16)
    model = load_model(cfg, ds_config, bf16)
    tag = resume_tag(out / "checkpoints", plan.dp, ds_config)
    trainer = Trainer(cfg, model, examples, plan, ds_config, tokenizer.pad_token_id, tag)
    metrics = trainer.train()
    export(trainer, cfg, tokenizer)
    liveness.wait_for_all(
        "the export", "Rerun the same command: it resumes from the last checkpoint"
    )
    _finish(manifest, out, plan, metrics, ds_config, source)
    return out


def _finish(
    manifest: Manifest,
    out: Path,
    plan: BatchPlan,
    metrics: list[dict[str, Any]],
    ds_config: dict[str, Any],
    source: str,
) -> None:
    manifest.counts.update(steps=plan.steps, steps_run_now=len(metrics))
    manifest.extra.update(
        plan=vars(plan),
        ds_config=ds_config,
        ds_config_file=source,
        final_loss=metrics[-1]["loss"] if metrics else None,
    )
    if not dist.is_main():
        return
    manifest.write(out)
    rows = [
        ("examples", manifest.counts["examples"]),
        ("truncated", manifest.counts["truncated"]),
        ("steps", plan.steps),
        ("global batch", plan.global_batch),
        ("micro x accumulation x ranks", f"{plan.micro} x {plan.accumulation} x {plan.dp}"),
    ]
    if metrics:
        rows += [
            ("first loss", metrics[0]["loss"]),
            ("last loss", metrics[-1]["loss"]),
            ("tokens/s (mean)", sum(m["tokens_per_s"] for m in metrics) / len(metrics)),
        ]
    console.show(console.summary_table(f"train -> {out}", rows))
