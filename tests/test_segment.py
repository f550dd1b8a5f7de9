"""The segment stage end to end: shipped corpus counts, CLI, dumps, dedup, workers, errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from humpback_ds import cli, text
from humpback_ds.config import SegmentConfig
from humpback_ds.manifest import read_manifest
from humpback_ds.records import DataError, Segment, load_records
from humpback_ds.stages import segment

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "humpback_ds" / "sample_data" / "web"

# The shipped corpus (humpback_ds/sample_data/web): 12 HTML pages, 6 Markdown/text files and a
# 3-document JSONL dump. Every number below was checked by reading the pages.
CORPUS_COUNTS = {
    "files": 19,
    "documents": 21,
    "bad_lines": 0,
    "chrome_elements_removed": 58,
    "written": 41,
}
CORPUS_REJECTED = {
    "too_short": 10,  # 9 one-line page intros + "Tools You Need" (bike_chain.html)
    "too_long": 1,  # "A Compost Glossary", 3,186 chars with no sub-header
    "upper_header": 2,  # "FORUM" (lisbon.html), "SHARE THIS ARTICLE" (bike_commuting.md)
    "boilerplate_header": 5,  # Advertisement x2, Quick Links x2, Related Posts
    "repetitive": 1,  # "Caffeine and Late Meals" (sleep.html)
    "exact_duplicate": 1,  # sourdough_mirror.html: same text, other case and punctuation
    "near_duplicate": 4,  # tomatoes_copy.html: its 4 sections, a few words changed in each
}

WORDS = (  # filler vocabulary
    "river stone garden bread window lantern copper meadow harbor violin pepper ladder orchard "
    "candle thunder pillow basket saddle marble falcon tunnel cedar walnut anchor compass ribbon "
    "pebble glacier mustard velvet kettle timber quarry sparrow lemon beacon canyon dune hammer"
)


def prose(seed: int, chars: int) -> str:
    rng = random.Random(seed)
    sentences: list[str] = []
    while sum(len(s) + 1 for s in sentences) < chars:
        sentences.append(" ".join(rng.sample(WORDS.split(), 9)).capitalize() + ".")
    return " ".join(sentences)


def run_cli(*args: str) -> int:
    return cli.main(["segment", *args])


@pytest.fixture(scope="module")
def corpus_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "segments.jsonl"
    assert run_cli("--input", str(WEB), "--output", str(out), "--num_workers", "1") == 0
    return out


def test_shipped_corpus_counts_via_cli(corpus_output: Path) -> None:
    manifest = read_manifest(corpus_output)
    assert manifest is not None
    assert {k: manifest["counts"][k] for k in CORPUS_COUNTS} == CORPUS_COUNTS
    assert manifest["rejected"] == CORPUS_REJECTED
    assert manifest["stage"] == "segment"
    assert list(manifest["inputs"]) == [str(WEB)] and len(manifest["inputs"][str(WEB)]) == 64
    assert manifest["config"]["min_chars"] == 600 and manifest["config"]["max_chars"] == 3000


def test_shipped_corpus_segments_content(corpus_output: Path) -> None:
    segs = load_records(corpus_output, Segment)
    assert len(segs) == CORPUS_COUNTS["written"]
    assert len({s.id for s in segs}) == len(segs)
    assert all(600 <= len(s.text) <= 3000 for s in segs)
    headers = {s.header for s in segs}
    assert {"The Roman Forum", "Comments in Python Code", "Starting with Bees"} <= headers
    assert not headers & {"Quick Links", "FORUM", "Advertisement", "Related Posts", ""}
    joined = "\n".join(s.text for s in segs)
    for chrome in ("cookies", "Subscribe", "All rights reserved", "Popular Posts", "Share this"):
        assert chrome not in joined
    by_doc: dict[str, int] = {}
    for s in segs:
        by_doc[s.doc_id] = by_doc.get(s.doc_id, 0) + 1
    assert by_doc["web/html/roman_roads.html"] == 4  # page > 3,000 chars: cut at its h2s
    assert by_doc["web/markdown/houseplants.md"] == 1  # whole page fits: one segment
    assert (
        "web/html/tomatoes_copy.html" not in by_doc
        and "web/html/sourdough_mirror.html" not in by_doc
    )
    dump = [s for s in segs if s.doc_id.startswith("docs.jsonl") or s.doc_id.startswith("web/docs")]
    assert sorted(s.doc_id for s in dump) == [
        "web/docs.jsonl:bees-1",
        "web/docs.jsonl:chess-1",
        "web/docs.jsonl:knife-1",
    ]
    knife = next(s for s in dump if s.doc_id.endswith("knife-1"))
    assert knife.header == "Sharpening a Kitchen Knife" and knife.source.endswith("docs.jsonl:3")
    # a git code fence's "# comment" line did not become a header
    git = next(s for s in segs if s.doc_id == "web/markdown/git_basics.md")
    assert git.header == "Everyday Git" and "# see what changed and what is staged" in git.text


@pytest.mark.dist
def test_one_and_two_workers_give_identical_output(corpus_output: Path, tmp_path: Path) -> None:
    out = tmp_path / "two.jsonl"
    assert run_cli("--input", str(WEB), "--output", str(out), "--num_workers", "2") == 0
    assert out.read_bytes() == corpus_output.read_bytes()


def test_rerun_with_same_inputs_is_skipped(tmp_path: Path) -> None:
    src = tmp_path / "docs"
    src.mkdir()
    (src / "a.md").write_text(f"# Alpha\n\n{prose(1, 800)}\n")
    out = tmp_path / "out.jsonl"
    cfg = SegmentConfig(input=[str(src)], output=str(out), num_workers=1)
    segment.run(cfg)
    first = read_manifest(out)
    segment.run(cfg)
    assert read_manifest(out) == first  # not rewritten
    (src / "b.md").write_text(f"# Beta\n\n{prose(2, 800)}\n")
    segment.run(cfg)
    assert read_manifest(out)["counts"]["written"] == 2  # changed input: redone


def test_exact_and_near_duplicates_removed_distinct_text_kept(tmp_path: Path) -> None:
    base = prose(1, 1200)
    words = base.split()
    near = " ".join(w if i % 60 != 30 else "zebra" for i, w in enumerate(words))  # 3 words changed
    assert near != base
    docs = {
        "a.md": f"# Original\n\n{base}\n",
        "b.md": f"# Copy\n\n{base.upper().replace('.', '!')}\n",  # same after normalisation
        "c.md": f"# Edited\n\n{near}\n",
        "d.md": f"# Different\n\n{prose(2, 1200)}\n",
    }
    src = tmp_path / "docs"
    src.mkdir()
    for name, body in docs.items():
        (src / name).write_text(body)
    out = segment.run(
        SegmentConfig(input=[str(src)], output=str(tmp_path / "o.jsonl"), num_workers=1)
    )
    assert [s.header for s in load_records(out, Segment)] == ["Original", "Different"]
    assert read_manifest(out)["rejected"] == {"exact_duplicate": 1, "near_duplicate": 1}


def test_near_duplicate_means_minhash_jaccard_at_threshold() -> None:
    dedup = segment.Deduper(threshold=0.8, num_perm=128)

    def keys(doc: str) -> tuple[bytes, np.ndarray]:
        analysis = text.analyse(doc, 3, 0.7)
        return analysis.key, segment._minhash(analysis.shingles, 128)

    base = prose(1, 1500)
    words = base.split()
    assert dedup.check(*keys(base)) is None
    half = " ".join(words[: len(words) // 2] + prose(9, 700).split())  # Jaccard ~0.3: kept
    assert dedup.check(*keys(half)) is None
    close = " ".join(w if i % 50 != 25 else "zebra" for i, w in enumerate(words))  # ~0.9
    assert dedup.check(*keys(close)) == "near_duplicate"
    assert dedup.check(*keys(base.upper())) == "exact_duplicate"
    assert dedup.kept == 2


def write_dump(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def test_jsonl_dump_with_malformed_lines_is_quarantined(tmp_path: Path) -> None:
    dump = tmp_path / "dump.jsonl"
    write_dump(
        dump,
        [
            json.dumps({"id": "x1", "text": f"# First\n\n{prose(1, 900)}"}),
            json.dumps({"id": "x2", "html": f"<h2>Second</h2><p>{prose(2, 900)}</p>"}),
            '{"id": "x3", "text": "unterminated',
            json.dumps({"text": f"Plain Title\n\n{prose(3, 900)}"}),
            json.dumps({"id": "x5", "body": "wrong field"}),
        ],
    )
    out = tmp_path / "seg.jsonl"
    args = ["--input", str(dump), "--output", str(out), "--num_workers", "1"]
    assert run_cli(*args) == 1  # 2 bad of 5 > max_bad_fraction 0.01
    assert not out.exists()
    assert run_cli(*args, "--max_bad_fraction", "0.5") == 0
    segs = load_records(out, Segment)
    assert [(s.doc_id, s.header) for s in segs] == [
        ("dump.jsonl:x1", "First"),
        ("dump.jsonl:x2", "Second"),
        ("dump.jsonl:4", "Plain Title"),
    ]
    quarantined = [json.loads(line) for line in (tmp_path / "seg.jsonl.quarantine.jsonl").open()]
    assert [(q["file"], q["line"]) for q in quarantined] == [(str(dump), 3), (str(dump), 5)]
    assert "invalid JSON" in quarantined[0]["error"] and "--text_field" in quarantined[1]["error"]
    assert read_manifest(out)["counts"]["bad_lines"] == 2


def test_parquet_dump(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {"id": ["p1", "p2"], "text": [f"# Alpha\n\n{prose(1, 700)}", f"# Beta\n\n{prose(2, 700)}"]}
    )
    pq.write_table(table, tmp_path / "docs.parquet")
    out = segment.run(
        SegmentConfig(
            input=[str(tmp_path / "docs.parquet")], output=str(tmp_path / "o.jsonl"), num_workers=1
        )
    )
    assert [(s.doc_id, s.header) for s in load_records(out, Segment)] == [
        ("docs.parquet:p1", "Alpha"),
        ("docs.parquet:p2", "Beta"),
    ]


def test_missing_input_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"{missing}: no such file or directory"):
        segment.run(SegmentConfig(input=[str(missing)], output=str(tmp_path / "o.jsonl")))
    assert run_cli("--input", str(missing), "--output", str(tmp_path / "o.jsonl")) == 1
