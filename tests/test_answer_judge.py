"""answer and judge on the tiny model: alpaca_eval format, tags, win-rate arithmetic, symmetry."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
from procs import run_cli

from humpback_ds import prompts
from humpback_ds.config import AnswerConfig, JudgeConfig, ReportConfig
from humpback_ds.generator import Generator
from humpback_ds.layout import RunLayout
from humpback_ds.records import DataError
from humpback_ds.stages import answer, judge
from humpback_ds.stages import report as report_stage

ROOT = Path(__file__).resolve().parent.parent
EVAL_PROMPTS = ROOT / "humpback_ds" / "sample_data" / "eval" / "prompts.jsonl"
NEW_TOKENS = 12


def _instructions(path: Path) -> list[str]:
    return [
        json.loads(line)["instruction"] for line in path.read_text().splitlines() if line.strip()
    ]


def test_prompt_carries_the_configured_tag() -> None:
    ins = "Name a colour."
    assert answer.build_prompt(ins, "both") == (
        "[INST] Name a colour.\n\nAnswer in the style of an AI Assistant. "
        "Answer with knowledge from web search. [/INST]"
    )
    assert answer.build_prompt(ins, "seed") == (
        "[INST] Name a colour.\n\nAnswer in the style of an AI Assistant. [/INST]"
    )
    assert answer.build_prompt(ins, "augmented") == (
        "[INST] Name a colour.\n\nAnswer with knowledge from web search. [/INST]"
    )
    assert answer.build_prompt(ins, "none") == "[INST] Name a colour. [/INST]"


def test_prompt_files_in_every_accepted_shape(tmp_path: Path) -> None:
    as_strings = tmp_path / "a.json"
    as_strings.write_text(json.dumps(["First?", "Second?"]))
    alpaca = tmp_path / "b.json"  # AlpacaEval-shaped, with extra keys
    alpaca.write_text(
        json.dumps(
            [{"instruction": "First?", "output": "x", "generator": "g", "dataset": "helpful_base"}]
        )
    )
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"instruction": "First?"}\n\n"Second?"\n')
    got = [
        [(p.id, p.instruction, p.dataset) for p in answer.load_eval_prompts(f)]
        for f in (as_strings, alpaca, jsonl)
    ]
    assert got[0] == [("000000", "First?", "humpback-ds"), ("000001", "Second?", "humpback-ds")]
    assert got[1] == [("000000", "First?", "helpful_base")]
    assert got[2] == got[0]
    assert len(answer.load_eval_prompts(EVAL_PROMPTS)) == 20
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"instruction": "ok"}\n{"prompt": "no instruction key"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: expected a string or an object"):
        answer.load_eval_prompts(bad)
    dup = tmp_path / "e.json"
    dup.write_text(json.dumps(["Same?", "Other?", "Same?"]))
    with pytest.raises(DataError, match=r"e.json: item 2: repeats the instruction of .*item 0"):
        answer.load_eval_prompts(dup)


def test_parse_verdict() -> None:
    assert judge.parse_verdict("Better answer: (2)") == 2
    assert judge.parse_verdict("better answer (1). Later: Better answer: 2") == 2
    assert judge.parse_verdict("I prefer (1) here.") == 1
    assert judge.parse_verdict("(1) and (2) are both fine") is None
    assert judge.parse_verdict("no idea") is None


@pytest.fixture
def seen_prompts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text the engine tokenizes during a stage."""
    seen: list[str] = []
    original = Generator.encode

    def encode(self: Generator, text: str) -> list[int]:
        seen.append(text)
        return original(self, text)

    monkeypatch.setattr(Generator, "encode", encode)
    return seen


