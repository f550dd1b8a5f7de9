"""Prompt text, tags and the score parser (METHOD.md)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from humpback_ds import prompts
from humpback_ds.prompts import ScoreParse, parse_score

METHOD_MD = Path(__file__).resolve().parents[2] / "shared" / "METHOD.md"


def test_tags_are_pinned_to_their_sources():
    # A known reproduction swapped these two; the strings and the mapping are facts of the paper.
    assert prompts.SEED_TAG == "Answer in the style of an AI Assistant."
    assert prompts.AUGMENTED_TAG == "Answer with knowledge from web search."
    assert prompts.tag_for_source("seed") == "Answer in the style of an AI Assistant."
    assert prompts.tag_for_source("augmented") == "Answer with knowledge from web search."
    assert prompts.INFERENCE_TAG == (
        "Answer in the style of an AI Assistant. Answer with knowledge from web search."
    )
    with pytest.raises(ValueError, match="unknown data source 'web'"):
        prompts.tag_for_source("web")


def test_with_tag_appends_a_paragraph():
    assert prompts.with_tag("Name a fruit.", prompts.SEED_TAG) == (
        "Name a fruit.\n\nAnswer in the style of an AI Assistant."
    )
    assert prompts.with_tag("Name a fruit.", "") == "Name a fruit."


def test_forward_and_score_prompts():
    assert prompts.forward_prompt("Hi there") == "[INST] Hi there [/INST]"
    p = prompts.score_prompt("Q?", "A.")
    assert p.startswith("[INST] Below is an instruction from an user and a candidate answer.")
    assert p.endswith("\n\nQ?\nA. [/INST] Score:")


def _method_block(start: str) -> str:
    text = METHOD_MD.read_text(encoding="utf-8")
    blocks = re.findall(r"```\n(.*?)```", text, flags=re.S)
    return next(b for b in blocks if b.startswith(start)).rstrip("\n")


@pytest.mark.skipif(not METHOD_MD.is_file(), reason="shared/METHOD.md is not beside the checkout")
def test_prompt_text_is_exactly_methods():
    backward = _method_block("[INST] Below is a candidate answer")
    assert prompts.backward_prompt("<response>") == backward
    curation = _method_block("Below is an instruction from an user")
    assert (
        prompts.CURATION_TEMPLATE.format(instruction="<generated instruction>", output="<output>")
        == curation
    )


def test_prompt_text_fingerprint():
    # Pins the texts where METHOD.md is not available (a user's clone); typos are the paper's.
    assert "from an user" in prompts.CURATION_TEMPLATE
    assert "It provide a complete" in prompts.CURATION_TEMPLATE
    assert prompts.CURATION_TEMPLATE.count("\n") == 10
    # sha256 of the texts verified against METHOD.md by test_prompt_text_is_exactly_methods
    assert (
        _sha(prompts.CURATION_TEMPLATE)
        == "058f7b8bc82302b435665739d90b90086e34278c2f265d3f35056574d3559f43"
    )
    assert (
        _sha(prompts.BACKWARD_TEMPLATE)
        == "6ae4d6eda5e627e6d7b971bc3aab68cc510865a7805fb6c0b410311164370b8d"
    )


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is complete.\nScore: 4", ScoreParse(4)),
        ("Score: 2\nOn reflection it is better.\nScore: 5", ScoreParse(5)),  # the LAST one
        ("Rationale...\nScore: 5/5", ScoreParse(5)),
        ("score:4", ScoreParse(4)),
        ("SCORE : 3", ScoreParse(3)),
        ("Score: **1**", ScoreParse(1)),
        ("Score: 4.0", ScoreParse(4)),
        ("Score: 7", ScoreParse(None, "score 7 out of range 1..5")),
        ("Score: 0", ScoreParse(None, "score 0 out of range 1..5")),
        ("Score: 45", ScoreParse(None, "score 45 out of range 1..5")),
        ("Score: 5\nScore: 9", ScoreParse(None, "score 9 out of range 1..5")),
        ("Score: 4.5", ScoreParse(None, "fractional score 4.5")),
        ("Score: 4/10", ScoreParse(None, "unexpected scale 'Score: 4/10'")),
        ("I would rate it highly.", ScoreParse(None, "no 'Score: N' found")),
        ("", ScoreParse(None, "no 'Score: N' found")),
    ],
)
def test_parse_score(text, expected):
    assert parse_score(text) == expected
