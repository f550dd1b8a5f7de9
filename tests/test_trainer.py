"""The ZeRO-3 trainer: batch plan, schedule, DeepSpeed config filling, and real 2-process runs.

The multi-process tests launch `python -m humpback_ds train` with the real `deepspeed` launcher on
CPU (gloo) and compare per-step losses from metrics.jsonl with a plain single-process PyTorch loop.
All runs use the same data, seed and step count, so one reference serves every comparison.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from humpback_ds import cli
from humpback_ds.config import ConfigError, TrainConfig
from humpback_ds.modeling import load_model, load_tokenizer
from humpback_ds.records import write_records
from humpback_ds.sft_data import collate_padded, encode, step_positions, sum_loss
from humpback_ds.stages import train as train_stage
from humpback_ds.stages.train import default_global_batch, default_steps
from humpback_ds.trainer import (
    EXIT_PREEMPTED,
    StopRequest,
    fill_ds_config,
    lr_factor,
    plan_batch,
)

sys.path.insert(0, str(Path(__file__).parent))
from procs import DEEPSPEED, Spawner, free_port, run_group  # noqa: E402
from test_sft_data import make_pairs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STEPS, GLOBAL_BATCH, SEQ = 10, 8, 64
CLIP = 1.0  # ds_configs/zero3_cpu.json gradient_clipping


def cfg(**kw) -> TrainConfig:
    base = {"task": "seed", "base_model": "m", "data": "d.jsonl", "output_dir": "o"}
    return TrainConfig(**{**base, **kw})


# ---------------------------------------------------------------- fast unit tests


def test_plan_derives_accumulation_and_refuses_indivisible_batches() -> None:
    p = plan_batch(32, 2, 8, 500)
    assert (p.micro, p.accumulation, p.dp) == (2, 2, 8)
    assert plan_batch(8, 4, 1, 10).accumulation == 2
    with pytest.raises(
        ConfigError,
        match=r"global_batch_size=32 is not divisible by "
        r"micro_batch_size=3 x 2 data-parallel ranks",
    ):
        plan_batch(32, 3, 2, 10)
    with pytest.raises(ConfigError, match="must be positive"):
        plan_batch(8, 0, 1, 10)


def test_lr_goes_linearly_from_lr_to_the_absolute_final_lr() -> None:
    f = [1e-5 * lr_factor(s, 11, 1e-5, 9e-6) for s in range(11)]
    assert f[0] == pytest.approx(1e-5, rel=1e-12) and f[-1] == pytest.approx(9e-6, rel=1e-12)
    assert f[5] == pytest.approx(9.5e-6, rel=1e-12)
    assert lr_factor(0, 1, 1e-5, 9e-6) == 1.0


def test_paper_table_of_steps_and_batch() -> None:
    assert [default_steps(n) for n in (100, 800, 1600, 3200, 6400, 12800, 25600, 51200)] == [
        30,
        300,
        600,
        500,
        600,
        600,
        1200,
        1600,
    ]
    assert default_steps(3300) == 500 and default_steps(41821) == 1600  # nearest on a log scale
    assert default_steps(10) == 30 and default_steps(500_000) == 1600
    assert default_global_batch(2999) == 8 and default_global_batch(3000) == 32


def test_ds_config_fields_are_filled_and_conflicts_named() -> None:
    raw = json.loads((ROOT / "ds_configs" / "zero3.json").read_text())
    out = fill_ds_config(raw, "zero3.json", cfg(), plan_batch(32, 2, 8, 10), bf16=True)
    assert (
        out["train_batch_size"],
        out["train_micro_batch_size_per_gpu"],
        out["gradient_accumulation_steps"],
    ) == (32, 2, 2)
    assert out["bf16"]["enabled"] is True and out["fp16"]["enabled"] is False
    assert out["zero_optimization"]["stage"] == 3 and "optimizer" not in out
    raw["train_micro_batch_size_per_gpu"] = 4
    with pytest.raises(
        ConfigError,
        match=r"zero3.json: 'train_micro_batch_size_per_gpu' is 4 "
        r"but the train config gives 2",
    ):
        fill_ds_config(raw, "zero3.json", cfg(), plan_batch(32, 2, 8, 10), bf16=True)
    opt = {"optimizer": {"type": "AdamW", "params": {"lr": 2e-5}}}
    with pytest.raises(ConfigError, match=r"'optimizer.params.lr' is 2e-05 .* gives 1e-05"):
        fill_ds_config(opt, "x.json", cfg(), plan_batch(8, 1, 1, 10), bf16=False)
    with pytest.raises(ConfigError, match="remove 'scheduler'"):
        fill_ds_config(
            {"scheduler": {"type": "WarmupLR"}},
            "x.json",
            cfg(),
            plan_batch(8, 1, 1, 10),
            bf16=False,
        )


def test_stop_request_sees_signals_and_the_stop_file(tmp_path: Path) -> None:
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        stop = StopRequest(str(tmp_path / "stop"))
        assert not stop.requested(torch.device("cpu"))
        (tmp_path / "stop").write_text("")
        assert stop.requested(torch.device("cpu"))
        stop2 = StopRequest("")
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop2.requested(torch.device("cpu"))
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------- plain PyTorch reference


def reference_run(model_dir: Path, data: list, steps: int) -> tuple[list[float], list[float], dict]:
    """Single process, no DeepSpeed: each step's loss = sum of target CE / step target tokens,
    every example run on its own (no packing); AdamW + the linear schedule + norm clipping."""
    tok = load_tokenizer(model_dir, padding_side="right")
    model = load_model(model_dir, dropout=0.0).train()
    c = cfg()
    opt = torch.optim.AdamW(
        model.parameters(), lr=c.lr, weight_decay=c.weight_decay, betas=(c.adam_beta1, c.adam_beta2)
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, c.lr, c.final_lr))
    exs = [encode(p, tok, "seed", SEQ) for p in data]
    losses, norms = [], []
    for step in range(steps):
        idx = step_positions(len(exs), GLOBAL_BATCH, step, c.seed)
        targets = sum(exs[i].num_targets for i in idx)
        total = sum(sum_loss(model, collate_padded([exs[i]], tok.pad_token_id)) for i in idx)
        (total / targets).backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP).item())
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(total.item() / targets)
    return losses, norms, {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- real DeepSpeed launches


def train_args(model_dir: Path, data: Path, out: Path, **kw) -> list[str]:
    args = {
        "task": "seed",
        "base_model": model_dir,
        "data": data,
        "output_dir": out,
        "max_steps": STEPS,
        "global_batch_size": GLOBAL_BATCH,
        "max_seq_len": SEQ,
        "dropout": 0.0,
        "save_every": 0,
        **kw,
    }
    return ["--module", "humpback_ds", "train", *[f"--{k}={v}" for k, v in args.items()]]


def launch(
    launcher_args: list[str], args: list[str], expect: int = 0
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = run_group([str(DEEPSPEED), *launcher_args, *args], env)
    assert proc.returncode == expect, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def losses(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(ln)["loss"] for ln in lines]


@pytest.fixture(scope="module")
def setup(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("trainer")
    pairs = make_pairs(24, seed=5)
    write_records(tmp / "data.jsonl", pairs)
    ref, norms, ref_weights = reference_run(tiny_model, pairs, STEPS)
    return tmp, tiny_model, ref, norms, ref_weights


@pytest.mark.dist
@pytest.mark.slow
def test_two_rank_zero3_matches_plain_pytorch_and_exports_gathered_weights(setup) -> None:
    """micro 1 x accumulation 4 x 2 ranks, packing on: per-step losses, lr, exported weights."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file

    tmp, model_dir, ref, norms, ref_weights = setup
    out = tmp / "a"
    launch(
        ["--num_gpus", "2", "--master_port", str(free_port())],
        train_args(model_dir, tmp / "data.jsonl", out, micro_batch_size=1),
    )
    metrics = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    assert losses(out) == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert metrics[0]["lr"] == pytest.approx(1e-5, rel=1e-9)
    assert metrics[-1]["lr"] == pytest.approx(9e-6, rel=1e-9)
    # Adam + clipping hide a constant gradient scale from the losses: the norms expose it
    assert [m["grad_norm"] for m in metrics] == pytest.approx(norms, rel=1e-4)
    exported = load_file(out / "model.safetensors")
    zero = get_fp32_state_dict_from_zero_checkpoint(str(out / "checkpoints"), tag=f"step{STEPS}")
    assert sorted(exported) == sorted(zero) == sorted(ref_weights)
    for name, tensor in exported.items():
        assert torch.equal(tensor, zero[name]), name
        torch.testing.assert_close(tensor, ref_weights[name], rtol=1e-4, atol=1e-6)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["examples"] == 24 and manifest["plan"]["accumulation"] == 4
    reloaded = load_model(out)  # the next stage's input: a plain HF checkpoint directory
    assert torch.equal(reloaded.state_dict()["lm_head.weight"], exported["lm_head.weight"])
    # the stage is idempotent: same config and data -> skipped; another config -> refused
    argv = train_args(model_dir, tmp / "data.jsonl", out, micro_batch_size=1)[3:]
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert train_stage.run(cli.parse("train", argv)) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match="trained with another config or data"):
        train_stage.run(cli.parse("train", [*argv, "--lr=2e-5"]))


