"""Training throughput: this trainer (packing on / off) vs HF Trainer, same DeepSpeed config.

usage: python tools/bench_train.py --work DIR [--ranks 2] [--examples 256] [--steps 8]
                                   [--seq 512] [--micro 4]

Builds a small LLaMA (humpback_ds.modeling, 4 layers x 256 wide) and a JSONL of original toy pairs
whose lengths spread like instruction data (log-normal outputs, a long tail cut at --seq), then
launches three jobs with the `deepspeed` launcher on `--ranks` processes:
  ours-packed   humpback-ds train --packing=true
  ours-padded   humpback-ds train --packing=false
  hf-trainer    transformers.Trainer (padding to the longest of each micro batch), same JSON
All three see the same tokenization, global batch, micro batch, steps, lr and ds_configs file.
tokens/s counts REAL (non-padding) tokens over every step but the first (warm-up), summed over
ranks; padding = padded positions / positions computed. Results go to DIR/bench.json and a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = [
    "the",
    "a",
    "of",
    "river",
    "garden",
    "answer",
    "light",
    "bread",
    "table",
    "music",
    "chapter",
    "summary",
    "robot",
    "kitchen",
    "student",
    "weather",
    "lantern",
    "pebble",
    "orchard",
    "copper",
    "whistle",
    "meadow",
    "harbor",
    "velvet",
    "thunder",
    "saddle",
    "maple",
    "glacier",
    "compass",
    "ribbon",
    "cobalt",
    "because",
    "when",
    "quickly",
    "slowly",
    "under",
    "over",
    "between",
]


def make_data(path: Path, n: int, seed: int) -> None:
    from humpback_ds.records import Pair, write_records

    r = random.Random(seed)
    pairs = []
    for i in range(n):
        ins_words = r.randint(5, 40)
        out_words = min(int(r.lognormvariate(math.log(40), 0.8)), 400)
        pairs.append(
            Pair(
                id=f"b{i}",
                instruction=" ".join(r.choice(WORDS) for _ in range(ins_words)) + "?",
                output=" ".join(r.choice(WORDS) for _ in range(max(out_words, 3))) + ".",
            )
        )
    write_records(path, pairs)


def hf_worker(a: argparse.Namespace) -> None:
    """Runs inside the deepspeed launcher: HF Trainer on the same tokenized examples."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from humpback_ds import dist
    from humpback_ds.modeling import load_tokenizer
    from humpback_ds.records import Pair, load_records
    from humpback_ds.sft_data import collate_padded, encode

    dist.init()  # before zero.Init in from_pretrained, which reads the world size
    tok = load_tokenizer(a.model, padding_side="right")
    exs = [encode(p, tok, "seed", a.seq) for p in load_records(a.data, Pair)]
    counts = {"real": 0, "computed": 0, "t_first": None, "t_end": None, "step": 0}

    def collator(batch: list) -> dict:
        out = collate_padded(batch, tok.pad_token_id)
        if counts["step"] >= 1:  # step 0 is warm-up
            counts["real"] += int(out["attention_mask"].sum())
            counts["computed"] += out["attention_mask"].numel()
        return out

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN003
            counts["step"] = state.global_step
            if state.global_step == 1:
                counts["t_first"] = time.perf_counter()
            counts["t_end"] = time.perf_counter()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = TrainingArguments(
        output_dir=str(Path(a.out) / "hf"),
        per_device_train_batch_size=a.micro,
        gradient_accumulation_steps=a.global_batch // (a.micro * world),
        max_steps=a.steps,
        learning_rate=1e-5,
        weight_decay=0.1,
        adam_beta2=0.95,
        deepspeed=a.ds_config,
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        remove_unused_columns=False,
        use_cpu=os.environ.get("DS_ACCELERATOR") == "cpu",
    )
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model.config.use_cache = False
    trainer = Trainer(
        model=model, args=args, train_dataset=exs, data_collator=collator, callbacks=[Clock()]
    )
    trainer.train()
    real = torch.tensor([counts["real"], counts["computed"]], dtype=torch.float64)
    torch.distributed.all_reduce(real)
    if int(os.environ.get("RANK", "0")) == 0:
        result = {
            "tokens": real[0].item(),
            "computed": real[1].item(),
            "seconds": counts["t_end"] - counts["t_first"],
        }
        (Path(a.out) / "hf.json").write_text(json.dumps(result))


def launch(a: argparse.Namespace, args: list[str], port: int) -> float:
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(a.ranks)]
    t0 = time.perf_counter()
    subprocess.run([*cmd, "--master_port", str(port), *args], env=env, cwd=ROOT, check=True)
    return time.perf_counter() - t0


