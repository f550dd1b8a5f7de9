"""Documents -> blocks: HTML and Markdown (or plain text) become a flat list of `(level, text)`
blocks, level 1-6 for a header and 0 for a paragraph (METHOD.md 'The loop' 2). text.py nests the
blocks into sections and cuts them into segments.

HTML is tokenised with one regex over tags (no per-character Python loop): about 2x the speed of
the stdlib html.parser doing the same work (docs/bench_segment.md); lxml is not installed. Page
chrome is dropped: script, style, noscript, template, svg, iframe, nav, footer, aside, form, menu,
dialog, a <header> outside any <article>/<main> (inside one it carries the title), and any element
whose role, class or id names navigation, menus, cookie banners, subscribe / sign-up / newsletter
blocks, ads, sidebars, sharing or comments. Known limit: an unclosed chrome element swallows the
rest of its document.
"""

from __future__ import annotations

import html as htmllib
import re

Block = tuple[int, str]  # (header level 1-6, or 0 for a paragraph; text)


def _words(spec: str) -> frozenset[str]:
    """A compact word list: 'a|b|c' -> {'a', 'b', 'c'}."""
    return frozenset(spec.split("|"))


_RAW = re.compile(
    r"<(head|script|style|noscript|template|svg|iframe|textarea|select)\b[^>]*>.*?</\1\s*>"
    r"|<!--.*?-->|<![^>]*>|<\?[^>]*>",
    re.S | re.I,
)
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9]*)([^>]*)>")
_ATTR = re.compile(r"""\b(?:class|id)\s*=\s*["']?([^"'>]*)""", re.I)
_ROLE = re.compile(r"""\brole\s*=\s*["']?([a-z]+)""", re.I)
_CHROME_WORDS = re.compile(
    r"(?:^|[\s_-])(?:nav|navbar|navigation|menu|menubar|breadcrumbs?|cookies?|consent|gdpr"
    r"|subscribe|subscription|signup|sign-up|newsletter|advert|advertisement|ads?|sponsored"
    r"|sidebar|footer|masthead|share|sharing|social|comments?|popup|modal)(?=$|[\s_-])"
)
CHROME_TAGS = _words("nav|footer|aside|form|menu|dialog")
CHROME_ROLES = _words("navigation|banner|contentinfo|complementary|search|menu|menubar|dialog")
_VOID = _words("area|base|br|col|embed|hr|img|input|link|meta|param|source|track|wbr")
_BLOCK = _words(
    "p|div|section|article|main|li|ul|ol|dl|dt|dd|br|tr|table|blockquote|figure|figcaption|hr|"
    "body|html|td|th"
)
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}


def _is_chrome(name: str, attrs: str, in_article: bool) -> bool:
    if name in _VOID or attrs.endswith("/"):
        return False
    if name in CHROME_TAGS or (name == "header" and not in_article):
        return True
    if not attrs:
        return False
    role = _ROLE.search(attrs)
    if role and role.group(1).lower() in CHROME_ROLES:
        return True
    return any(_CHROME_WORDS.search(v.lower()) for v in _ATTR.findall(attrs))


def _clean(text: str, keep_lines: bool = False) -> str:
    if "&" in text:
        text = htmllib.unescape(text)
    if keep_lines:
        return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())
    return " ".join(text.split())


def html_blocks(page: str) -> tuple[list[Block], int]:
    """HTML -> blocks, with page chrome removed; also returns how many chrome elements went."""
    page = _RAW.sub(" ", page)
    blocks: list[Block] = []
    parts: list[str] = []
    heading = in_pre = articles = skip_depth = removed = pos = 0
    skip_tag = ""
    for m in _TAG.finditer(page):
        if not skip_depth and m.start() > pos:
            parts.append(page[pos : m.start()])
        pos = m.end()
        closing, name, attrs = m.group(1), m.group(2).lower(), m.group(3)
        if skip_depth:
            if name == skip_tag and not attrs.endswith("/"):
                skip_depth += -1 if closing else 1
            continue
        if not closing and _is_chrome(name, attrs, articles > 0):
            skip_tag, skip_depth, removed = name, 1, removed + 1
            continue
        if name in ("article", "main"):
            articles = max(0, articles + (-1 if closing else 1))
        if name in _HEADINGS:
            text = _clean("".join(parts))
            if text or heading:
                blocks.append((heading, text))
            parts, heading = [], 0 if closing else _HEADINGS[name]
        elif name == "pre" or (name in _BLOCK and not heading and not in_pre):
            text = _clean("".join(parts), keep_lines=bool(in_pre))
            if text and text != "-":
                blocks.append((0, text))
            bullet = (name == "li" and not closing) or text == "-"
            parts = ["- "] if bullet else []
            if name == "pre":
                in_pre = 0 if closing else 1
    if not skip_depth:
        parts.append(page[pos:])
    text = _clean("".join(parts))
    if text:
        blocks.append((heading, text))
    return [b for b in blocks if b != (0, "-")], removed


_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def markdown_blocks(doc: str) -> list[Block]:
    """Markdown or plain text -> blocks. ATX headers only (`#`..`######`), never inside code
    fences. A document with no header whose first line is short and unpunctuated (a plain-text
    title, as in C4-style dumps) gets that line as its level-1 header."""
    blocks: list[Block] = []
    para: list[str] = []
    fence = ""
    for line in doc.splitlines():
        opener = _FENCE.match(line)
        if fence or opener:
            para.append(line.rstrip())
            if not fence:
                fence = opener.group(1)  # type: ignore[union-attr]
            elif opener and opener.group(1) == fence:
                fence = ""
            continue
        header = _ATX.match(line)
        if header or not line.strip():
            if para:
                blocks.append((0, "\n".join(para)))
                para = []
            if header:
                blocks.append((len(header.group(1)), (header.group(2) or "").strip()))
            continue
        para.append(line.rstrip())
    if para:
        blocks.append((0, "\n".join(para)))
    if blocks and not any(level for level, _ in blocks):
        first = blocks[0][1]
        if "\n" not in first and len(first) <= 100 and first[-1:] not in ".!?:;,":
            blocks[0] = (1, first.strip())
    return blocks
