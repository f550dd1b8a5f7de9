"""The ZeRO-3 SFT loop: deepspeed.initialize, token-weighted engine.backward, engine.step.

Decisions (tested in tests/test_trainer.py):
- Loss = sum of target-token cross-entropies of the optimizer step / the step's GLOBAL number of
  target tokens, whatever the micro batch, accumulation or number of ranks. Every rank knows the
  whole step's examples (sft_data.step_positions), so the global count needs no communication.
  Each micro step calls engine.backward(sum * dp / count, scale_wrt_gas=False): DeepSpeed divides
  by neither GAS (scale_wrt_gas=False) nor anything else except the data-parallel mean of the
  gradient reduction, which the factor dp undoes.
- Accumulation is DeepSpeed's own (fixed gradient_accumulation_steps, engine.step after every
  micro step): with packing each micro step is one row of micro_batch_size examples, so every rank
  runs exactly `accumulation` micro steps.
- Learning rate: torch.optim.AdamW as client optimizer, LambdaLR from lr at the first step to the
  absolute final_lr at the last step, linearly (METHOD.md 'Training recipe').
- Dropout is reseeded at every step from (seed, step, rank): a resumed run draws the same masks.
- A lost rank (killed, node down, hung): the survivors' next collective fails (at once for a
  closed connection, after dist.collective_timeout() otherwise) and train() re-raises it as
  liveness.RankLost naming the lost rank, host and pid; rerun the same command to resume.
- Pre-emption: SIGUSR1/SIGTERM or cfg.stop_file -> checkpoint at the next step boundary and exit
  with EXIT_PREEMPTED (75, EX_TEMPFAIL): not 0, so `afterok` dependents do not start; rerun (or
  requeue) the same command to resume.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as td
from rich.progress import TextColumn

from humpback_ds import console, dist, liveness
from humpback_ds.config import ConfigError, TrainConfig
from humpback_ds.sft_data import Example, collate, micro_groups, step_positions, sum_loss

EXIT_PREEMPTED = 75
KEEP_CHECKPOINTS = 2


class Preempted(SystemExit):
    """Raised after the pre-emption checkpoint is written; exits the process with code 75."""

    def __init__(self, step: int):
        super().__init__(EXIT_PREEMPTED)
        self.step = step


@dataclass(frozen=True)
class BatchPlan:
    """global_batch examples per step = micro x accumulation x dp (data-parallel ranks)."""

    global_batch: int
    micro: int
    accumulation: int
    dp: int
    steps: int


def plan_batch(global_batch: int, micro: int, dp: int, steps: int) -> BatchPlan:
    if micro < 1 or global_batch < 1 or steps < 1:
        raise ConfigError(
            f"global_batch_size ({global_batch}), micro_batch_size ({micro}) and "
            f"max_steps ({steps}) must be positive"
        )
    if global_batch % (micro * dp):
        fix = f"--global_batch_size as a multiple of {micro * dp}"
        if global_batch % dp == 0:
            fix += f", or a --micro_batch_size dividing {global_batch // dp}"
        raise ConfigError(
            f"global_batch_size={global_batch} is not divisible by micro_batch_size={micro} x "
            f"{dp} data-parallel ranks; choose {fix}"
        )
    return BatchPlan(global_batch, micro, global_batch // (micro * dp), dp, steps)


def lr_factor(step: int, steps: int, lr: float, final_lr: float) -> float:
    """Multiplier of lr at optimizer step `step` (0-based): lr at 0, final_lr at steps - 1."""
    if steps <= 1:
        return 1.0
    return 1.0 + (final_lr / lr - 1.0) * min(step, steps - 1) / (steps - 1)


def _check_owned(raw: dict[str, Any], key: str, value: Any, source: str, field: str) -> None:
    """Fill the dotted `key` of a DeepSpeed config with the train config's value, or refuse."""
    *parents, leaf = key.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
    current = node.get(leaf, "auto")
    if current != "auto" and current != value:
        raise ConfigError(
            f"{source}: '{key}' is {current!r} but the train config gives {value!r} (from "
            f'{field}); set it to "auto" or remove it: the train config owns this field'
        )
    node[leaf] = value


