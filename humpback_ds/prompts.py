"""Every prompt string and tag of the method, and the self-curation score parser.

The only home of prompt text (STYLE.md). The texts are the paper's, exactly as METHOD.md gives them,
typos included. Which tag goes with which data source is pinned by tests/test_prompts.py: a known
reproduction swapped them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Tags appended to the instruction (paper §2.3 "Training with tags"; METHOD.md "Tagging").
SEED_TAG = "Answer in the style of an AI Assistant."
AUGMENTED_TAG = "Answer with knowledge from web search."
# At inference the best setting is both sentences, seed tag first (METHOD.md).
INFERENCE_TAG = f"{SEED_TAG} {AUGMENTED_TAG}"

TAGS_BY_SOURCE = {"seed": SEED_TAG, "augmented": AUGMENTED_TAG}
TAGS_BY_NAME = {"seed": SEED_TAG, "augmented": AUGMENTED_TAG, "both": INFERENCE_TAG, "none": ""}

# Humpback's public evaluation config wraps every instruction like this (METHOD.md "Prompt wrapper").
INST_OPEN, INST_CLOSE = "[INST]", "[/INST]"

BACKWARD_TEMPLATE = (
    "[INST] Below is a candidate answer to a question or instruction from an user. Write the most "
    "likely question to which the text below would be a great answer.\n"
    "\n"
    "{response}\n"
    "\n"
    "Answer in the style of an AI Assistant. [/INST]"
)

CURATION_TEMPLATE = (
    "Below is an instruction from an user and a candidate answer. Evaluate whether or not the answer is a good example of how AI Assistant should respond to the user's instruction. Please assign a score using the following 5-point scale:\n"
    "1: It means the answer is incomplete, vague, off-topic, controversial, or not exactly what the user asked for. For example, some content seems missing, numbered list does not start from the beginning, the opening sentence repeats user's question. Or the response is from another person's perspective with their personal experience (e.g. taken from blog posts), or looks like an answer from a forum. Or it contains promotional text, navigation text, or other irrelevant information.\n"
    "2: It means the answer addresses most of the asks from the user. It does not directly address the user's question. For example, it only provides a high-level methodology instead of the exact solution to user's question.\n"
    "3: It means the answer is helpful but not written by an AI Assistant. It addresses all the basic asks from the user. It is complete and self contained with the drawback that the response is not written from an AI assistant's perspective, but from other people's perspective. The content looks like an excerpt from a blog post, web page, or web search results. For example, it contains personal experience or opinion, mentions comments section, or share on social media, etc.\n"
    "4: It means the answer is written from an AI assistant's perspective with a clear focus of addressing the instruction. It provide a complete, clear, and comprehensive response to user's question or instruction without missing or irrelevant information. It is well organized, self-contained, and written in a helpful tone. It has minor room for improvement, e.g. more concise and focused.\n"
    "5: It means it is a perfect answer from an AI Assistant. It has a clear focus on being a helpful AI Assistant, where the response looks like intentionally written to address the user's question or instruction without any irrelevant sentences. The answer provides high quality content, demonstrating expert knowledge in the area, is very well written, logical, easy-to-follow, engaging and insightful.\n"
    "\n"
    'Please first provide a brief reasoning you used to derive the rating score, and then write "Score: <rating>" in the last line.\n'
    "\n"
    "{instruction}\n"
    "{output}"
)

# logprob scoring mode: the rationale-free answer prefix and the five continuations (METHOD.md).
SCORE_PREFIX = "Score:"
SCORES = (1, 2, 3, 4, 5)


def wrap(text: str) -> str:
    """The `[INST] ... [/INST]` wrapper of every forward-model prompt."""
    return f"{INST_OPEN} {text} {INST_CLOSE}"


def with_tag(instruction: str, tag: str) -> str:
    """Append a tag to an instruction on its own paragraph; an empty tag leaves it unchanged."""
    return f"{instruction}\n\n{tag}" if tag else instruction


def tag_for_source(source: str) -> str:
    """The training tag of a data source: seed pairs vs backtranslated (augmented) pairs."""
    try:
        return TAGS_BY_SOURCE[source]
    except KeyError:
        raise ValueError(
            f"unknown data source {source!r}; expected one of {sorted(TAGS_BY_SOURCE)}"
        ) from None


def forward_prompt(instruction: str) -> str:
    """Prompt of the forward models m0, m1, ...: the model answers after `[/INST]`."""
    return wrap(instruction)


def backward_prompt(response: str) -> str:
    """Prompt of the backward model: given an output, write the instruction it answers."""
    return BACKWARD_TEMPLATE.format(response=response)


def curation_prompt(instruction: str, output: str) -> str:
    """The self-curation rating prompt (paper Table 19), wrapped for the forward model."""
    return wrap(CURATION_TEMPLATE.format(instruction=instruction, output=output))


def score_prompt(instruction: str, output: str) -> str:
    """logprob mode: the rating prompt followed by the answer prefix `Score:`."""
    return f"{curation_prompt(instruction, output)} {SCORE_PREFIX}"


# The local pairwise judge (ours, not the paper's: the paper used GPT-4 through AlpacaEval).
JUDGE_TEMPLATE = (
    "Below is an instruction from a user and two candidate answers, (1) and (2). Decide which "
    "answer responds to the instruction better: more helpful, accurate, complete and clearly "
    "written. Judge the content, not the length of an answer or the order of the two.\n"
    "\n"
    "Instruction:\n{instruction}\n"
    "\n"
    "Answer (1):\n{output_1}\n"
    "\n"
    "Answer (2):\n{output_2}\n"
    "\n"
    'Reply with "Better answer: (1)" or "Better answer: (2)".'
)
JUDGE_PREFIX = "Better answer: ("  # logprob mode: the verdict's answer prefix
JUDGE_CHOICES = ("1", "2")


def judge_prompt(instruction: str, output_1: str, output_2: str) -> str:
    """The judge's question, wrapped for an instruction-following model."""
    body = JUDGE_TEMPLATE.format(instruction=instruction, output_1=output_1, output_2=output_2)
    return wrap(body)


@dataclass(frozen=True)
class ScoreParse:
    """A parsed rating: `score` in 1..5, or None with the `reason` it could not be parsed."""

    score: int | None
    reason: str = ""


# "Score: 4", "score:4", "SCORE : 4", "Score: 5/5", "Score: **4**", "Score: 4.0". The number is taken
# whole (with any fraction) so that "Score: 45" or "Score: 4.5" are not read as 4.
_SCORE = re.compile(r"score\s*:\s*\**\s*(-?\d+(?:\.\d+)?)(\s*/\s*(\d+))?", re.IGNORECASE)


def parse_score(text: str) -> ScoreParse:
    """The LAST `Score: N` in a rating, N an integer in 1..5 (paper: "Score: <rating>" last line).

    `N/5` is accepted (the denominator must be 5), `N.0` is N. Anything else is unparsed with a reason:
    no score, a fractional score, a number out of 1..5, or another denominator. Only the last match
    counts: a rationale that quotes "Score: 5" and ends with "Score: 9" is out of range.
    """
    matches = list(_SCORE.finditer(text))
    if not matches:
        return ScoreParse(None, "no 'Score: N' found")
    last = matches[-1]
    number, denominator = last.group(1), last.group(3)
    if denominator is not None and denominator != "5":
        return ScoreParse(None, f"unexpected scale '{last.group(0).strip()}'")
    value = float(number)
    if value != int(value):
        return ScoreParse(None, f"fractional score {number}")
    if int(value) not in SCORES:
        return ScoreParse(None, f"score {number} out of range 1..5")
    return ScoreParse(int(value))