def ours(out: Path) -> dict:
    m = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()][1:]
    seconds = sum(x["tokens"] / x["tokens_per_s"] for x in m)
    return {"tokens": sum(x["tokens"] for x in m), "seconds": seconds}


def padding_of_our_padded_run(a: argparse.Namespace) -> float:
    from humpback_ds.modeling import load_tokenizer
    from humpback_ds.records import Pair, load_records
    from humpback_ds.sft_data import encode, micro_groups, padding_fraction, step_positions

    tok = load_tokenizer(a.model, padding_side="right")
    exs = [encode(p, tok, "seed", a.seq) for p in load_records(a.data, Pair)]
    groups = []
    for step in range(1, a.steps):
        idx = step_positions(len(exs), a.global_batch, step, 42)
        for r in range(a.ranks):
            groups += [[exs[i] for i in g] for g in micro_groups(idx, r, a.ranks, a.micro)]
    return padding_fraction(groups, packing=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="", help="Directory for the model, data and results")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--examples", type=int, default=256)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--global_batch", type=int, default=32)
    p.add_argument("--hf-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="")
    p.add_argument("--data", default="")
    p.add_argument("--out", default="")
    p.add_argument("--ds_config", default=str(ROOT / "ds_configs" / "zero3_cpu.json"))
    p.add_argument("--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.hf_worker:
        hf_worker(a)
        return
    if not a.work:
        p.error("--work DIR is required")
    run_bench(a)


def run_bench(a: argparse.Namespace) -> None:
    from humpback_ds.config import TinyModelConfig
    from humpback_ds.modeling import build_tiny_model

    work = Path(a.work)
    a.model, a.data, a.out = str(work / "model"), str(work / "data.jsonl"), str(work)
    if not (work / "model" / "config.json").is_file():
        build_tiny_model(
            TinyModelConfig(
                output_dir=a.model,
                hidden_size=256,
                intermediate_size=688,
                num_layers=4,
                num_heads=8,
                num_kv_heads=4,
            )
        )
    make_data(Path(a.data), a.examples, seed=0)
    common = [
        "--task=seed",
        f"--base_model={a.model}",
        f"--data={a.data}",
        f"--max_steps={a.steps}",
        f"--global_batch_size={a.global_batch}",
        f"--micro_batch_size={a.micro}",
        f"--max_seq_len={a.seq}",
        "--save_every=0",
        "--dropout=0",
        f"--ds_config={a.ds_config}",
    ]
    results = {}
    for name, packing in (("ours-packed", True), ("ours-padded", False)):
        out = work / name
        subprocess.run(["rm", "-rf", str(out)], check=True)
        launch(
            a,
            [
                "--module",
                "humpback_ds",
                "train",
                *common,
                f"--output_dir={out}",
                f"--packing={packing}",
            ],
            29700 + len(results),
        )
        results[name] = ours(out)
    results["ours-packed"]["padding"] = 0.0
    results["ours-padded"]["padding"] = padding_of_our_padded_run(a)
    hf_args = [
        str(Path(__file__).resolve()),
        "--hf-worker",
        f"--model={a.model}",
        f"--data={a.data}",
        f"--out={a.out}",
        f"--steps={a.steps}",
        f"--seq={a.seq}",
        f"--micro={a.micro}",
        f"--global_batch={a.global_batch}",
        f"--ds_config={a.ds_config}",
    ]
    launch(a, hf_args, 29710)
    hf = json.loads((work / "hf.json").read_text())
    results["hf-trainer"] = {
        "tokens": hf["tokens"],
        "seconds": hf["seconds"],
        "padding": 1 - hf["tokens"] / hf["computed"],
    }
    report(a, results, work)


def report(a: argparse.Namespace, results: dict, work: Path) -> None:
    from humpback_ds import console

    for r in results.values():
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
    base = results["hf-trainer"]["tokens_per_s"]
    rows = [
        (
            name,
            int(r["tokens"]),
            r["seconds"],
            r["tokens_per_s"],
            r["tokens_per_s"] / base,
            f"{100 * r['padding']:.1f}%",
        )
        for name, r in results.items()
    ]
    cols = ("run", "real tokens", "seconds", "tokens/s", "vs HF", "padding")
    console.console.print(console.summary_table("training throughput", rows, cols))
    (work / "bench.json").write_text(json.dumps({"args": vars(a), "results": results}, indent=2))


if __name__ == "__main__":
    main()