def fill_ds_config(
    raw: dict[str, Any], source: str, cfg: TrainConfig, plan: BatchPlan, bf16: bool
) -> dict[str, Any]:
    """The DeepSpeed config with every field the train config owns filled and checked."""
    raw = json.loads(json.dumps(raw))
    owned = [
        ("train_batch_size", plan.global_batch, "global_batch_size"),
        ("train_micro_batch_size_per_gpu", plan.micro, "micro_batch_size"),
        ("gradient_accumulation_steps", plan.accumulation, "global / (micro x ranks)"),
        ("bf16.enabled", bf16, "precision"),
        ("fp16.enabled", False, "precision (fp16 is not supported)"),
    ]
    opt = raw.pop("optimizer", None)
    if opt is not None:
        params = opt.get("params", {})
        owned += [
            (f"optimizer.params.{k}", v, f)
            for k, v, f in (
                ("lr", cfg.lr, "lr"),
                ("weight_decay", cfg.weight_decay, "weight_decay"),
                ("betas", [cfg.adam_beta1, cfg.adam_beta2], "adam_beta1/adam_beta2"),
            )
            if k in params
        ]
        raw["optimizer"] = {"params": params}
    if raw.get("scheduler", "auto") != "auto":
        raise ConfigError(
            f"{source}: remove 'scheduler': the schedule is the train config's "
            "(linear from --lr to --final_lr)"
        )
    raw.pop("scheduler", None)
    for key, value, field in owned:
        _check_owned(raw, key, value, source, field)
    raw.pop("optimizer", None)  # torch.optim.AdamW is passed as the client optimizer
    return raw


class StopRequest:
    """SIGUSR1/SIGTERM or the stop file: polled at step boundaries, agreed on by all ranks."""

    def __init__(self, stop_file: str):
        self.stop_file = Path(stop_file) if stop_file else None
        self.signalled = False
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signalled = True

    def requested(self, device: torch.device) -> bool:
        flag = self.signalled or bool(self.stop_file and self.stop_file.exists())
        t = torch.tensor([float(flag)], device=device)
        if td.is_initialized():
            td.all_reduce(t, op=td.ReduceOp.MAX)
        return bool(t.item())


def make_optimizer(model: Any, cfg: TrainConfig, ds_config: dict[str, Any]) -> Any:
    """AdamW (paper §4.1, betas from LIMA). torch's on the device; DeepSpeed's CPU Adam when the
    config offloads the optimizer (ZeRO refuses a torch optimizer there, and it would be slow)."""
    kwargs = {
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "betas": (cfg.adam_beta1, cfg.adam_beta2),
    }
    offload = ds_config.get("zero_optimization", {}).get("offload_optimizer", {})
    if offload.get("device") == "cpu":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(model.parameters(), adamw_mode=True, **kwargs)
    return torch.optim.AdamW(model.parameters(), **kwargs)


