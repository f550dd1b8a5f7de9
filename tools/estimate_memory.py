"""Per-GPU memory of the LLaMA presets in ds_configs/, from DeepSpeed's own ZeRO-3 estimator.

usage: python tools/estimate_memory.py [--gpu-mem-gib 80] [--seq-len 2048] [--markdown]

For every ds_configs/llama-*.json preset and 1, 2, 4 or 8 nodes of 8 GPUs, prints:
- model states per GPU (bf16 parameters + fp32 master weights + Adam moments + gradients) from
  deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs, the function that
  estimate_zero3_model_states_mem_needs_all_cold prints; zero.Init on, buffer factor 1.5;
- the host RAM per node that the offload presets need (same estimator);
- our activation estimate per micro-batch example (DeepSpeed's estimator covers model states only):
  see activation_bytes below;
- the ZeRO-3 gathered-parameter working set: stage3_max_live_parameters in bf16 (an upper bound);
- the largest micro batch (1..64, powers of two) whose total fits in --gpu-mem-gib with 10% headroom.
The table in docs/ds_configs.md is this script's --markdown output.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # the estimator is arithmetic: no GPU needed

GIB = 2**30
ROOT = Path(__file__).resolve().parent.parent
PRESETS = ROOT / "ds_configs"
HEADROOM = 0.9  # fraction of GPU memory a plan may use: allocator fragmentation, NCCL buffers


@dataclass(frozen=True)
class Llama:
    """Shape of a LLaMA-1 model (Touvron et al. 2023, Table 2; intermediate from the HF configs)."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    vocab: int = 32000

    def param_counts(self) -> tuple[int, int]:
        """(total parameters, largest single module's parameters) with untied embeddings."""
        h, f = self.hidden, self.intermediate
        per_layer = 4 * h * h + 3 * h * f + 2 * h  # q, k, v, o; gate, up, down; two RMSNorms
        embed = self.vocab * h
        total = 2 * embed + self.layers * per_layer + h  # embed_tokens, lm_head, final norm
        return total, max(embed, h * f)


LLAMA = {
    "7b": Llama(hidden=4096, layers=32, intermediate=11008, heads=32),
    "13b": Llama(hidden=5120, layers=40, intermediate=13824, heads=40),
    "33b": Llama(hidden=6656, layers=60, intermediate=17920, heads=52),
    "65b": Llama(hidden=8192, layers=80, intermediate=22016, heads=64),
}


def activation_bytes(m: Llama, seq_len: int, micro_batch: int) -> int:
    """Rough activation memory of one micro step, bf16, checkpointing every decoder layer.

    - checkpoints: each layer's input, kept for the backward pass: layers * b * s * h * 2 bytes;
    - one layer recomputed in backward, its activations and their gradients: q, k, v, attention
      output, o_proj output, norms (~10 h) and gate, up, act, product (4 f) per token, x2 for
      gradients, 2 bytes each (flash / sdpa attention: no s x s score matrix is stored);
    - logits: bf16 logits, their fp32 copy for the loss and its fp32 gradient: b * s * V * 10 bytes.
    """
    tokens = seq_len * micro_batch
    checkpoints = m.layers * tokens * m.hidden * 2
    one_layer = 2 * tokens * (10 * m.hidden + 4 * m.intermediate) * 2
    logits = tokens * m.vocab * 10
    return checkpoints + one_layer + logits


def model_states(m: Llama, nodes: int, gpus_per_node: int, offload: bool) -> tuple[int, int]:
    """(bytes per GPU, host bytes per node) of ZeRO-3 model states, from DeepSpeed's estimator."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    total, largest = m.param_counts()
    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
        total_params=total,
        largest_layer_params=largest,
        num_gpus_per_node=gpus_per_node,
        num_nodes=nodes,
        cpu_offload=offload,
        cpu_offload_params=offload,
        zero_init=True,
    )
    return gpu, cpu


@dataclass(frozen=True)
class Row:
    preset: str
    nodes: int
    gpus: int
    model_states_gib: float
    working_set_gib: float
    activations_gib_per_example: float
    host_gib_per_node: float
    max_micro_batch: int  # 0: does not fit even at micro batch 1


def preset_row(path: Path, nodes: int, gpus_per_node: int, seq_len: int, gpu_mem_gib: float) -> Row:
    size = path.stem.removeprefix("llama-").removesuffix("-offload")
    if size not in LLAMA:
        raise ValueError(f"{path}: no LLaMA shape for size {size!r}; known sizes: {sorted(LLAMA)}")
    zero = json.loads(path.read_text())["zero_optimization"]
    offload = zero.get("offload_param", {}).get("device", "none") == "cpu"
    m = LLAMA[size]
    gpu, host = model_states(m, nodes, gpus_per_node, offload)
    working_set = 2 * min(zero["stage3_max_live_parameters"], m.param_counts()[0])
    budget = gpu_mem_gib * GIB * HEADROOM - gpu - working_set
    fits = [b for b in (1, 2, 4, 8, 16, 32, 64) if activation_bytes(m, seq_len, b) <= budget]
    return Row(
        preset=path.stem,
        nodes=nodes,
        gpus=nodes * gpus_per_node,
        model_states_gib=gpu / GIB,
        working_set_gib=working_set / GIB,
        activations_gib_per_example=activation_bytes(m, seq_len, 1) / GIB,
        host_gib_per_node=host / GIB,
        max_micro_batch=max(fits, default=0),
    )


def table(seq_len: int = 2048, gpu_mem_gib: float = 80.0, gpus_per_node: int = 8) -> list[Row]:
    def order(p: Path) -> tuple[int, str]:
        return int(p.stem.split("-")[1].removesuffix("b")), p.stem

    presets = sorted(PRESETS.glob("llama-*.json"), key=order)
    return [
        preset_row(p, nodes, gpus_per_node, seq_len, gpu_mem_gib)
        for p in presets
        for nodes in (1, 2, 4, 8)
    ]


HEADER = (
    "preset",
    "nodes",
    "GPUs",
    "model states GiB/GPU",
    "ZeRO-3 working set GiB",
    "activations GiB/example",
    "host GiB/node",
    "max micro batch",
)


def cells(r: Row) -> tuple[str, ...]:
    mb = str(r.max_micro_batch) if r.max_micro_batch else "does not fit"
    host = f"{r.host_gib_per_node:.0f}"
    return (
        r.preset,
        str(r.nodes),
        str(r.gpus),
        f"{r.model_states_gib:.1f}",
        f"{r.working_set_gib:.1f}",
        f"{r.activations_gib_per_example:.1f}",
        host,
        mb,
    )


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--seq-len", type=int, default=2048, help="tokens per example (LLaMA-1: 2048)"
    )
    parser.add_argument(
        "--gpu-mem-gib", type=float, default=80.0, help="memory of one GPU (A100/H100: 80)"
    )
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument(
        "--markdown", action="store_true", help="print the docs/ds_configs.md table"
    )
    args = parser.parse_args(argv)
    rows = table(args.seq_len, args.gpu_mem_gib, args.gpus_per_node)
    if args.markdown:
        print(markdown(rows))
        return
    from humpback_ds import console

    title = f"ZeRO-3 memory per GPU, seq {args.seq_len}, {args.gpu_mem_gib:g} GiB GPUs"
    console.show(console.summary_table(title, (cells(r) for r in rows), HEADER))


if __name__ == "__main__":
    main()
