"""ds_configs/*.json: ZeRO-3 presets that DeepSpeed accepts once the trainer fills its fields.

Also pins tools/estimate_memory.py: LLaMA parameter counts against the published checkpoints, the
model-state memory against DEEPSPEED_NOTES.md, and docs/ds_configs.md against the script's output.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "ds_configs").glob("*.json"))
LLAMA_PRESETS = [p for p in CONFIGS if p.stem.startswith("llama-")]
SIZES = ("7b", "13b", "33b", "65b")

# Fields the trainer fills from the stage config (TrainConfig): a preset leaves them out or "auto".
STAGE_OWNED = (
    ("train_batch_size",),
    ("train_micro_batch_size_per_gpu",),
    ("gradient_accumulation_steps",),
    ("bf16", "enabled"),
    ("fp16", "enabled"),
    ("optimizer", "params", "lr"),
    ("scheduler", "params", "lr"),
    ("scheduler", "params", "warmup_min_lr"),
    ("scheduler", "params", "warmup_max_lr"),
    ("scheduler", "params", "total_num_steps"),
)
# What the trainer would put there for a 1-process run: batch 8 = micro 1 x accumulation 8 x 1.
FILLED = {
    ("train_batch_size",): 8,
    ("train_micro_batch_size_per_gpu",): 1,
    ("gradient_accumulation_steps",): 8,
    ("bf16", "enabled"): True,
    ("fp16", "enabled"): False,
    ("optimizer", "params", "lr"): 1e-5,
    ("scheduler", "params", "lr"): 1e-5,
    ("scheduler", "params", "warmup_min_lr"): 9e-6,
    ("scheduler", "params", "warmup_max_lr"): 1e-5,
    ("scheduler", "params", "total_num_steps"): 100,
}


def load_tool(name: str):
    """Import tools/<name>.py (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


estimate_memory = load_tool("estimate_memory")


def lookup(cfg: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(cfg, dict) or key not in cfg:
            return None
        cfg = cfg[key]
    return cfg


def auto_paths(cfg: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(cfg, dict):
        return [p for k, v in cfg.items() for p in auto_paths(v, (*path, k))]
    return [path] if cfg == "auto" else []


def fill(cfg: dict) -> dict:
    """The trainer's job: batch sizes and bf16 always, optimizer/scheduler fields when present."""
    out = copy.deepcopy(cfg)
    out.setdefault("bf16", {})
    for path, value in FILLED.items():
        parent = lookup(out, path[:-1]) if len(path) > 1 else out
        if isinstance(parent, dict) and (len(path) == 1 or path[0] == "bf16" or path[-1] in parent):
            parent[path[-1]] = value
    return out


def test_presets_exist() -> None:
    assert {p.stem for p in LLAMA_PRESETS} == {
        f"llama-{s}{v}" for s in SIZES for v in ("", "-offload")
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_stage3_and_no_stage_owned_values(path: Path) -> None:
    cfg = json.loads(path.read_text())
    assert cfg["zero_optimization"]["stage"] == 3
    for field in STAGE_OWNED:
        assert lookup(cfg, field) in (None, "auto"), f"{path.name}: {'.'.join(field)} is concrete"
    assert set(auto_paths(cfg)) <= set(STAGE_OWNED), "only stage-owned fields may be 'auto'"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_deepspeed_accepts_filled(path: Path) -> None:
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg = fill(json.loads(path.read_text()))
    assert auto_paths(cfg) == []
    parsed = DeepSpeedConfig(cfg)  # no process group: world size 1
    assert parsed.zero_optimization_stage == 3
    assert parsed.train_batch_size == 8 and parsed.gradient_accumulation_steps == 8
    assert parsed.bfloat16_config.enabled is True


@pytest.mark.parametrize("path", LLAMA_PRESETS, ids=lambda p: p.name)
def test_llama_preset_knobs(path: Path) -> None:
    """Buckets sized from the model's hidden size (h^2, 0.9 h^2, 10 h) and exportable weights."""
    from deepspeed.runtime.config import DeepSpeedConfig

    size = path.stem.split("-")[1]
    h = estimate_memory.LLAMA[size].hidden
    zero = DeepSpeedConfig(fill(json.loads(path.read_text()))).zero_config
    assert zero.reduce_bucket_size == h * h
    assert zero.prefetch_bucket_size == int(0.9 * h * h)
    assert zero.param_persistence_threshold == 10 * h
    assert zero.gather_16bit_weights_on_model_save is True  # else save_pretrained writes empties
    assert zero.overlap_comm and zero.contiguous_gradients
    offload = path.stem.endswith("-offload")
    assert (zero.offload_param is not None) == offload
    assert (zero.offload_optimizer is not None) == offload
    cfg = json.loads(path.read_text())
    assert cfg["gradient_clipping"] == 1.0 and cfg["wall_clock_breakdown"] is False


@pytest.mark.parametrize("size", SIZES)
def test_offload_variant_differs_only_by_offload(size: str) -> None:
    base = json.loads((ROOT / "ds_configs" / f"llama-{size}.json").read_text())
    off = json.loads((ROOT / "ds_configs" / f"llama-{size}-offload.json").read_text())
    zero = off["zero_optimization"]
    assert zero.pop("offload_param") == {"device": "cpu", "pin_memory": True}
    assert zero.pop("offload_optimizer") == {"device": "cpu", "pin_memory": True}
    assert off == base


def test_parameter_counts_match_published_checkpoints() -> None:
    """Parameter counts of the HF LLaMA-1 checkpoints (untied embeddings, vocab 32,000)."""
    counts = {s: m.param_counts()[0] for s, m in estimate_memory.LLAMA.items()}
    assert counts == {
        "7b": 6_738_415_616,
        "13b": 13_015_864_320,
        "33b": 32_528_943_616,
        "65b": 65_285_660_672,
    }


@pytest.mark.parametrize(
    ("size", "nodes", "notes_gb"),
    [("7b", 1, 15), ("13b", 1, 28), ("33b", 1, 69), ("65b", 2, 69), ("65b", 4, 35)],
)
def test_model_states_match_notes(size: str, nodes: int, notes_gb: float) -> None:
    """DeepSpeed's estimator, 8 GPUs per node, no offload, vs DEEPSPEED_NOTES.md (GiB)."""
    gpu, _ = estimate_memory.model_states(estimate_memory.LLAMA[size], nodes, 8, offload=False)
    assert abs(gpu / 2**30 - notes_gb) / notes_gb < 0.10


def test_offload_keeps_one_layer_on_gpu() -> None:
    """With params and optimizer offloaded, a GPU holds the largest layer in fp32 (4 B/param)."""
    m = estimate_memory.LLAMA["65b"]
    gpu, host = estimate_memory.model_states(m, 1, 8, offload=True)
    assert gpu == 4 * m.param_counts()[1]
    assert host == int(m.param_counts()[0] * 18 * 1.5)  # 18 B/param host, buffer factor 1.5


def test_docs_table_is_current() -> None:
    """docs/ds_configs.md holds exactly `python tools/estimate_memory.py --markdown`."""
    doc = (ROOT / "docs" / "ds_configs.md").read_text()
    assert estimate_memory.markdown(estimate_memory.table()) in doc


def test_unfilled_auto_is_unsafe() -> None:
    """Why the trainer must fill every "auto": DeepSpeed 0.19 reads bf16 "auto" as disabled."""
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg = fill(json.loads((ROOT / "ds_configs" / "llama-7b.json").read_text()))
    cfg["bf16"]["enabled"] = "auto"
    assert DeepSpeedConfig(cfg).bfloat16_config.enabled is False
    cfg["bf16"]["enabled"] = True
    cfg["train_batch_size"] = "auto"
    with pytest.raises(TypeError):
        DeepSpeedConfig(cfg)


def test_same_numbers_as_all_cold_printout(capsys: pytest.CaptureFixture[str]) -> None:
    """Our per-GPU figure is the one DeepSpeed's estimate_..._all_cold prints for that setup."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold

    m = estimate_memory.LLAMA["7b"]
    total, largest = m.param_counts()
    estimate_zero3_model_states_mem_needs_all_cold(total, largest, num_gpus_per_node=8, num_nodes=1)
    printed = capsys.readouterr().out
    rows = [
        line.split("|") for line in printed.splitlines() if line.count("|") == 2 and "GB" in line
    ]
    per_gpu = {  # (cpu offload of params and optimizer) -> per-GPU GiB, zero.Init on
        "offload_param=none" not in opts: float(gpu.strip().removesuffix("GB"))
        for _, gpu, opts in rows
        if "zero_init=1" in opts and (opts.count("=none") in (0, 2))
    }
    assert len(per_gpu) == 2
    for offload in (False, True):
        gpu, _ = estimate_memory.model_states(m, 1, 8, offload=offload)
        assert per_gpu[offload] == round(gpu / 2**30, 2)