@pytest.mark.dist
@pytest.mark.slow
def test_stop_then_resume_on_2_ranks_and_on_1_rank_equal_the_reference(setup) -> None:
    """Stop file -> checkpoint of step 1 + exit 75. Resume it (a) on 2 ranks, micro 2 x
    accumulation 2, (b) on 1 rank, micro 4 x accumulation 2, through a universal checkpoint."""
    tmp, model_dir, ref, _, _ = setup
    out, stop = tmp / "b", tmp / "stop"
    stop.write_text("")
    args = train_args(model_dir, tmp / "data.jsonl", out, micro_batch_size=2, stop_file=stop)
    launch(["--num_gpus", "2", "--master_port", str(free_port())], args, expect=EXIT_PREEMPTED)
    assert losses(out) == pytest.approx(ref[:1], rel=1e-5)
    assert (out / "checkpoints" / "step1").is_dir() and not (out / "model.safetensors").exists()
    stop.unlink()
    shutil.copytree(out, tmp / "c")
    proc = launch(["--num_gpus", "2", "--master_port", str(free_port())], args)
    assert "resumed from" in proc.stdout + proc.stderr
    assert losses(out) == pytest.approx(ref, rel=1e-5, abs=1e-6)

    one = train_args(model_dir, tmp / "data.jsonl", tmp / "c", micro_batch_size=4)
    launch(["--num_gpus", "1", "--master_port", str(free_port())], one)
    assert (tmp / "c" / "checkpoints" / "step1_universal" / "zero").is_dir()
    assert losses(tmp / "c") == pytest.approx(ref, rel=1e-5, abs=1e-6)


