"""sft_data: prompt masking, truncation, data order, packing without cross-example attention."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from humpback_ds.modeling import load_model, load_tokenizer
from humpback_ds.prompts import backward_prompt, forward_prompt
from humpback_ds.records import Pair
from humpback_ds.sft_data import (
    IGNORE,
    collate_packed,
    collate_padded,
    encode,
    micro_groups,
    padding_fraction,
    step_positions,
    sum_loss,
)

WORDS = [
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
]


def make_pairs(n: int, seed: int = 0) -> list[Pair]:
    """Original toy pairs with a spread of lengths (3 to 40 words of output)."""
    r = random.Random(seed)
    return [
        Pair(
            id=f"p{i}",
            instruction=f"Describe the {r.choice(WORDS)} near the {r.choice(WORDS)}.",
            output=" ".join(r.choice(WORDS) for _ in range(r.randint(3, 40))) + ".",
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tok(tiny_model: Path):
    return load_tokenizer(tiny_model, padding_side="right")


@pytest.fixture(scope="module")
def model(tiny_model: Path):
    return load_model(tiny_model, dropout=0.0)


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_seed_task_masks_the_prompt_and_ends_with_eos(tok) -> None:
    pair = Pair(id="a", instruction="Name a cobalt lantern.", output="The orchard lantern.")
    ex = encode(pair, tok, "seed", 512)
    prompt, target = ids(tok, forward_prompt(pair.instruction)), ids(tok, pair.output)
    assert ex.input_ids == [tok.bos_token_id] + prompt + target + [tok.eos_token_id]
    assert ex.labels == [IGNORE] * (1 + len(prompt)) + target + [tok.eos_token_id]
    assert ex.num_targets == len(target) + 1 and not ex.truncated


def test_literal_special_tokens_in_text_are_data(tok) -> None:
    pair = Pair(id="x", instruction="What ends a <s> sequence?", output="The marker </s> does.")
    ex = encode(pair, tok, "seed", 512)
    assert ex.input_ids.count(tok.eos_token_id) == 1 and ex.input_ids[-1] == tok.eos_token_id
    assert ex.input_ids.count(tok.bos_token_id) == 1 and ex.input_ids[0] == tok.bos_token_id
    target = [t for t in ex.labels if t != IGNORE]
    assert tok.decode(target[:-1]) == "The marker </s> does."


def test_backward_task_trains_the_instruction(tok) -> None:
    pair = Pair(id="a", instruction="Name a cobalt lantern.", output="The orchard lantern.")
    ex = encode(pair, tok, "backward", 512)
    prompt, target = ids(tok, backward_prompt(pair.output)), ids(tok, pair.instruction)
    assert ex.input_ids == [tok.bos_token_id] + prompt + target + [tok.eos_token_id]
    assert [t for t in ex.labels if t != IGNORE] == target + [tok.eos_token_id]
    assert encode(pair, tok, "iteration", 512) == encode(pair, tok, "seed", 512)
    with pytest.raises(ValueError, match="unknown task 'forward'"):
        encode(pair, tok, "forward", 512)


def test_truncation_keeps_the_prompt_tail_and_half_the_budget_for_the_target(tok) -> None:
    pair = Pair(id="a", instruction=" ".join(WORDS * 3), output=" ".join(WORDS * 4))
    ex = encode(pair, tok, "seed", 41)
    prompt, target = ids(tok, forward_prompt(pair.instruction)), ids(tok, pair.output)
    budget = 40  # max_seq_len minus BOS
    assert ex.truncated and len(ex.input_ids) == 41
    assert ex.num_targets == budget // 2  # target longer than half: cut to half, EOS lost
    assert ex.input_ids[1:21] == prompt[-20:]  # the prompt keeps its tail: "... [/INST]"
    assert ex.input_ids[21:] == target[:20]
    short = Pair(id="b", instruction="Hi.", output=" ".join(WORDS * 4))
    ex2 = encode(short, tok, "seed", 41)  # a short prompt leaves the rest to the target
    assert ex2.num_targets == budget - len(ids(tok, forward_prompt("Hi.")))


def test_data_order_is_a_function_of_seed_and_step() -> None:
    n, g = 10, 4
    steps = [step_positions(n, g, s, seed=7) for s in range(5)]
    stream = [i for s in steps for i in s]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert stream[:10] != stream[10:20]  # each epoch is its own permutation
    assert step_positions(n, g, 3, seed=7) == steps[3]  # a resumed run recomputes the same step
    assert step_positions(n, g, 3, seed=8) != steps[3]


def test_micro_groups_split_a_step_over_ranks_and_micro_steps() -> None:
    idx = list(range(100, 108))
    g0, g1 = micro_groups(idx, 0, 2, 2), micro_groups(idx, 1, 2, 2)
    assert g0 == [[100, 102], [104, 106]] and g1 == [[101, 103], [105, 107]]
    assert micro_groups(idx, 0, 1, 4) == [idx[:4], idx[4:]]


def test_packed_row_restarts_positions_and_has_no_mask(tok) -> None:
    exs = [encode(p, tok, "seed", 64) for p in make_pairs(3)]
    row = collate_packed(exs)
    lens = [len(e.input_ids) for e in exs]
    assert row["input_ids"].shape == (1, sum(lens)) and "attention_mask" not in row
    assert row["position_ids"][0].tolist() == [p for n in lens for p in range(n)]
    assert padding_fraction([exs], packing=True) == 0.0
    assert padding_fraction([exs], packing=False) == pytest.approx(1 - sum(lens) / (3 * max(lens)))


def test_packed_loss_equals_token_weighted_unpacked_loss(tok, model) -> None:
    exs = [encode(p, tok, "seed", 64) for p in make_pairs(4, seed=1)]
    with torch.no_grad():
        one_by_one = sum(sum_loss(model, collate_padded([e], tok.pad_token_id)) for e in exs)
        packed = sum_loss(model, collate_packed(exs))
        padded = sum_loss(model, collate_padded(exs, tok.pad_token_id))
        row = collate_packed(exs)
        row["position_ids"] = torch.arange(row["input_ids"].size(1))[None]  # one long sequence
        leaky = sum_loss(model, row)
    targets = sum(e.num_targets for e in exs)
    assert packed.item() / targets == pytest.approx(one_by_one.item() / targets, rel=1e-5)
    assert padded.item() == pytest.approx(one_by_one.item(), rel=1e-5)
    assert abs(leaky.item() - packed.item()) / targets > 1e-3  # the test sees cross-attention


def test_loss_is_cross_entropy_over_target_tokens_only(tok, model) -> None:
    pairs = make_pairs(3, seed=2)
    exs = [encode(p, tok, "seed", 64) for p in pairs]
    total, count = 0.0, 0
    with torch.no_grad():
        for p, e in zip(pairs, exs, strict=True):
            n_prompt = 1 + len(ids(tok, forward_prompt(p.instruction)))  # BOS + prompt
            logits = model(torch.tensor([e.input_ids])).logits[0]
            logp = torch.log_softmax(logits.double(), dim=-1)
            for pos in range(n_prompt, len(e.input_ids)):  # token pos is predicted at pos - 1
                total -= logp[pos - 1, e.input_ids[pos]].item()
                count += 1
        packed = sum_loss(model, collate_packed(exs)).item()
    assert count == sum(e.num_targets for e in exs)
    assert packed / count == pytest.approx(total / count, rel=1e-5)
