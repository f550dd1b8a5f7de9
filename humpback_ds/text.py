"""Web documents -> self-contained segments, and the segment filters (pure functions).

markup.py turns a document (HTML, Markdown or plain text) into a flat list of blocks,
`(level, text)`: level 1-6 for a header, 0 for a paragraph. Blocks nest into sections by header
level, and a section's text is its own paragraphs followed by every lower-level sub-header (as a
line of its own) with that sub-header's text, recursively (METHOD.md 'The loop' 2).

How a document is cut (`cut`): a section whose whole text fits in max_chars is ONE segment
(sub-headers included). A longer section is split by descending one level: its own text before the
first sub-header becomes a segment under its header, and each sub-section is cut the same way. A
section with no sub-header that is still too long is rejected as `too_long` (never split
mid-text: a segment must be self-contained). Segments never overlap. A header that is empty, ALL
UPPER-CASE or boilerplate removes its whole section, sub-sections included, wherever it sits
(also from inside a parent that is otherwise kept whole). Text before the first header has no
header and is rejected as `empty_header`.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from humpback_ds.markup import Block

# --------------------------------------------------------------------------------------------
# Header filters
# --------------------------------------------------------------------------------------------


def _words(spec: str) -> frozenset[str]:
    """A compact word list: 'a|b c|d' -> {'a', 'b c', 'd'}."""
    return frozenset(spec.split("|"))


# A header that CONTAINS one of these phrases (whole words, after `normalise`) is boilerplate.
BOILERPLATE_PHRASES = _words(
    "advertisement|advertisements|sponsored|quick link|quick links|free newsletter|newsletter|"
    "related posts|related articles|share this|leave a reply|leave a comment|you may also like|"
    "popular posts|recent posts|follow us|cookie policy|cookie settings|privacy policy|"
    "terms of use|terms of service|all rights reserved|skip to content|sign up|subscribe|log in|"
    "join our|read more|back to top"
)
# A header that IS one of these (the whole header) is boilerplate; inside a longer header they
# are ordinary words ("The Roman Forum", "Comments in Python code").
BOILERPLATE_HEADERS = _words(
    "menu|main menu|navigation|comments|comment|forum|forums|search|categories|tags|archives|"
    "archive|contact|contact us|about us|share|login|sidebar|footer|home|replies|related|links|"
    "useful links|more|next|previous|top|trending|popular|latest"
)
_BOILERPLATE_RE = re.compile(
    r"\b(?:" + "|".join(map(re.escape, sorted(BOILERPLATE_PHRASES))) + r")\b"
)
_ALNUM = re.compile(r"[^\W_]")
_PUNCT = re.compile(r"[^\w\s]+")


def normalise(text: str) -> str:
    """Lowercase, strip punctuation, collapse whitespace: the key of the exact-duplicate filter."""
    return " ".join(_PUNCT.sub("", text.lower()).split())


def header_problem(title: str) -> str | None:
    """Why a section's header disqualifies it, or None when it is fine."""
    if not _ALNUM.search(title):
        return "empty_header"
    if title.upper() == title and title.lower() != title:
        return "upper_header"
    norm = normalise(title)
    if norm in BOILERPLATE_HEADERS or _BOILERPLATE_RE.search(norm):
        return "boilerplate_header"
    return None


# --------------------------------------------------------------------------------------------
# Blocks -> sections -> segments
# --------------------------------------------------------------------------------------------


@dataclass
class Section:
    level: int
    title: str
    body: list[str] = field(default_factory=list)
    children: list[Section] = field(default_factory=list)

    def text(self) -> str:
        """Own paragraphs, then each sub-header as a line followed by its section's text."""
        parts = list(self.body)
        for child in self.children:
            parts.append(child.title)
            sub = child.text()
            if sub:
                parts.append(sub)
        return "\n\n".join(parts)


def sections(blocks: list[Block]) -> Section:
    """Nest blocks by header level under a level-0 root (whose body is the text before any header)."""
    root = Section(0, "")
    stack = [root]
    for level, text in blocks:
        if not level:
            stack[-1].body.append(text)
            continue
        while stack[-1].level >= level:
            stack.pop()
        node = Section(level, text)
        stack[-1].children.append(node)
        stack.append(node)
    return root


@dataclass
class Piece:
    """A candidate segment; `reason` is why it is rejected, None when it passed the cut."""

    path: tuple[str, ...]
    header: str
    text: str
    reason: str | None


def _length_reason(text: str, min_chars: int, max_chars: int) -> str | None:
    if len(text) < min_chars:
        return "too_short"
    return "too_long" if len(text) > max_chars else None


def prune(node: Section, path: tuple[str, ...]) -> Iterator[Piece]:
    """Remove every sub-section whose header disqualifies it, at any depth, yielding each one as
    a rejected piece, so that no segment carries a navigation or ALL-CAPS sub-section inside."""
    kept = []
    for child in node.children:
        child_path = (*path, child.title)
        problem = header_problem(child.title)
        if problem is None:
            kept.append(child)
            yield from prune(child, child_path)
        elif text := child.text():
            yield Piece(child_path, child.title, text, problem)
    node.children = kept


