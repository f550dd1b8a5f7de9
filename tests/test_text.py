"""Pure text functions: HTML/Markdown -> blocks -> segments, and every per-segment filter."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from humpback_ds import markup, text

WORDS = (  # filler vocabulary
    "river stone garden bread window lantern copper meadow harbor violin pepper ladder orchard "
    "candle thunder pillow basket saddle marble falcon tunnel cedar walnut anchor compass ribbon "
    "pebble glacier mustard velvet kettle timber quarry sparrow lemon beacon canyon dune hammer"
)


def prose(seed: int, chars: int) -> str:
    """Deterministic filler of at least `chars` characters whose sentences barely overlap."""
    rng = random.Random(seed)
    sentences: list[str] = []
    while sum(len(s) + 1 for s in sentences) < chars:
        words = rng.sample(WORDS.split(), 9)
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def pieces(
    blocks: list[markup.Block], lo: int = 600, hi: int = 3000
) -> list[tuple[str, int, str | None]]:
    return [(p.header, len(p.text), p.reason) for p in text.document_pieces(blocks, lo, hi)]


# -- header filters ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", "empty_header"),
        ("  -- ", "empty_header"),
        ("FORUM", "upper_header"),
        ("SHARE THIS ARTICLE", "upper_header"),
        ("Quick Links", "boilerplate_header"),
        ("Advertisement", "boilerplate_header"),
        ("Free Newsletter!", "boilerplate_header"),
        ("Related posts", "boilerplate_header"),
        ("Comments", "boilerplate_header"),
        ("Menu", "boilerplate_header"),
        # kept: ordinary headers, and list words inside a longer header
        ("Kneading the Dough", None),
        ("The Roman Forum", None),
        ("Comments in Python Code", None),
        ("CSS Grid in 10 Minutes", None),
    ],
)
def test_header_problem(header: str, expected: str | None) -> None:
    assert text.header_problem(header) == expected


# -- HTML: chrome removal, blocks ------------------------------------------------------------

PAGE = """<!DOCTYPE html><html><head><title>T</title><script>var h = "<h2>x</h2>";</script></head>
<body><header class="site"><h1>Site Name</h1><a href="/">Home</a></header>
<nav><ul><li>About</li></ul></nav>
<div id="cookie-banner"><p>We use cookies.</p><div>Accept all</div></div>
<main><article><header><h1>Bread &amp; Butter</h1></header>
<p>First   paragraph
  of text.</p>
<aside>Buy our book</aside>
<h2>Flour</h2><ul><li>Strong flour</li><li><p>Water</p></li></ul><pre>x = 1
    y = 2</pre>
