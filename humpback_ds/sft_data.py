"""Supervised fine-tuning data: Pair -> token ids with the prompt masked, step plans, batches.

Decisions (tested in tests/test_sft_data.py):
- `backward` trains p(instruction | output): prompt = backward_prompt(output), target = instruction.
  `seed` / `iteration` train p(output | instruction): prompt = forward_prompt(instruction),
  target = output. Sequence = BOS + prompt + target + EOS; labels are IGNORE on BOS and the prompt,
  so the loss covers the target tokens and the closing EOS only (METHOD.md 'Training recipe').
- Truncation to max_seq_len keeps the target first: it gets at least half the budget (more when the
  prompt is short) and loses its tail (and EOS) when longer; the prompt loses its HEAD, so its
  closing `[/INST]` always sits right before the target.
- Data order is a pure function of (seed, step): epoch e is a seeded permutation of the examples,
  epochs are concatenated, and optimizer step s takes stream positions [s*G, (s+1)*G). Resuming
  at step s therefore sees exactly the examples the uninterrupted run saw.
- Inside a step, rank r takes positions r, r+dp, r+2dp, ... (dist.shard) and splits its share into
  `accumulation` micro groups of `micro_batch_size` examples. Every rank runs the same number of
  micro steps (ZeRO-3 gathers parameters collectively in every forward).
- Packing: a micro group becomes ONE row [1, sum of lengths] with position ids restarting at 0 for
  each example and no attention mask; the model must run with use_cache=False so the position ids
  keep examples from attending to each other (DEEPSPEED_NOTES 'Packing'). No padding at all.
  Unpacked: the group is right-padded to its longest example with an attention mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from humpback_ds.prompts import backward_prompt, forward_prompt
from humpback_ds.records import Pair

IGNORE = -100  # label of a token that carries no loss (torch cross_entropy's ignore_index)
TASKS = ("backward", "seed", "iteration")


@dataclass(frozen=True)
class Example:
    """One tokenized training example."""

    input_ids: list[int]
    labels: list[int]  # IGNORE on the prompt
    truncated: bool = False

    @property
    def num_targets(self) -> int:
        """Tokens with a loss: every label that is not IGNORE (shifting drops none: label 0 is BOS)."""
        return sum(1 for t in self.labels if t != IGNORE)


def prompt_and_target(pair: Pair, task: str) -> tuple[str, str]:
    """The (prompt, target) texts of a pair for a training task."""
    if task == "backward":
        return backward_prompt(pair.output), pair.instruction
    if task in ("seed", "iteration"):
        return forward_prompt(pair.instruction), pair.output
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def encode(pair: Pair, tokenizer: Any, task: str, max_seq_len: int) -> Example:
    """Tokenize a pair: BOS + prompt (masked) + target + EOS, truncated to max_seq_len.

    Text is data, never control: a literal "</s>" in a web page is encoded as its characters
    (split_special_tokens), so the only EOS is the one that ends the target.
    """
    prompt_text, target_text = prompt_and_target(pair, task)
    kw = {"add_special_tokens": False, "split_special_tokens": True}
    prompt = tokenizer(prompt_text, **kw)["input_ids"]
    target = tokenizer(target_text, **kw)["input_ids"] + [tokenizer.eos_token_id]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    budget = max_seq_len - len(bos)
    truncated = len(prompt) + len(target) > budget
    if truncated:
        target = target[: max(budget - len(prompt), budget // 2)]
        prompt = prompt[len(prompt) - (budget - len(target)) :] if budget > len(target) else []
    ids = bos + prompt + target
    return Example(ids, [IGNORE] * (len(bos) + len(prompt)) + target, truncated)


def step_positions(num_examples: int, global_batch: int, step: int, seed: int) -> list[int]:
    """Indices of the examples optimizer step `step` trains on (a function of seed and step)."""
    perms: dict[int, np.ndarray] = {}
    out = []
    for pos in range(step * global_batch, (step + 1) * global_batch):
        epoch, offset = divmod(pos, num_examples)
        if epoch not in perms:
            perms[epoch] = np.random.default_rng([seed, epoch]).permutation(num_examples)
        out.append(int(perms[epoch][offset]))
    return out


def micro_groups(indices: list[int], rank: int, world: int, micro: int) -> list[list[int]]:
    """This rank's share of a step's examples, split into micro groups of `micro` examples."""
    mine = indices[rank::world]
    assert len(mine) % micro == 0, (len(mine), micro)
    return [mine[i : i + micro] for i in range(0, len(mine), micro)]


def collate_packed(examples: list[Example]) -> dict[str, torch.Tensor]:
    """One row [1, total]: examples back to back, position ids restart per example, no mask."""
    ids = [t for e in examples for t in e.input_ids]
    labels = [t for e in examples for t in e.labels]
    pos = [p for e in examples for p in range(len(e.input_ids))]
    return {
        "input_ids": torch.tensor([ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([pos]),
    }


def collate_padded(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded [n, longest] batch with an attention mask; padding labels are IGNORE."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), IGNORE)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def collate(examples: list[Example], packing: bool, pad_id: int) -> dict[str, torch.Tensor]:
    return collate_packed(examples) if packing else collate_padded(examples, pad_id)


def sum_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed cross-entropy over the target tokens of a batch (packed or padded)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits.float()
    labels = batch["labels"][:, 1:].to(logits.device)
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)),
        labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


def padding_fraction(groups: list[list[Example]], packing: bool) -> float:
    """Fraction of the positions computed that are padding (0 with packing)."""
    if packing:
        return 0.0
    real = sum(len(e.input_ids) for g in groups for e in g)
    computed = sum(len(g) * max(len(e.input_ids) for e in g) for g in groups)
    return 1.0 - real / computed if computed else 0.0