@pytest.mark.dist
@pytest.mark.slow
def test_two_nodes_without_packing_equal_the_reference(setup, spawn: Spawner) -> None:
    """Two launchers (--no_ssh, node_rank 0/1, one process each) train together; padded batches."""
    tmp, model_dir, ref, _, _ = setup
    out, port = tmp / "d", free_port()
    args = train_args(model_dir, tmp / "data.jsonl", out, micro_batch_size=2, packing=False)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    hostfile = tmp / "hostfile"  # names only: with --no_ssh nothing connects to them
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    procs = [
        spawn.popen(
            [
                str(DEEPSPEED),
                "--hostfile",
                str(hostfile),
                "--no_ssh",
                "--node_rank",
                str(rank),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                *args,
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert losses(out) == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert json.loads((out / "manifest.json").read_text())["plan"]["dp"] == 2


@pytest.mark.dist
@pytest.mark.slow
def test_a_diverging_loss_stops_every_rank_naming_the_step(setup) -> None:
    """lr 1e30: the first update blows the weights up; step 2's gradient norm is infinite
    (DeepSpeed would silently skip such steps: the loss stays finite at ln(vocab))."""
    tmp, model_dir, _, _, _ = setup
    args = train_args(model_dir, tmp / "data.jsonl", tmp / "nan", max_steps=3, lr=1e30)
    proc = launch(["--num_gpus", "2", "--master_port", str(free_port())], args, expect=1)
    log = proc.stdout + proc.stderr
    assert log.count("FloatingPointError: grad norm is inf at step 2") == 2  # both ranks
    assert len(losses(tmp / "nan")) == 1


@pytest.mark.dist
@pytest.mark.slow
def test_resume_with_dropout_draws_the_same_masks(setup) -> None:
    """Paper dropout 0.1: stopped after step 1 and resumed == uninterrupted, step for step."""
    tmp, model_dir, ref, _, _ = setup
    stop = tmp / "stop-dropout"
    kw = {"max_steps": 4, "dropout": 0.1, "micro_batch_size": 2}
    full = train_args(model_dir, tmp / "data.jsonl", tmp / "e-full", **kw)
    launch(["--num_gpus", "2", "--master_port", str(free_port())], full)
    stop.write_text("")
    part = train_args(model_dir, tmp / "data.jsonl", tmp / "e-part", stop_file=stop, **kw)
    launch(["--num_gpus", "2", "--master_port", str(free_port())], part, expect=EXIT_PREEMPTED)
    stop.unlink()
    launch(["--num_gpus", "2", "--master_port", str(free_port())], part)
    assert losses(tmp / "e-part") == pytest.approx(losses(tmp / "e-full"), rel=1e-6)
    assert losses(tmp / "e-full")[0] != pytest.approx(ref[0], rel=1e-4)  # dropout is on