def cut(node: Section, path: tuple[str, ...], min_chars: int, max_chars: int) -> Iterator[Piece]:
    """Cut one (pruned) section: whole if it fits, else its intro + each sub-section cut alike."""
    text = node.text()
    if not text:
        return
    if len(text) <= max_chars or not node.children:
        yield Piece(path, node.title, text, _length_reason(text, min_chars, max_chars))
        return
    intro = "\n\n".join(node.body)
    if intro:
        yield Piece(path, node.title, intro, _length_reason(intro, min_chars, max_chars))
    for child in node.children:
        yield from cut(child, (*path, child.title), min_chars, max_chars)


def document_pieces(blocks: list[Block], min_chars: int, max_chars: int) -> Iterator[Piece]:
    """All candidate segments of a document: header rejections first, then the cut pieces in
    document order."""
    root = sections(blocks)
    preamble = "\n\n".join(root.body)
    if preamble:  # text before the first header has no header
        yield Piece((), "", preamble, "empty_header")
    yield from prune(root, ())
    for child in root.children:
        yield from cut(child, (child.title,), min_chars, max_chars)


def segment_id(doc_id: str, path: tuple[str, ...], index: int) -> str:
    """Stable id: sha1 of the document id, the header path and the piece's index in the document."""
    key = "\x1f".join((doc_id, " > ".join(path), str(index)))
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:20]


# --------------------------------------------------------------------------------------------
# Content filters: repetition, exact and near duplicates
# --------------------------------------------------------------------------------------------

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"\w+")
NEAR_DUP_SHINGLE = 3  # words per MinHash shingle (SegmentConfig.shingle_size default)


_MIX = np.uint64(0x9E3779B1)
_MASK32 = np.uint64(0xFFFFFFFF)


@dataclass(frozen=True)
class Analysis:
    """What the content filters need to know about one piece of text."""

    repetitive: bool  # two sentences with word n-gram Jaccard above the threshold
    key: bytes  # exact-duplicate key: sha1 of the normalised text
    shingles: np.ndarray  # distinct 32-bit hashes of the word shingle-grams (MinHash input)


def _ngrams(words: np.ndarray, n: int) -> np.ndarray:
    """32-bit hashes of every run of n consecutive word hashes (numpy; no per-n-gram string)."""
    grams = words[: len(words) - n + 1].copy()
    for k in range(1, n):
        grams = (grams * _MIX) ^ words[k : len(words) - n + 1 + k]
    return grams & _MASK32


def _repetitive(words: np.ndarray, sentence: np.ndarray, n: int, threshold: float) -> bool:
    """Exact pairwise n-gram Jaccard between sentences, counted only over the n-grams that occur
    in more than one sentence (usually none or few, so the Python loop stays short)."""
    inside = sentence[: len(words) - n + 1] == sentence[n - 1 :]  # n-gram within one sentence
    pairs = np.unique(
        (sentence[: len(inside)][inside] << np.uint64(32)) | _ngrams(words, n)[inside]
    )
    sizes = np.bincount((pairs >> np.uint64(32)).astype(np.int64))
    grams, owners = pairs & _MASK32, (pairs >> np.uint64(32)).astype(np.int64)
    order = np.argsort(grams, kind="stable")
    grams, owners = grams[order], owners[order]
    repeated = np.flatnonzero(grams[1:] == grams[:-1])
    shared: dict[tuple[int, int], int] = {}
    for start, end in _runs(repeated):
        group = owners[start : end + 1].tolist()
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                shared[a, b] = shared.get((a, b), 0) + 1
    return any(c > threshold * (sizes[a] + sizes[b] - c) for (a, b), c in shared.items())


def _runs(repeated: np.ndarray) -> Iterator[tuple[int, int]]:
    """(first, last) index of each run of equal neighbours, from positions i where x[i] == x[i+1]."""
    if not len(repeated):
        return
    breaks = np.flatnonzero(np.diff(repeated) != 1)
    starts = np.concatenate(([repeated[0]], repeated[breaks + 1]))
    ends = np.concatenate((repeated[breaks], [repeated[-1]])) + 1
    yield from zip(starts.tolist(), ends.tolist(), strict=True)


def analyse(text: str, n: int, threshold: float, shingle: int = NEAR_DUP_SHINGLE) -> Analysis:
    """Repetition (sentence n-grams) and dedup keys of a piece, from one tokenisation: each word
    is hashed once (crc32) and n-grams are combined in numpy."""
    sentences = [_WORD.findall(s) for s in _SENTENCE.split(text.lower())]
    sentences = [s for s in sentences if s]
    flat = [w for s in sentences for w in s]
    words = np.fromiter(map(zlib.crc32, map(str.encode, flat)), np.uint64, len(flat))
    sentence = np.repeat(np.arange(len(sentences), dtype=np.uint64), [len(s) for s in sentences])
    long_enough = sum(len(s) >= n for s in sentences) >= 2
    repetitive = long_enough and _repetitive(words, sentence, n, threshold)
    key = hashlib.sha1(normalise(text).encode("utf-8")).digest()
    k = shingle
    shingles = np.unique(_ngrams(words, k)) if len(words) >= k else np.unique(words & _MASK32)
    return Analysis(repetitive, key, shingles)


def is_repetitive(text: str, n: int, threshold: float) -> bool:
    """True when two sentences have word n-gram Jaccard above `threshold` (METHOD.md). Sentences
    are split at . ! ? and newlines; sentences of fewer than n words have no n-gram."""
    return analyse(text, n, threshold).repetitive
