"""Benchmark of the segment stage: throughput per process and peak memory as the corpus grows.

usage: .venv/bin/python tools/bench_segment.py [--dir DIR] [--shards 4] [--shard_mb 50]
           [--workers 1 2] [--doc docs/bench_segment.md]

Generates a synthetic HTML corpus (deterministic: fixed seeds; SHARDS directories of SHARD_MB
each, so 4 x 50 MB = 200 MB by default) with headers, nested sub-headers, page chrome, boilerplate
and ALL-CAPS headers, repeated sentences, exact and near duplicate pages. Then runs
`humpback-ds segment` in a subprocess on the first shard and on all shards, once per worker count,
sampling the resident memory of the stage process and its workers (psutil) every 0.1 s, and writes
a table to --doc. Also times the HTML tokeniser against the stdlib html.parser on one shard.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from humpback_ds import markup  # noqa: E402

VOCAB = (  # filler vocabulary, split below
    "the of and to in a is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there been one all we their has would when if so no will "
    "river stone garden bread window lantern copper meadow harbor violin pepper ladder orchard "
    "candle thunder pillow basket saddle marble falcon tunnel cedar walnut anchor compass ribbon "
    "pebble glacier mustard velvet kettle timber quarry sparrow lemon beacon canyon dune hammer "
    "engine signal market winter summer valley bridge castle forest island mirror needle rocket "
    "bakes grows builds carries shows keeps turns brings holds opens moves reads writes measures"
)
WORDS = VOCAB.split(" ")
STYLE = " ".join(
    f".c{i} {{ margin: {i % 7}px; padding: {i % 5}px; color: #{i * 2654435761 % 16**6:06x}; }}"
    for i in range(60)
)
CHROME = """<header class="site-header"><div class="logo">Example Site</div><ul><li><a href="/">Home</a>
</li><li><a href="/a">Articles</a></li></ul></header><nav class="main-nav"><ul><li><a href="/x">Topics
</a></li><li><a href="/y">About us</a></li></ul></nav><div class="cookie-banner"><p>We use cookies
to improve your experience.</p><button>Accept</button></div>"""
FOOTER = """<aside class="sidebar"><h3>Popular Posts</h3><ul><li><a href="#">One</a></li></ul></aside>
<div class="newsletter-box"><h3>Free Newsletter</h3><form><input type="email"></form></div>
<footer><p>&copy; 2026 Example. All rights reserved.</p></footer></body></html>"""


class Generator:
    """Deterministic pages built from a pool of random sentences (fast: no per-word work)."""

    def __init__(self, seed: int = 0, pool: int = 50_000):
        rng = random.Random(seed)
        self.rng = rng
        self.sentences = [
            " ".join(rng.choices(WORDS, k=rng.randint(8, 22))).capitalize() + "."
            for _ in range(pool)
        ]
        self.pages: list[str] = []

    def paragraph(self) -> str:
        """Sentences in spans plus an inline link, as article templates mark them up."""
        rng = self.rng
        spans = " ".join(
            f'<span class="sentence">{x}</span>'
            for x in rng.choices(self.sentences, k=rng.randint(3, 7))
        )
        link = (
            f'<a href="https://www.example.org/articles/{rng.randrange(10**6)}/read?ref=inline" '
            f'class="inline-link" rel="noopener">{rng.choice(WORDS)}</a>'
        )
        return f'<p class="article-paragraph">{spans} {link}</p>'

    def section(self, i: int) -> str:
        rng = self.rng
        title = " ".join(rng.choices(WORDS[46:], k=3)).title()
        if i % 13 == 7:
            title = rng.choice(["Advertisement", "Related Posts", "COMMENTS", "Quick Links"])
        body = [self.paragraph() for _ in range(rng.randint(1, 4))]
        if i % 29 == 11:  # a section of repeated sentences
            body = ["<p>" + " ".join([rng.choice(self.sentences)] * 6) + "</p>"]
        if i % 5 == 3:  # nested sub-headers
            body += [f"<h3>{title} Detail {k}</h3>{self.paragraph()}" for k in range(2)]
        return f"<h2>{title}</h2>\n" + "\n".join(body)

    def page(self, n: int) -> str:
        if n % 50 == 49 and self.pages:  # exact duplicate of an earlier page
            return self.rng.choice(self.pages)
        if n % 40 == 39 and self.pages:  # near duplicate: a few words changed
            words = self.rng.choice(self.pages).split(" ")
            for k in range(0, len(words), 80):
                words[k] = "zebra"
            return " ".join(words)
        sections = "\n".join(self.section(i) for i in range(self.rng.randint(6, 14)))
        state = json.dumps({"page": n, "related": self.rng.choices(self.sentences, k=25)})
        html = (
            f"<!DOCTYPE html><html><head><title>Page {n}</title><style>{STYLE}</style>"
            f'<script type="application/json">{state}</script></head><body>{CHROME}'
            f"<main><article><h1>Page {n}</h1>{self.paragraph()}\n{sections}</article></main>"
            f"{FOOTER}"
        )
        if len(self.pages) < 200:
            self.pages.append(html)
        return html


LOAD_AT_START = os.getloadavg()[0]  # how busy the machine was (recorded in the doc)


def generate(root: Path, shards: int, shard_mb: int) -> list[Path]:
    """SHARDS directories of SHARD_MB of HTML each; reused when already there."""
    gen, n, dirs = Generator(), 0, []
    for s in range(shards):
        d = root / f"shard{s}"
        dirs.append(d)
        if (d / "DONE").exists():
            continue
        d.mkdir(parents=True, exist_ok=True)
        size = 0
        while size < shard_mb * 1_000_000:
            page = gen.page(n)
            (d / f"page{n:06d}.html").write_text(page, encoding="utf-8")
            size += len(page.encode())
            n += 1
        (d / "DONE").write_text("")
    return dirs


def measure(inputs: list[Path], out: Path, workers: int) -> dict:
    """Run the stage in a subprocess; sample RSS of it and its children every 0.1 s."""
    cmd = [
        sys.executable,
        "-m",
        "humpback_ds",
        "segment",
        "--input",
        *map(str, inputs),
        "--output",
        str(out),
        "--num_workers",
        str(workers),
    ]
    start, cpu0 = time.perf_counter(), _children_cpu()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ps, peak, peak_pss = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        try:
            procs = [ps, *ps.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs))
            # PSS shares pages common to the forked workers out among them: the true total
            peak_pss = max(peak_pss, sum(p.memory_full_info().pss for p in procs))
        except psutil.Error:
            pass
        time.sleep(0.1)
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with {proc.returncode}")
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    mb = manifest["counts"]["bytes"] / 1e6
    return {
        "mb": mb,
        "workers": workers,
        "wall": wall,
        "mb_s": mb / wall,
        "mb_s_per_proc": mb / wall / workers,
        "cpu": cpu,
        "mb_per_cpu_s": mb / cpu,
        "peak_mb": peak / 1e6,
        "peak_pss_mb": peak_pss / 1e6,
        "written": manifest["counts"]["written"],
        "rejected": manifest["rejected"],
    }


def _children_cpu() -> float:
    """User + system CPU seconds of every finished, reaped descendant (pool workers included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class StdlibBlocks(HTMLParser):
    """markup.html_blocks's job (chrome skipping, blocks, headers) on top of html.parser, to compare
    the two tokenisers fairly; `head` and raw-text elements are dropped the same way."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[int, str]] = []
        self.parts: list[str] = []
        self.skip_tag, self.skip, self.heading, self.articles = "", 0, 0, 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if self.skip:
            self.skip += tag == self.skip_tag
            return
        raw = " ".join(f'{k}="{v}"' for k, v in attrs if v)
        if markup._is_chrome(tag, raw, self.articles > 0):
            self.skip_tag, self.skip = tag, 1
            return
        self.articles += tag in ("article", "main")
        self._boundary(tag, closing=False)

    def handle_endtag(self, tag: str) -> None:
        if self.skip:
            self.skip -= tag == self.skip_tag
            return
        self.articles -= tag in ("article", "main") and self.articles > 0
        self._boundary(tag, closing=True)

    def _boundary(self, tag: str, closing: bool) -> None:
        if tag in markup._HEADINGS or (tag in markup._BLOCK and not self.heading):
            words = " ".join("".join(self.parts).split())
            if words or self.heading:
                self.blocks.append((self.heading, words))
            self.parts = []
            if tag in markup._HEADINGS:
                self.heading = 0 if closing else markup._HEADINGS[tag]

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)


def parser_speed(shard: Path, limit_mb: float = 20) -> tuple[float, float, float, float]:
    """MB/s of markup.html_blocks, of html.parser with no-op handlers, and of html.parser doing
    the same work as markup.html_blocks, on the same pages (one process), and the fraction of
    the HTML that is visible text."""

    class Collect(HTMLParser):
        def handle_data(self, data: str) -> None:
            self.last = data

    pages, size = [], 0
    for f in sorted(shard.glob("*.html")):
        pages.append(f.read_text(encoding="utf-8"))
        size += len(pages[-1].encode())
        if size > limit_mb * 1e6:
            break
    t = time.process_time()
    for p in pages:
        markup.html_blocks(p)
    ours = size / 1e6 / (time.process_time() - t)
    t = time.process_time()
    for p in pages:
        Collect().feed(markup._RAW.sub(" ", p))
    stdlib = size / 1e6 / (time.process_time() - t)
    t = time.process_time()
    for p in pages:
        StdlibBlocks().feed(markup._RAW.sub(" ", p))
    stdlib_full = size / 1e6 / (time.process_time() - t)
    visible = sum(len(t) for p in pages[:50] for _, t in markup.html_blocks(p)[0])
    fraction = visible / sum(len(p) for p in pages[:50])
    return ours, stdlib, stdlib_full, fraction


def report(rows: list[dict], speeds: tuple[float, ...], command: str) -> str:
    lines = [
        "# Segment stage benchmark",
        "",
        f"Command: `{command}`",
        "",
        "Synthetic HTML from tools/bench_segment.py: pages with an h1, 6-14 h2 sections, nested h3s, "
        "site header / nav / cookie banner / sidebar / newsletter form / footer, Advertisement, "
        "Quick Links, Related Posts and COMMENTS headers, sections of repeated sentences, exact "
        f"and near duplicate pages. Visible text is {speeds[3]:.0%} of the HTML bytes (real pages "
        "carry far more markup and script per character of text, so they run faster per MB).",
        "",
        "MB = MB of HTML read. MB/s per process = MB / wall / workers. CPU s = user + system time "
        "of the stage process and its workers; MB per CPU-s is the throughput of one fully "
        "available core, robust to sharing. Peak RSS = the stage process plus its workers, sampled "
        "every 0.1 s; peak PSS counts pages shared by the forked workers once (the true total). "
        "Wall time includes interpreter start-up (~0.5 s) and hashing the inputs for "
        "the manifest.",
        "",
        f"Machine: {os.cpu_count()} cores, 1-minute load average {LOAD_AT_START:.2f} when the "
        "run started. On a shared machine wall-clock figures are pessimistic (compare wall s "
        "with CPU s: the stage got a fraction of the cores) and 2 workers cannot beat 1 when "
        "both cores are busy; MB per CPU-s is then the figure to hold against the aim of "
        ">= 5 MB/s of HTML per process.",
        "",
        "| corpus MB | workers | wall s | MB/s | MB/s per process | CPU s | MB per CPU-s "
        "| peak RSS MB | peak PSS MB | segments written |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mb']:.0f} | {r['workers']} | {r['wall']:.1f} | {r['mb_s']:.2f} | "
            f"{r['mb_s_per_proc']:.2f} | {r['cpu']:.1f} | {r['mb_per_cpu_s']:.2f} | "
            f"{r['peak_mb']:.0f} | {r['peak_pss_mb']:.0f} | {r['written']:,} |"
        )
    one = [r for r in rows if r["workers"] == rows[0]["workers"]]
    if len(one) >= 2 and one[-1]["written"] > one[0]["written"]:
        grow = (one[-1]["peak_pss_mb"] - one[0]["peak_pss_mb"]) * 1e6
        per_seg = grow / (one[-1]["written"] - one[0]["written"])
        lines += [
            "",
            f"Memory: from {one[0]['mb']:.0f} to {one[-1]['mb']:.0f} MB of input, peak PSS at "
            f"{one[0]['workers']} worker(s) grows by {grow / 1e6:.0f} MB for "
            f"{one[-1]['written'] - one[0]['written']:,} more kept segments, {per_seg:,.0f} bytes "
            "each, consistent with the size of the dedup state (the parent's band index: 14 dict "
            "entries per kept segment; its packed 512-byte MinHash signature; its 20-byte digest in "
            "a set), the "
            "only state that grows with the corpus; documents are streamed in batches of ~1 MB "
            "with at most 2 batches per worker in flight. At the paper's 502,133 segments the "
            f"dedup state would be about {502_133 * per_seg / 1e9:.1f} GB.",
        ]
    lines += [
        "",
        f"Rejected on the largest run: `{json.dumps(rows[-1]['rejected'])}`",
        "",
        f"HTML tokenisers alone (one process, first 20 MB of shard0, CPU time): markup.html_blocks "
        f"{speeds[0]:.1f} MB/s; stdlib html.parser doing the same work (chrome skipping, blocks) "
        f"{speeds[2]:.1f} MB/s; html.parser with no-op handlers {speeds[1]:.1f} MB/s.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dir", default="", help="corpus directory (kept); default: a temp dir")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--shard_mb", type=int, default=50)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--doc", default=str(ROOT / "docs" / "bench_segment.md"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dir) if args.dir else Path(tmp) / "corpus"
        t = time.perf_counter()
        shards = generate(root, args.shards, args.shard_mb)
        print(
            f"corpus: {args.shards} x {args.shard_mb} MB in {time.perf_counter() - t:.1f} s",
            flush=True,
        )
        rows = []
        for workers in args.workers:
            for inputs in (shards[:1], shards):
                rows.append(measure(inputs, Path(tmp) / "segments.jsonl", workers))
                print(json.dumps(rows[-1]), flush=True)
        speeds = parser_speed(shards[0])
    command = "python " + " ".join(["tools/bench_segment.py", *sys.argv[1:]])
    Path(args.doc).write_text(report(rows, speeds, command), encoding="utf-8")
    print(Path(args.doc).read_text())


if __name__ == "__main__":
    main()
