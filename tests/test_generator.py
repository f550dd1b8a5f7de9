"""The DeepSpeed-Inference engine and the augment stage: batching, decoding parity, exactly-once.

Single-process tests run the engine in-process (deepspeed.init_inference, tp_size 1). The `dist`
tests launch `python -m humpback_ds augment` under the real `deepspeed` launcher on 2 CPU processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from procs import run_cli

from humpback_ds import modeling, prompts
from humpback_ds.config import AugmentConfig, ConfigError, GenerationConfig
from humpback_ds.generator import Generator, Job, record_seed, token_batches
from humpback_ds.parts import PartStore, Replica, refuse_overwrite
from humpback_ds.records import Candidate, Scored, Segment, load_records, write_records
from humpback_ds.stages import augment

ROOT = Path(__file__).resolve().parent.parent
OVERLAP = AugmentConfig.__dataclass_fields__["copy_overlap"].default  # 0.8

# Original sample texts of uneven length (the batching must sort them).
TEXTS = [
    "Tides follow the moon.",
    "A kettle whistles when steam squeezes through a narrow gap in its spout, and the pitch rises "
    "as the water nears the boil.",
    "Moss grows thickest where the shade is deep and the ground stays damp through the summer.",
    "Glass is made by melting sand with soda and lime, then cooling it quickly so it never forms "
    "crystals. Old windows are not thicker at the bottom because glass flows; they were simply "
    "installed that way by glaziers who put the heavy edge down.",
    "Bees dance to tell the hive where flowers are.",
    "A sundial only tells local solar time, which drifts from clock time by up to a quarter of an "
    "hour over the year.",
]


def write_segments(path: Path, n: int) -> list[Segment]:
    segs = [
        Segment(
            id=f"seg-{i:03d}",
            doc_id=f"doc-{i % 3}",
            header="Notes",
            text=f"{TEXTS[i % len(TEXTS)]} (note {i})",
        )
        for i in range(n)
    ]
    write_records(path, segs)
    return segs


def hf_greedy(model_dir: Path, prompt: str, max_new: int) -> list[int]:
    """Plain HF `generate`, one prompt, no padding: the reference of greedy parity."""
    tok, model = modeling.load_tokenizer(model_dir), modeling.load_model(model_dir)
    ids = torch.tensor([tok(prompt)["input_ids"]])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )[0, ids.shape[1] :].tolist()
    return out[:-1] if out and out[-1] == tok.eos_token_id else out


def test_token_budget_batches_are_length_sorted() -> None:
    jobs = [Job(f"j{i}", [[0] * n]) for i, n in enumerate([9, 3, 5, 3, 20, 7])]
    batches = token_batches(jobs, budget=40, new_tokens=5)
    # sorted by (length, id): 3,3,5,7,9,20; rows * (longest + 5) <= 40
    assert [[j.id for j in b] for b in batches] == [["j1", "j3", "j2"], ["j5", "j0"], ["j4"]]
    assert all(len(b) * (max(j.width for j in b) + 5) <= 40 for b in batches[:2])
    # a job over budget runs alone; multi-row jobs count every row
    two = [Job("a", [[0] * 4, [0] * 4]), Job("b", [[0] * 4, [0] * 4])]
    assert [[j.id for j in b] for b in token_batches(two, budget=23, new_tokens=2)] == [
        ["a"],
        ["b"],
    ]


def test_record_seed_is_stable_and_distinct() -> None:
    assert record_seed(0, "seg-001") == record_seed(0, "seg-001")
    seeds = {record_seed(s, k) for s in (0, 1) for k in ("seg-001", "seg-002", "seg-001/1")}
    assert len(seeds) == 6 and all(0 <= s < 2**63 for s in seeds)


def test_greedy_matches_hf_generate_and_sampling_ignores_batch(tiny_model: Path) -> None:
    gen = Generator(GenerationConfig(model=str(tiny_model), greedy=True, token_budget=10_000))
    texts = [prompts.backward_prompt(t) for t in TEXTS]
    rows = [gen.encode(t) for t in texts]
    # one left-padded batch of all six prompts vs plain generate on each prompt alone
    outs = gen.generate_ids(rows, [0] * len(rows), 12)
    for text, out in zip(texts, outs, strict=True):
        assert out == hf_greedy(tiny_model, text, 12)
    assert len({len(r) for r in rows}) > 3  # the batch really was padded
    # sampling: a row's tokens depend on its seed, not on its batch neighbours
    gen.cfg = GenerationConfig(model=str(tiny_model), temperature=0.7, top_p=0.9)
    alone = gen.generate_ids([rows[3]], [11], 12)[0]
    batched = gen.generate_ids(rows, [5, 6, 7, 11, 8, 9], 12)
    assert batched[3] == alone
    assert gen.generate_ids([rows[3]], [12], 12)[0] != alone


def test_part_store_ignores_torn_line_and_refuses_other_runs(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    store = PartStore(out, Replica(0, 1, 0, 1), {"config": {"a": 1}})
    store.check()
    store.append(
        [
            {"id": "b", "record": {"id": "b", "v": 2}, "reason": ""},
            {"id": "c", "record": None, "reason": "empty"},
        ]
    )
    with store.own.open("a") as fh:
        fh.write('{"id": "a", "record": {"id": "a", "v"')  # killed mid-write
    assert store.done_ids() == {"b", "c"}
    store.append([{"id": "a", "record": {"id": "a", "v": 1}, "reason": ""}])
    assert store.own.read_text().count("\n") == 3  # the torn tail was replaced
    written, reasons = store.merge()
    assert (written, dict(reasons)) == (2, {"empty": 1})
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["a", "b"]
    with pytest.raises(ConfigError, match="another config"):
        PartStore(out, Replica(0, 1, 0, 1), {"config": {"a": 2}}).check()


def test_refuse_overwrite_names_the_input_flag(tmp_path: Path) -> None:
    out = str(tmp_path / "out.jsonl")
    refuse_overwrite("judge", out, outputs=str(tmp_path / "a.json"), reference="b.json")
    with pytest.raises(ConfigError, match=r"judge: --output .* would overwrite --reference"):
        refuse_overwrite(
            "judge", out, outputs="a.json", reference=str(tmp_path / "." / "out.jsonl")
        )


def test_drop_reasons() -> None:
    text = "Copper turns green because it reacts with air and water over many years."
    assert augment.drop_reason("   ", text, 100, OVERLAP) == "empty"
    assert (
        augment.drop_reason("Why does copper turn green? " * 10, text, 100, OVERLAP) == "overlong"
    )
    copied = "copper turns green because it reacts"
    assert augment.drop_reason(copied, text, 100, OVERLAP) == "copy of the text"
    assert augment.drop_reason("Copper", text, 100, OVERLAP) == "copy of the text"
    assert augment.drop_reason("Why does old copper change colour?", text, 100, OVERLAP) == ""
    # 1 of its 2 trigrams ("reacts with air") is copied: below the default overlap (0.8), a copy at 0.5
    assert not augment.is_copy("reacts with air today", text, OVERLAP)
    assert augment.is_copy("reacts with air today", text, 0.5)


def test_augment_stage_single_process(tiny_model: Path, tmp_path: Path) -> None:
    segs = write_segments(tmp_path / "segments.jsonl", 8)
    long = Segment(id="seg-long", doc_id="doc-9", header="Notes", text=" ".join(TEXTS) * 12)
    segs.append(long)  # ~9,000 characters: more tokens than the tiny model's 2,048 positions
    write_records(tmp_path / "segments.jsonl", segs)
    cfg = AugmentConfig(
        model=str(tiny_model),
        segments=str(tmp_path / "segments.jsonl"),
        output=str(tmp_path / "cand.jsonl"),
        max_new_tokens=10,
        max_instruction_chars=30,
        token_budget=1500,
    )
    out = augment.run(cfg)
    cands = load_records(out, Candidate)
    manifest = json.loads((tmp_path / "cand.jsonl.manifest.json").read_text())
    dropped = sum(manifest["rejected"].values())
    assert len(cands) + dropped == len(segs) == manifest["counts"]["segments"]
    assert manifest["counts"]["candidates"] == manifest["counts"]["written"] == len(cands)
    assert manifest["rejected"]["too long for the model"] == 1
    assert [c.id for c in cands] == sorted(c.id for c in cands) and "seg-long" not in {
        c.id for c in cands
    }
    by_id = {s.id: s for s in segs}
    for c in cands:
        assert c.output == by_id[c.segment_id].text and 0 < len(c.instruction) <= 30
        assert c.lineage["seed"] == record_seed(0, c.id)
        assert c.lineage["decoding"] == {
            "greedy": False,
            "temperature": 0.7,
            "top_p": 0.9,
            "max_new_tokens": 10,
        }
    # a second run with the same settings resumes everything and rewrites the same file
    first = out.read_bytes()
    augment.run(cfg)
    assert out.read_bytes() == first
    assert json.loads((tmp_path / "cand.jsonl.manifest.json").read_text())["counts"]["resumed"] == 9


def augment_cmd(model: Path, segs: Path, out: Path, *extra: str) -> list[str]:
    """`humpback-ds augment ...` arguments; later options in `extra` win."""
    return [
        "augment",
        f"--model={model}",
        f"--segments={segs}",
        f"--output={out}",
        "--max_new_tokens=12",
        "--token_budget=900",
        *extra,
    ]


@pytest.mark.dist
@pytest.mark.slow
def test_tp2_greedy_matches_hf_generate(tiny_model: Path, tmp_path: Path) -> None:
    segs = write_segments(tmp_path / "segments.jsonl", 6)
    out = tmp_path / "tp2.jsonl"
    run_cli(augment_cmd(tiny_model, tmp_path / "segments.jsonl", out, "--tp_size=2", "--greedy"), 2)
    tok = modeling.load_tokenizer(tiny_model)
    got = {c.id: c.instruction for c in load_records(out, Candidate)}
    want = {}
    for s in segs:
        text = tok.decode(
            hf_greedy(tiny_model, prompts.backward_prompt(s.text), 12), skip_special_tokens=True
        ).strip()
        if not augment.drop_reason(text, s.text, 1000, OVERLAP):
            want[s.id] = text
    assert got == want and len(got) >= 4


@pytest.mark.dist
@pytest.mark.slow
def test_dp2_sampled_output_equals_one_process(tiny_model: Path, tmp_path: Path) -> None:
    write_segments(tmp_path / "segments.jsonl", 9)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    run_cli(augment_cmd(tiny_model, tmp_path / "segments.jsonl", one), 1)
    run_cli(augment_cmd(tiny_model, tmp_path / "segments.jsonl", two), 2)
    assert two.read_bytes() == one.read_bytes() and len(one.read_text().splitlines()) >= 7
    parts = sorted((tmp_path / "two.jsonl.parts").glob("part-*.jsonl"))
    assert [len(p.read_text().splitlines()) for p in parts] == [5, 4]  # round-robin over 2 replicas


@pytest.mark.slow
def test_kill_and_restart_gives_the_uninterrupted_file(tiny_model: Path, tmp_path: Path) -> None:
    write_segments(tmp_path / "segments.jsonl", 24)
    segs, ref, out = tmp_path / "segments.jsonl", tmp_path / "ref.jsonl", tmp_path / "out.jsonl"
    small = ("--max_new_tokens=16", "--token_budget=400")  # batches of 1-2 segments: many appends
    cfg = AugmentConfig(
        model=str(tiny_model),
        segments=str(segs),
        output=str(ref),
        max_new_tokens=16,
        token_budget=400,
    )
    augment.run(cfg)  # the uninterrupted reference, in-process
    cmd = [sys.executable, "-m", "humpback_ds", *augment_cmd(tiny_model, segs, out, *small)]
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    part = tmp_path / "out.jsonl.parts" / "part-00000.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not part.is_file() or part.read_text().count("\n") < 3):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = part.read_text().count("\n")
    assert 3 <= done < 24 and not out.exists()
    with part.open("a") as fh:
        fh.write('{"id": "seg-9')  # a torn last line, as a kill during a write leaves
    run_cli(augment_cmd(tiny_model, segs, out, *small), 1)
    assert out.read_bytes() == ref.read_bytes()
    ids = [json.loads(x)["id"] for x in part.read_text().splitlines()]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 24  # each segment exactly once
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    assert manifest["counts"]["resumed"] == done


def test_kernel_inject_refused_on_cpu(tiny_model: Path) -> None:
    with pytest.raises(ConfigError, match="needs a GPU"):
        Generator(GenerationConfig(model=str(tiny_model), kernel_inject=True))


def test_literal_special_tokens_in_text_are_data(tiny_model: Path) -> None:
    gen = Generator(GenerationConfig(model=str(tiny_model)))
    ids = gen.encode(prompts.backward_prompt("A page that ends with </s> and <s> in its text."))
    eos, bos = gen.tokenizer.eos_token_id, gen.tokenizer.bos_token_id
    assert eos not in ids and ids.count(bos) == 1 and ids[0] == bos


def test_scoring_whole_continuations_matches_plain_model(tiny_model: Path) -> None:
    gen = Generator(GenerationConfig(model=str(tiny_model), token_budget=10_000))
    model = modeling.load_model(tiny_model)
    contexts = ["[INST] Is the kettle boiling? [/INST]", "[INST] Pick a colour. [/INST] I pick"]
    choices = [" yes", " no, not yet", " perhaps"]  # differ in several tokens: one row per choice
    jobs = [gen.choice_job(f"j{i}", c, choices) for i, c in enumerate(contexts)]
    assert all(len(j.rows) == 3 for j in jobs)
    digits = gen.choice_job("d", contexts[0], [" 1", " 2", " 3"])  # differ in the last token only
    assert len(digits.rows) == 1 and all(len(t) == 2 for t in digits.targets)  # "▁" + digit
    got = gen.score([*jobs, digits])
    for context, job_choices, scores in [
        (contexts[0], choices, got[0]),
        (contexts[1], choices, got[1]),
        (contexts[0], [" 1", " 2", " 3"], got[2]),
    ]:
        ctx = gen.encode(context)
        for choice, score in zip(job_choices, scores, strict=True):
            full = gen.encode(context + choice)
            start = next(i for i in range(len(full)) if i >= len(ctx) or full[i] != ctx[i])
            with torch.no_grad():
                lp = model(torch.tensor([full])).logits[0].log_softmax(-1)
            want = sum(float(lp[p - 1, full[p]]) for p in range(start, len(full)))
            assert score == pytest.approx(want, abs=1e-4)


@pytest.mark.dist
@pytest.mark.slow
def test_two_tp2_replicas_score_like_one_process(tiny_model: Path, tmp_path: Path) -> None:
    """4 processes = 2 replicas x TP 2: explicit replica groups, logprob scoring under AutoTP.

    Without the explicit groups init_inference would put every rank in group [0, 1]; without
    `_avoid_world_shm_allreduce` DeepSpeed's CPU all-reduce sums over all 4 ranks (checked:
    the output then differs)."""
    cands = [
        Candidate(id=f"c{i}", segment_id=f"s{i}", instruction=f"Explain note {i}.", output=t)
        for i, t in enumerate(TEXTS)
    ]
    write_records(tmp_path / "cand.jsonl", cands)
    common = [
        "curate",
        f"--model={tiny_model}",
        "--mode=logprob",
        f"--candidates={tmp_path / 'cand.jsonl'}",
        "--token_budget=2000",
    ]
    run_cli([*common, f"--output={tmp_path / 'one.jsonl'}"], 1)
    run_cli([*common, f"--output={tmp_path / 'four.jsonl'}", "--tp_size=2"], 4)
    one = load_records(tmp_path / "one.jsonl", Scored)
    four = load_records(tmp_path / "four.jsonl", Scored)
    assert [s.id for s in four] == [s.id for s in one] == [f"c{i}" for i in range(6)]
    for a, b in zip(one, four, strict=True):
        assert b.probs == pytest.approx(a.probs, abs=1e-5) and b.score == a.score
    parts = sorted((tmp_path / "four.jsonl.parts").glob("part-*.jsonl"))
    assert [len(p.read_text().splitlines()) for p in parts] == [3, 3]  # only TP rank 0 writes


def test_shared_prefix_is_computed_once_with_same_results(tiny_model: Path) -> None:
    """Curation prompts share the ~1,400-token rubric: it runs once per batch, and greedy output
    is still plain HF `generate` token for token."""
    texts = [prompts.curation_prompt(f"Explain note {i}.", t) for i, t in enumerate(TEXTS[:4])]

    def forwards(shared_prefix_min: int) -> tuple[list[list[int]], list[list[int]], list[int]]:
        """(rows, greedy outputs, input widths of every forward pass)."""
        cfg = GenerationConfig(
            model=str(tiny_model), greedy=True, shared_prefix_min=shared_prefix_min
        )
        gen = Generator(cfg)
        rows = [gen.encode(t) for t in texts]
        calls: list[int] = []
        hook = gen.model.register_forward_pre_hook(
            lambda _m, args, kw: calls.append(kw["input_ids"].shape[1]), with_kwargs=True
        )
        outs = gen.generate_ids(rows, [0] * 4, 6)
        hook.remove()
        return rows, outs, calls

    default = GenerationConfig.__dataclass_fields__["shared_prefix_min"].default
    rows, outs, calls = forwards(default)
    shared = next(i for i in range(len(rows[0])) if len({tuple(r[: i + 1]) for r in rows}) > 1)
    longest = max(len(r) for r in rows)
    # prefix once, then the left-padded tails, then one token per decoding step
    assert shared > 1000 and calls == [shared, longest - shared, 1, 1, 1, 1, 1]
    for text, out in zip(texts, outs, strict=True):
        assert out == hf_greedy(tiny_model, text, 6)
    # a shared_prefix_min above the shared length: whole prompts in one pass, the same tokens
    _, unshared_outs, unshared_calls = forwards(shared + 1)
    assert unshared_calls == [longest, 1, 1, 1, 1, 1] and unshared_outs == outs
