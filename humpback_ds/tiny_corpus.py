"""The tiny tokenizer's training text: written for this project, deterministic for a seed.

English prose, prompt-like dialogues ending 'Score: N', Markdown and HTML-ish snippets, built from
the word banks below, and one line holding every printable ASCII character.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator

# Paragraphs: subjects, verbs, objects, endings, question templates, ratings 1..5 ("|" or a
# line break separates entries).
_BANKS = """
the river|a small model|my neighbour|the old library|this recipe|the tiny robot|our team
the garden|a careful reader|the weather station|every student|the kitchen timer

explains|describes|needs|keeps|writes|measures|changes|improves|follows|answers|collects|shows

the answer|a short list|three clear steps|the main idea|fresh bread|the morning light
a simple table|the training data|good questions|quiet music|the last chapter|a useful summary

before noon|without any help|in plain words|every single day|for the first time|with great care
after the rain|on the second page|at a slow pace|when nobody is looking

How do I {v} {o}?|What is the best way to keep {o}?|Why does {s} need {o}?
Can you write {o} about {s}?|Please give me {o} for {s}.|Explain why {s} {v} {o}.

The answer is vague and off-topic.
It addresses most of the asks but misses the exact solution.
The reply reads like a forum post from another person.
It is written from an AI assistant's perspective, well organized, with room to be more concise.
The answer is complete, clear, focused and helpful.
"""
_SUBJECTS, _VERBS, _OBJECTS, _ENDINGS, _QUESTIONS, _RATINGS = (
    bank.replace("\n", "|").split("|") for bank in _BANKS.strip().split("\n\n")
)


def _sentence(r: random.Random) -> str:
    words = (r.choice(_SUBJECTS), r.choice(_VERBS), r.choice(_OBJECTS), r.choice(_ENDINGS))
    return " ".join(words).capitalize() + "."


def _question(r: random.Random) -> str:
    return r.choice(_QUESTIONS).format(
        s=r.choice(_SUBJECTS), v=r.choice(_VERBS), o=r.choice(_OBJECTS)
    )


def _markdown(r: random.Random) -> str:
    items = "\n".join(f"{i}. {_sentence(r)}" for i in range(1, r.randint(2, 5)))
    return (
        f"## {r.choice(_OBJECTS).title()}\n\n{_sentence(r)} **{r.choice(_OBJECTS)}** and "
        f"`{r.choice(_VERBS)}()`.\n\n{items}\n- [{r.choice(_OBJECTS)}](https://example.org/"
        f"{r.randint(1, 999)})\n\n```python\nprint({r.randint(0, 99)} + {r.randint(0, 99)})\n```"
    )


def _html(r: random.Random) -> str:
    return (
        f'<h2>{r.choice(_OBJECTS).title()}</h2>\n<p class="note">{_sentence(r)} &amp; '
        f"{_sentence(r)}</p>\n<ul><li>{r.choice(_OBJECTS)}</li><li>{r.randint(10, 5000)} "
        f'items</li></ul>\n<a href="/page/{r.randint(1, 99)}">Read more</a>'
    )


def _dialogue(r: random.Random) -> str:
    rating = r.randint(1, 5)
    return (
        f"[INST] {_question(r)} Answer in the style of an AI Assistant. [/INST] "
        f"{_sentence(r)} {_sentence(r)}\n\n{_RATINGS[rating - 1]}\nScore: {rating}"
    )


def tokenizer_corpus(seed: int, num_texts: int = 1500) -> Iterator[str]:
    """English prose, prompt-like dialogues with 'Score: N', Markdown and HTML-ish snippets."""
    r = random.Random(seed)
    yield string.printable.strip()  # every printable ASCII character gets its own piece
    makers = (_sentence, _question, _markdown, _html, _dialogue)
    for i in range(num_texts):
        yield makers[i % len(makers)](r)


# What the built-in corpus supports: below, not every character gets a piece; above, SentencePiece
# runs out of merges.
VOCAB_RANGE = (360, 1600)