def _answer(model: Path, prompts_path: Path, out: Path, tag: str, name: str) -> list[dict]:
    cfg = AnswerConfig(
        model=str(model),
        prompts=str(prompts_path),
        output=str(out),
        tag=tag,
        generator=name,
        max_new_tokens=NEW_TOKENS,
        seed=1,
    )
    answer.run(cfg)
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def answered(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Answers of the tiny model to the sample prompts, with both tags (A) and with none (B)."""
    d = tmp_path_factory.mktemp("answers")
    _answer(tiny_model, EVAL_PROMPTS, d / "a.json", "both", "tiny-both")
    _answer(tiny_model, EVAL_PROMPTS, d / "b.json", "none", "tiny-none")
    return {"a": d / "a.json", "b": d / "b.json"}


def test_answer_writes_alpaca_eval_format(answered: dict[str, Path]) -> None:
    rows = json.loads(answered["a"].read_text())
    assert len(rows) == 20
    assert all(list(r) == ["instruction", "output", "generator", "dataset"] for r in rows)
    assert [r["instruction"] for r in rows] == _instructions(EVAL_PROMPTS)
    assert {r["generator"] for r in rows} == {"tiny-both"}
    assert rows[0]["dataset"] == "humpback-sample-home"
    assert all(isinstance(r["output"], str) for r in rows)
    assert sum(bool(r["output"].strip()) for r in rows) >= 15  # sampled text, mostly non-empty
    manifest = json.loads(Path(f"{answered['a']}.manifest.json").read_text())
    assert manifest["counts"]["prompts"] == manifest["counts"]["answers"] == 20
    assert manifest["counts"]["written"] == 20
    assert manifest["prompt_template"] == answer.build_prompt("{instruction}", "both")
    b_rows = json.loads(answered["b"].read_text())
    assert [r["output"] for r in b_rows] != [r["output"] for r in rows]  # other prompts, other text


def test_answer_builds_the_tagged_prompt(
    tiny_model: Path, tmp_path: Path, seen_prompts: list[str]
) -> None:
    few = tmp_path / "few.json"
    few.write_text(json.dumps(["Say hello.", "Count to three."]))
    for tag in ("seed", "none"):
        seen_prompts.clear()
        rows = _answer(tiny_model, few, tmp_path / f"{tag}.json", tag, tag)
        assert len(rows) == 2
        assert sorted(seen_prompts) == sorted(
            answer.build_prompt(i, tag) for i in ("Say hello.", "Count to three.")
        )
    assert seen_prompts[0].endswith(" [/INST]") and prompts.SEED_TAG not in seen_prompts[0]


def _judge(
    model: Path, a: Path, b: Path, out: Path, mode: str = "logprob"
) -> tuple[list[dict], dict]:
    cfg = JudgeConfig(
        model=str(model),
        outputs=str(a),
        reference=str(b),
        output=str(out),
        mode=mode,
        max_new_tokens=NEW_TOKENS,
    )
    judge.run(cfg)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return records, json.loads(Path(f"{out}.manifest.json").read_text())


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_judge_win_rate_equals_hand_recomputation(
    tiny_model: Path, answered: dict[str, Path], tmp_path: Path
) -> None:
    records, manifest = _judge(tiny_model, answered["a"], answered["b"], tmp_path / "ab.jsonl")
    assert len(records) == 20
    assert [r["instruction"] for r in records] == _instructions(EVAL_PROMPTS)
    # By hand: margins of the two orders -> P(A better) -> mean and standard error, in percent.
    p = []
    for r in records:
        m1 = r["logp_a_first"][0] - r["logp_a_first"][1]
        m2 = r["logp_b_first"][0] - r["logp_b_first"][1]
        p.append(_sigmoid((m1 - m2) / 2))
        assert r["preference"] == pytest.approx(1 + p[-1], abs=1e-12)
    wr = manifest["win_rate"]
    assert 0.0 <= wr["win_rate"] <= 100.0
    assert wr["win_rate"] == pytest.approx(100 * sum(p) / len(p), abs=1e-9)
    assert wr["standard_error"] == pytest.approx(
        100 * statistics.stdev(p) / math.sqrt(len(p)), abs=1e-9
    )
    assert wr["n_total"] == 20 and wr["n_wins"] == sum(x > 0.5 for x in p)
    first = [r["logp_a_first"][0] > r["logp_a_first"][1] for r in records]  # A wins when A is (1)
    second = [r["logp_b_first"][1] > r["logp_b_first"][0] for r in records]  # A wins when A is (2)
    assert manifest["agreement"] == pytest.approx(
        sum(x == y for x, y in zip(first, second, strict=True)) / 20
    )
    assert manifest["generator_a"] == "tiny-both" and manifest["generator_b"] == "tiny-none"
    # Swapping A and B: every P(A) becomes 1 - P(A), the win rate 100 - win rate.
    _, swapped = _judge(tiny_model, answered["b"], answered["a"], tmp_path / "ba.jsonl")
    assert swapped["win_rate"]["win_rate"] == pytest.approx(100 - wr["win_rate"], abs=1e-6)


def test_a_file_against_itself_is_exactly_50(
    tiny_model: Path, answered: dict[str, Path], tmp_path: Path
) -> None:
    out = RunLayout(tmp_path).judgement(1, 0)
    records, manifest = _judge(tiny_model, answered["a"], answered["a"], out)
    assert manifest["win_rate"]["win_rate"] == 50.0
    assert manifest["win_rate"]["n_draws"] == 20
    assert all(r["preference"] == 1.5 and r["logp_a_first"] == r["logp_b_first"] for r in records)
    # Both orders show the same prompt, so the judge names position (1) both times: the orders
    # disagree on the winner (A, then B) unless it is exactly indifferent; the draws cancel that.
    same = sum(r["logp_a_first"][0] == r["logp_a_first"][1] for r in records)
    assert manifest["agreement"] == same / 20
    # The report reads the judgement and its manifest.
    html = report_stage.run(ReportConfig(run_dir=str(tmp_path))).read_text()
    assert (
        '<td class="text">m1_vs_m0</td><td class="text">50.00</td><td class="text">0.00</td>'
        in html
    )


def test_judge_generate_mode_counts_verdicts(
    tiny_model: Path, answered: dict[str, Path], tmp_path: Path
) -> None:
    records, manifest = _judge(
        tiny_model, answered["a"], answered["b"], tmp_path / "g.jsonl", "generate"
    )
    value = {1: 1.0, 2: 0.0, None: 0.5}
    p = [(value[r["verdict_a_first"]] + (1 - value[r["verdict_b_first"]])) / 2 for r in records]
    assert manifest["win_rate"]["win_rate"] == pytest.approx(100 * sum(p) / len(p), abs=1e-9)
    unparsed = sum((r["verdict_a_first"] is None) + (r["verdict_b_first"] is None) for r in records)
    assert manifest["counts"]["unparsed_verdicts"] == unparsed
    assert manifest["counts"]["written"] == manifest["counts"]["pairs"] == len(records)


def test_judge_refuses_files_with_different_instructions(
    tiny_model: Path, answered: dict[str, Path], tmp_path: Path
) -> None:
    rows = json.loads(answered["b"].read_text())
    short = tmp_path / "short.json"
    short.write_text(json.dumps(rows[:-1] + [{**rows[-1], "instruction": "An extra question?"}]))
    with pytest.raises(
        DataError,
        match=r"1 only in .*a.json: 'How does a refrigerator keep food cold.*"
        r"1 only in .*short.json: 'An extra question\?'",
    ):
        _judge(tiny_model, answered["a"], short, tmp_path / "x.jsonl")


@pytest.mark.dist
@pytest.mark.slow
def test_two_replicas_answer_and_judge_like_one_process(
    tiny_model: Path, answered: dict[str, Path], tmp_path: Path
) -> None:
    results = {}
    for n in (1, 2):
        out = tmp_path / f"answers{n}.json"
        run_cli(
            [
                "answer",
                f"--model={tiny_model}",
                f"--prompts={EVAL_PROMPTS}",
                f"--output={out}",
                f"--max_new_tokens={NEW_TOKENS}",
                "--seed=1",
                "--generator=tiny-both",
            ],
            n,
        )
        judged = tmp_path / f"judged{n}.jsonl"
        run_cli(
            [
                "judge",
                f"--model={tiny_model}",
                f"--outputs={out}",
                f"--reference={answered['b']}",
                f"--output={judged}",
            ],
            n,
        )
        results[n] = (out.read_bytes(), json.loads(Path(f"{judged}.manifest.json").read_text()))
    # Sampling seeds come from the prompt ids: the same text whichever replica answered.
    assert results[2][0] == results[1][0] == answered["a"].read_bytes()
    parts = sorted((tmp_path / "answers2.json.parts").glob("part-*.jsonl"))
    assert [len(p.read_text().splitlines()) for p in parts] == [10, 10]
    # Log-probs may differ in the last bits with the batch composition, not more.
    wr1, wr2 = results[1][1]["win_rate"], results[2][1]["win_rate"]
    assert wr2["win_rate"] == pytest.approx(wr1["win_rate"], abs=1e-6)
    a, b = json.loads(answered["a"].read_text()), json.loads(answered["b"].read_text())
    same = sum(x["output"] == y["output"] for x, y in zip(a, b, strict=True))  # one order suffices
    assert (
        results[1][1]["counts"]["judge_calls"]
        == results[2][1]["counts"]["judge_calls"]
        == 40 - same
    )


def test_answer_rerun_resumes_from_the_parts(
    tiny_model: Path, answered: dict[str, Path], seen_prompts: list[str]
) -> None:
    out = answered["a"]
    before = out.read_bytes()
    out.unlink()  # as if the job died after its last batch, before the merge
    Path(f"{out}.manifest.json").unlink()
    rows = _answer(tiny_model, EVAL_PROMPTS, out, "both", "tiny-both")
    assert seen_prompts == []  # nothing generated again
    assert out.read_bytes() == before and len(rows) == 20
    assert json.loads(Path(f"{out}.manifest.json").read_text())["counts"]["resumed"] == 20


def test_judge_cuts_answers_to_the_judge_context(tiny_model: Path, tmp_path: Path) -> None:
    long_text = "the river runs past the old library " * 400  # far more than 2,048 tokens
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(
        json.dumps(
            [
                {"instruction": "Short?", "output": "Yes.", "generator": "x"},
                {"instruction": "Long?", "output": long_text, "generator": "x"},
            ]
        )
    )
    b.write_text(
        json.dumps(
            [
                {"instruction": "Long?", "output": "No.", "generator": "y"},
                {"instruction": "Short?", "output": "Maybe.", "generator": "y"},
            ]
        )
    )
    records, manifest = _judge(tiny_model, a, b, tmp_path / "cut.jsonl")
    assert manifest["counts"]["answers_cut_to_fit"] == 1
    assert [r["instruction"] for r in records] == ["Short?", "Long?"]  # the order of --outputs
    assert records[1]["output_a"].endswith(" [...]") and len(records[1]["output_a"]) < len(
        long_text
    )
    assert records[1]["output_b"] == "No."
    assert all(0.0 <= r["p_a"] <= 1.0 for r in records)