<div class="newsletter-signup"><h3>Get updates</h3><form><input type="email"/></form></div>
<div class="social-share">Share on every network</div>
</article></main><footer><p>All rights reserved</p></footer>
<div role="navigation">Skip links</div><!-- a comment <h2>hidden</h2> --></body></html>"""


def test_html_chrome_removed_and_content_kept() -> None:
    blocks, removed = markup.html_blocks(PAGE)
    assert blocks == [
        (1, "Bread & Butter"),
        (0, "First paragraph of text."),
        (2, "Flour"),
        (0, "- Strong flour"),
        (0, "- Water"),
        (0, "x = 1\n    y = 2"),
    ]
    # site <header>, nav, cookie div, aside, newsletter div, share div, footer, role=navigation
    assert removed == 8


def test_html_header_inside_article_is_kept_but_site_header_is_not() -> None:
    kept, _ = markup.html_blocks("<article><header><h1>Title</h1></header><p>Body</p></article>")
    dropped, removed = markup.html_blocks("<header><h1>Site</h1></header><p>Body</p>")
    assert kept == [(1, "Title"), (0, "Body")]
    assert dropped == [(0, "Body")] and removed == 1


def test_nested_chrome_element_of_the_same_tag_ends_at_its_own_close() -> None:
    page = '<div class="menu"><div>a</div><div>b</div></div><div class="content"><p>kept</p></div>'
    assert markup.html_blocks(page) == ([(0, "kept")], 1)


# -- Markdown ----------------------------------------------------------------------------------


def test_markdown_headers_and_code_fences() -> None:
    doc = "# Title\n\nPara one\nline two.\n\n```bash\n# a comment, not a header\nls\n```\n\n## Sub ##\ntext\n"
    assert markup.markdown_blocks(doc) == [
        (1, "Title"),
        (0, "Para one\nline two."),
        (0, "```bash\n# a comment, not a header\nls\n```"),
        (2, "Sub"),
        (0, "text"),
    ]


def test_plain_text_title_line_becomes_the_header() -> None:
    assert markup.markdown_blocks("A Short Title\n\nBody text.") == [
        (1, "A Short Title"),
        (0, "Body text."),
    ]
    # a first line that is a sentence is not a title: the text stays header-less
    assert markup.markdown_blocks("This is a sentence.\n\nBody.") == [
        (0, "This is a sentence."),
        (0, "Body."),
    ]


# -- cutting: nesting, descent, lengths -------------------------------------------------------


def test_sub_headers_are_included_in_the_parent_segment() -> None:
    a, b, c = prose(1, 300), prose(2, 300), prose(3, 300)
    blocks = [(2, "Mixing"), (0, a), (3, "Resting"), (0, b), (4, "Why"), (0, c)]
    (piece,) = list(text.document_pieces(blocks, 600, 3000))
    assert piece.header == "Mixing" and piece.reason is None
    assert piece.text == f"{a}\n\nResting\n\n{b}\n\nWhy\n\n{c}"


def test_too_long_section_descends_to_its_sub_headers() -> None:
    intro, s1, s2 = prose(1, 700), prose(2, 1800), prose(3, 1800)
    blocks = [(1, "Guide"), (0, intro), (2, "Part one"), (0, s1), (2, "Part two"), (0, s2)]
    got = list(text.document_pieces(blocks, 600, 3000))
    assert [(p.path, p.text, p.reason) for p in got] == [
        (("Guide",), intro, None),
        (("Guide", "Part one"), s1, None),
        (("Guide", "Part two"), s2, None),
    ]


def test_length_bounds() -> None:
    short, ok, long = prose(1, 400), prose(2, 1000), prose(3, 3200)
    assert len(short) < 600 and 600 <= len(ok) <= 3000 and len(long) > 3000
    blocks = [(2, "Short"), (0, short), (2, "Fine"), (0, ok), (2, "Long"), (0, long)]
    assert pieces(blocks) == [
        ("Short", len(short), "too_short"),
        ("Fine", len(ok), None),
        ("Long", len(long), "too_long"),
    ]


def test_bad_sub_header_is_pruned_from_its_parent() -> None:
    body, ad = prose(1, 900), prose(2, 200)
    blocks = [
        (1, "Tomatoes"),
        (0, body),
        (2, "Quick Links"),
        (0, ad),
        (2, "EDITORS PICKS"),
        (0, ad),
    ]
    assert pieces(blocks) == [
        ("Quick Links", len(ad), "boilerplate_header"),
        ("EDITORS PICKS", len(ad), "upper_header"),
        ("Tomatoes", len(body), None),
    ]


def test_text_before_the_first_header_has_an_empty_header() -> None:
    pre, body = prose(1, 700), prose(2, 700)
    assert pieces([(0, pre), (2, "Topic"), (0, body)]) == [
        ("", len(pre), "empty_header"),
        ("Topic", len(body), None),
    ]


def test_segment_ids_are_stable_and_distinct() -> None:
    a = text.segment_id("web/a.html", ("Guide", "Part one"), 1)
    assert a == text.segment_id("web/a.html", ("Guide", "Part one"), 1)
    assert a != text.segment_id("web/a.html", ("Guide", "Part one"), 2)
    assert a != text.segment_id("web/b.html", ("Guide", "Part one"), 1)
    assert len(a) == 20


# -- content filters -----------------------------------------------------------------------------


def test_repetitive_sentences_are_detected() -> None:
    spam = "Caffeine can keep you awake for hours after your last cup of coffee. " * 2
    assert text.is_repetitive(spam + prose(1, 300), n=3, threshold=0.7)
    near = (
        "Caffeine can keep you awake for many hours after your last cup of coffee. "
        "Caffeine can keep you awake for many hours after your last cup of tea."
    )
    assert text.is_repetitive(near, n=3, threshold=0.7)  # 11 shared of 13 trigrams: 0.85


def test_varied_sentences_are_not_repetitive() -> None:
    assert not text.is_repetitive(prose(1, 2500), n=3, threshold=0.7)
    related = (
        "Stir the sauce for two minutes over a low flame. "
        "Then stir the sauce for five more minutes after adding cream."
    )
    assert not text.is_repetitive(related, n=3, threshold=0.7)


def test_normalisation_for_exact_duplicates() -> None:
    assert (
        text.normalise("  WATCH the jar,\n rather  than the clock! ")
        == "watch the jar rather than the clock"
    )
    key = text.analyse("Watch the jar rather than the clock.", 3, 0.7).key
    assert key == text.analyse("WATCH the jar, rather than the clock!", 3, 0.7).key
    assert key != text.analyse("Watch the jar, not the clock.", 3, 0.7).key


def test_shingles_are_word_trigram_hashes() -> None:
    grams = text.analyse("One, two THREE four.", 3, 0.7).shingles
    assert len(grams) == 2 and grams.max() < 2**32
    assert (text.analyse("one two three four", 3, 0.7).shingles == grams).all()
    assert len(set(text.analyse("two three four five", 3, 0.7).shingles) & set(grams)) == 1
    assert len(text.analyse("Hi there", 3, 0.7).shingles) == 2  # fewer words than n: the words


def set_jaccard_reference(text_: str, n: int, threshold: float) -> bool:
    """The definition, written plainly: every sentence pair, Python sets of word n-grams."""
    grams = []
    for s in text.re.split(r"(?<=[.!?])\s+|\n+", text_.lower()):
        words = text.re.findall(r"\w+", s)
        if len(words) >= n:
            grams.append({tuple(words[i : i + n]) for i in range(len(words) - n + 1)})
    return any(
        len(a & b) / len(a | b) > threshold for i, a in enumerate(grams) for b in grams[i + 1 :]
    )


def test_repetition_matches_the_plain_definition_on_random_texts() -> None:
    rng = random.Random(0)
    vocab = WORDS.split()[:3]  # a tiny vocabulary makes shared n-grams common
    agree = Counter()
    for _ in range(300):
        sentences = [
            " ".join(rng.choices(vocab, k=rng.randint(2, 6))) + "."
            for _ in range(rng.randint(1, 6))
        ]
        doc = " ".join(sentences)
        for threshold in (0.3, 0.5, 0.7):
            got = text.is_repetitive(doc, 3, threshold)
            assert got == set_jaccard_reference(doc, 3, threshold), doc
            agree[got] += 1
    assert agree[True] == 87 and agree[False] == 813  # both outcomes exercised