class Trainer:
    """Runs the optimizer steps of one fine-tuning job on a DeepSpeed ZeRO-3 engine."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: torch.nn.Module,
        examples: list[Example],
        plan: BatchPlan,
        ds_config: dict[str, Any],
        pad_id: int,
        resume_tag: str | None = None,
    ):
        import deepspeed

        self.cfg, self.examples, self.plan, self.pad_id = cfg, examples, plan, pad_id
        self.resume_tag = resume_tag
        self.out = Path(cfg.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        optimizer = make_optimizer(model, cfg, ds_config)
        sched = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, plan.steps, cfg.lr, cfg.final_lr)
        )
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=sched, config=ds_config
        )
        self.stop = StopRequest(cfg.stop_file)

    def train(self) -> list[dict[str, Any]]:
        """All remaining steps; returns the metrics of the steps run now. A lost rank makes the
        others raise liveness.RankLost naming it, within the collective timeout at the latest."""
        hint = f"Rerun the same command to resume from the last checkpoint in {self.ckpt_dir}"
        with liveness.lost_rank_guard(hint):
            return self._train()

    def _train(self) -> list[dict[str, Any]]:
        start = self._resume()
        done: list[dict[str, Any]] = []
        bar = console.progress("step", extra=[TextColumn("{task.fields[info]}")])
        with bar:
            task = bar.add_task("train", total=self.plan.steps, completed=start, info="")
            for step in range(start, self.plan.steps):
                m = self._step(step)
                done.append(m)
                if dist.is_main() and (
                    step % self.cfg.log_every == 0 or step == self.plan.steps - 1
                ):
                    with (self.out / "metrics.jsonl").open("a", encoding="utf-8") as f:
                        f.write(json.dumps(m) + "\n")
                info = f"loss {m['loss']:.4f} lr {m['lr']:.3e} {m['tokens_per_s']:,.0f} tok/s"
                bar.update(task, advance=1, info=info)
                last = step + 1 == self.plan.steps
                if last or (self.cfg.save_every and (step + 1) % self.cfg.save_every == 0):
                    self.save(step + 1)
                if not last and self.stop.requested(self.engine.device):
                    if not (self.cfg.save_every and (step + 1) % self.cfg.save_every == 0):
                        self.save(step + 1)
                    dist.print0(
                        f"pre-empted: checkpoint of step {step + 1} saved in "
                        f"{self.ckpt_dir}; rerun the same command to resume"
                    )
                    raise Preempted(step + 1)
        return done

    def _step(self, step: int) -> dict[str, Any]:
        """One optimizer step: every micro step's backward is token-weighted over the step."""
        t0 = time.perf_counter()
        rank, plan, ex = dist.rank(), self.plan, self.examples
        torch.manual_seed(self.cfg.seed + 1_000_003 * step + 7_919 * rank)
        indices = step_positions(len(ex), plan.global_batch, step, self.cfg.seed)
        targets = sum(ex[i].num_targets for i in indices)
        tokens = sum(len(ex[i].input_ids) for i in indices)
        lr = self.engine.get_lr()[0]
        total = torch.zeros((), device=self.engine.device)
        for group in micro_groups(indices, rank, plan.dp, plan.micro):
            batch = collate([ex[i] for i in group], self.cfg.packing, self.pad_id)
            batch = {k: v.to(self.engine.device) for k, v in batch.items()}
            loss_sum = sum_loss(self.engine, batch)
            self.engine.backward(loss_sum * plan.dp / targets, scale_wrt_gas=False)
            self.engine.step()
            total += loss_sum.detach()
        if td.is_initialized():
            td.all_reduce(total)
        loss = total.item() / targets
        norm = self.engine.get_global_grad_norm()
        # same values on every rank (all-reduced), so every rank raises; no loss scaling is used
        # (fp32 / bf16), so a non-finite gradient is divergence, not an overflow to skip
        for what, value in (("loss", loss), ("grad norm", norm)):
            if value is not None and not math.isfinite(value):
                raise FloatingPointError(
                    f"{what} is {value} at step {step + 1}; lower --lr, check the data of this "
                    f"step (examples {indices[:8]}...) or resume from an earlier checkpoint"
                )
        dt = time.perf_counter() - t0
        return {
            "step": step + 1,
            "loss": loss,
            "lr": lr,
            "tokens": tokens,
            "target_tokens": targets,
            "tokens_per_s": tokens / dt,
            "grad_norm": None if norm is None else float(norm),
        }

    def save(self, step: int) -> None:
        """A resumable DeepSpeed checkpoint; older ones beyond KEEP_CHECKPOINTS are removed.
        'latest' names it only once every rank has written its part (DeepSpeed's rank 0 would
        write it after its own part: a rank lost meanwhile left a partial checkpoint as latest)."""
        tag = f"step{step}"
        self.engine.save_checkpoint(
            str(self.ckpt_dir), tag=tag, client_state={"step": step}, save_latest=False
        )
        dist.barrier()
        if dist.is_main():
            tmp = self.ckpt_dir / "latest.tmp"
            tmp.write_text(tag, encoding="utf-8")
            tmp.replace(self.ckpt_dir / "latest")
            steps = {
                p: int(m[1])
                for p in self.ckpt_dir.iterdir()
                if (m := re.fullmatch(r"step(\d+)(_universal)?", p.name))
            }
            kept = sorted(set(steps.values()))[-KEEP_CHECKPOINTS:]
            for old, n in steps.items():
                if n not in kept:
                    shutil.rmtree(old, ignore_errors=True)

    def _resume(self) -> int:
        """Load the checkpoint `resume_tag` when given; trim metrics lines written after it."""
        if self.resume_tag is None:
            return 0
        _, client = self.engine.load_checkpoint(str(self.ckpt_dir), tag=self.resume_tag)
        step = int(client["step"])
        metrics = self.out / "metrics.jsonl"
        if dist.is_main() and metrics.is_file():
            lines = metrics.read_text(encoding="utf-8").splitlines()
            kept = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= step]
            metrics.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
        dist.print0(f"resumed from {self.ckpt_dir} at step {step}")
        return step

    def consolidated_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The full weights gathered layer by layer onto rank 0 (None on other ranks)."""
        return self.engine._zero3_consolidated_16bit_state_dict()
