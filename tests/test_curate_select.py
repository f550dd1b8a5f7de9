"""Self-curation (generate and logprob modes) and selection: scores, parsing, thresholds, tags."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from humpback_ds import modeling, prompts
from humpback_ds.config import CurateConfig, SelectConfig
from humpback_ds.records import Candidate, DataError, Pair, Scored, load_records, write_records
from humpback_ds.stages import curate, select

# Original sample candidates.
CANDIDATES = [
    (
        "c1",
        "How do I keep basil alive on a windowsill?",
        "Give it at least six hours of light, water when the top of the soil is dry, and pinch off "
        "flower buds so the plant keeps making leaves.",
    ),
    ("c2", "What is a haiku?", "A short poem of three lines with five, seven and five syllables."),
    ("c3", "Name a prime number.", "Seven."),
    (
        "c4",
        "Explain why the sky looks blue at noon.",
        "Air molecules scatter short blue wavelengths of sunlight much more than red ones, so blue "
        "light reaches your eye from every direction of the sky.",
    ),
]


def write_candidates(path: Path) -> list[Candidate]:
    cands = [
        Candidate(id=i, segment_id=f"seg-{i}", instruction=q, output=a) for i, q, a in CANDIDATES
    ]
    write_records(path, cands)
    return cands


def hand_probs(model_dir: Path, cand: Candidate) -> list[float]:
    """P(1..5) by hand: score each `prompt Score: k` with the plain model, normalise."""
    tok, model = modeling.load_tokenizer(model_dir), modeling.load_model(model_dir)
    context = prompts.curation_prompt(cand.instruction, cand.output) + " Score:"
    ctx = tok(context)["input_ids"]
    logps = []
    for k in "12345":
        full = tok(f"{context} {k}")["input_ids"]
        start = next(i for i in range(len(full)) if i >= len(ctx) or full[i] != ctx[i])
        with torch.no_grad():
            lp = model(torch.tensor([full])).logits[0].log_softmax(-1)
        logps.append(sum(float(lp[p - 1, full[p]]) for p in range(start, len(full))))
    total = sum(math.exp(x) for x in logps)
    return [math.exp(x) / total for x in logps]


def run_curate(tiny_model: Path, tmp_path: Path, **fields: Any) -> tuple[list[Scored], dict]:
    """Curate tmp_path/cand.jsonl into tmp_path/scored.jsonl: the records and the manifest."""
    cfg = CurateConfig(
        model=str(tiny_model),
        candidates=str(tmp_path / "cand.jsonl"),
        output=str(tmp_path / "scored.jsonl"),
        **fields,
    )
    scored = load_records(curate.run(cfg), Scored)
    return scored, json.loads((tmp_path / "scored.jsonl.manifest.json").read_text())


def test_logprob_scores_equal_hand_computation(tiny_model: Path, tmp_path: Path) -> None:
    cands = write_candidates(tmp_path / "cand.jsonl")
    tok = modeling.load_tokenizer(tiny_model)
    # the continuation " 3" is two pieces, a lone space and the digit: scored as a whole
    assert len(tok("Fine. Score: 3")["input_ids"]) == len(tok("Fine. Score:")["input_ids"]) + 2
    scored, manifest = run_curate(tiny_model, tmp_path, mode="logprob", token_budget=10_000)
    assert [s.id for s in scored] == ["c1", "c2", "c3", "c4"]
    for cand, s in zip(cands, scored, strict=True):
        want = hand_probs(tiny_model, cand)
        assert s.probs == pytest.approx(want, abs=1e-5)
        assert s.expected == pytest.approx(
            sum(k * p for k, p in zip(range(1, 6), want, strict=True)), abs=1e-5
        )
        assert s.score == float(1 + max(range(5), key=lambda i: want[i]))
        assert s.parsed and s.mode == "logprob" and s.model == str(tiny_model)
    assert manifest["counts"]["parsed"] == 4 and manifest["counts"]["unparsed"] == 0
    assert manifest["counts"]["written"] == manifest["counts"]["scored"] == 4


def test_generate_mode_keeps_unparsed_with_reason(tiny_model: Path, tmp_path: Path) -> None:
    write_candidates(tmp_path / "cand.jsonl")
    scored, manifest = run_curate(
        tiny_model, tmp_path, mode="generate", num_samples=2, max_new_tokens=8
    )
    assert len(scored) == 4 == manifest["counts"]["scored"] == manifest["counts"]["written"]
    unparsed = [s for s in scored if not s.parsed]
    assert manifest["counts"]["unparsed"] == len(unparsed)
    for s in scored:
        assert len(s.raw) == 2 and len(s.lineage["seeds"]) == 2 and s.mode == "generate"
        parses = [prompts.parse_score(t) for t in s.raw]
        assert s.parsed == any(p.score is not None for p in parses)
    for s in unparsed:
        assert s.score is None and s.reason.startswith("2/2 samples: ")


def test_samples_are_averaged_and_reasons_counted() -> None:
    cand = Candidate(id="c", segment_id="s", instruction="q", output="a")
    cfg = CurateConfig(model="m", candidates="x", output="y", num_samples=3)
    s = curate.from_samples(
        cand, cfg, ["Fine.\nScore: 4", "Score: 2 ... Score: 5", "no idea"], [1, 2, 3]
    )
    assert (s.score, s.parsed, s.reason) == (4.5, True, "1/3 samples: no 'Score: N' found")
    s = curate.from_samples(cand, cfg, ["Score: 9", "Score: 4.5", "x"], [1, 2, 3])
    assert s.score is None and not s.parsed
    assert s.reason == (
        "1/3 samples: fractional score 4.5; 1/3 samples: no 'Score: N' found; "
        "1/3 samples: score 9 out of range 1..5"
    )


def scored(i: str, score: float | None, expected: float | None = None) -> Scored:
    return Scored(
        id=i,
        segment_id=f"seg-{i}",
        instruction=f"question {i}",
        output=f"answer {i}",
        mode="logprob" if expected is not None else "generate",
        model="m",
        score=score,
        parsed=score is not None,
        expected=expected,
    )


def run_select(tmp_path: Path, records: list[Scored], **kw: object) -> tuple[list[Pair], dict]:
    write_records(tmp_path / "scored.jsonl", records)
    seed = [
        Pair(id="seed-2", instruction="Say hi.", output="Hi."),
        Pair(id="seed-1", instruction="Count to two.", output="One, two."),
    ]
    write_records(tmp_path / "seed.jsonl", seed)
    cfg = SelectConfig(
        scored=str(tmp_path / "scored.jsonl"),
        seed_data=str(tmp_path / "seed.jsonl"),
        output=str(tmp_path / "train.jsonl"),
        **kw,
    )  # type: ignore[arg-type]
    out = load_records(select.run(cfg), Pair)
    return out, json.loads((tmp_path / "train.jsonl.manifest.json").read_text())


POOL = [
    scored("b", 5.0, 4.2),
    scored("a", 4.0, 4.6),
    scored("d", 5.0, 4.9),
    scored("c", 3.0, 2.0),
    scored("e", None),
    scored("f", 4.5),
]


def test_select_threshold_tags_and_counts(tmp_path: Path) -> None:
    pairs, manifest = run_select(tmp_path, POOL, threshold=4.5)
    assert [(p.id, p.source) for p in pairs] == [
        ("seed-2", "seed"),
        ("seed-1", "seed"),
        ("b", "augmented"),
        ("d", "augmented"),
        ("f", "augmented"),
    ]
    assert pairs[0].instruction == "Say hi.\n\nAnswer in the style of an AI Assistant."
    assert pairs[2].instruction == "question b\n\nAnswer with knowledge from web search."
    assert pairs[2].output == "answer b" and pairs[2].meta["score"] == 5.0
    assert manifest["counts"] == {"scored": 6, "seed": 2, "kept": 3, "written": 5}
    assert manifest["rejected"] == {"below threshold": 2, "unparsed": 1}
    assert manifest["score_histogram"] == {"3": 1, "4": 1, "5": 3, "unparsed": 1}


def test_select_top_n_and_expected(tmp_path: Path) -> None:
    # top 2 of {b 5, d 5, f 4.5, a 4}: b and d (ties by id); written in id order after the seed
    pairs, manifest = run_select(tmp_path, POOL, threshold=4, top_n=2)
    assert [p.id for p in pairs if p.source == "augmented"] == ["b", "d"]
    assert manifest["rejected"] == {"below threshold": 1, "unparsed": 1, "over top_n": 2}
    # expected scores: d 4.9, a 4.6, f 4.5 (no expected: its score), b 4.2
    pairs, manifest = run_select(tmp_path, POOL, threshold=4.5, use_expected=True, top_n=2)
    assert [(p.id, p.meta["score"]) for p in pairs if p.source == "augmented"] == [
        ("a", 4.6),
        ("d", 4.9),
    ]
    assert manifest["counts"]["kept"] == 2 and manifest["rejected"]["over top_n"] == 1


def test_select_refuses_clashing_ids(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="seed-1"):
        run_select(tmp_path, [scored("seed-1", 5.0)], threshold=5)


def test_select_quarantines_bad_lines(tmp_path: Path) -> None:
    write_records(tmp_path / "scored.jsonl", POOL)
    with (tmp_path / "scored.jsonl").open("a") as fh:
        fh.write('{"id": "broken", "score": 5}\n')  # missing fields
    write_records(tmp_path / "seed.jsonl", [Pair(id="s", instruction="Hi?", output="Hello.")])
    cfg = SelectConfig(
        scored=str(tmp_path / "scored.jsonl"),
        seed_data=str(tmp_path / "seed.jsonl"),
        output=str(tmp_path / "train.jsonl"),
        threshold=5,
        max_bad_fraction=0.5,
    )
    pairs = load_records(select.run(cfg), Pair)
    assert [p.id for p in pairs] == ["s", "b", "d"]
    bad = [
        json.loads(x) for x in (tmp_path / "train.jsonl.quarantine.jsonl").read_text().splitlines()
    ]
    assert len(bad) == 1 and bad[0]["line"] == 7
    manifest = json.loads((tmp_path / "train.jsonl.manifest.json").read_text())
    assert manifest["counts"]["bad_lines"] == 1
    with pytest.raises(DataError, match="max_bad_fraction"):
        select.run(SelectConfig(scored=cfg.scored, seed_data=cfg.seed_data, output=cfg.output))
