"""Typed records, JSONL validation with quarantine, atomic writes and manifests."""

from __future__ import annotations

import gzip
import json

import pytest

from humpback_ds.manifest import Manifest, content_hash, manifest_path, read_manifest
from humpback_ds.records import (
    AtomicWriter,
    DataError,
    Pair,
    Quarantine,
    ReadStats,
    Scored,
    load_records,
    write_records,
)

GOOD = {"id": "a", "instruction": "Say hi.", "output": "Hi!"}


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_round_trip_and_gzip(tmp_path):
    pairs = [
        Pair(id=str(i), instruction=f"q{i} é", output=f"a{i} 日本", meta={"k": i}) for i in range(3)
    ]
    out = tmp_path / "pairs.jsonl"
    assert write_records(out, pairs) == 3
    assert load_records(out, Pair) == pairs
    gz = tmp_path / "pairs.jsonl.gz"
    gz.write_bytes(gzip.compress(out.read_bytes()))
    assert load_records(gz, Pair) == pairs


def test_bad_lines_are_quarantined_with_file_and_line(tmp_path):
    src = tmp_path / "in.jsonl"
    _write_lines(
        src,
        [
            json.dumps(GOOD),
            "{not json",
            json.dumps({"id": "b", "instruction": "x"}),  # missing output
            json.dumps({**GOOD, "id": "c", "output": 5}),  # wrong type
            json.dumps({**GOOD, "id": "d", "colour": "red"}),  # unknown field
            "",
            json.dumps({**GOOD, "id": "e"}),
        ],
    )
    q = Quarantine(tmp_path / "out.quarantine.jsonl")
    stats = ReadStats(str(src))
    got = load_records(src, Pair, quarantine=q, max_bad_fraction=1.0, stats=stats)
    q.close()
    assert [p.id for p in got] == ["a", "e"]  # valid lines are never lost
    assert (stats.read, stats.bad) == (6, 4)
    bad = [json.loads(x) for x in (tmp_path / "out.quarantine.jsonl").read_text().splitlines()]
    assert [b["line"] for b in bad] == [2, 3, 4, 5]
    assert bad[0]["text"] == "{not json" and bad[0]["file"] == str(src)
    assert "invalid JSON" in bad[0]["error"]
    assert bad[1]["error"] == "missing field 'output' for Pair"
    assert bad[2]["error"].startswith("field 'output' must be str")
    assert "unknown field(s) ['colour']" in bad[3]["error"]


def test_threshold_fails_with_a_clear_message(tmp_path):
    src = tmp_path / "in.jsonl"
    _write_lines(src, [json.dumps(GOOD), "{oops", json.dumps(GOOD)])
    with pytest.raises(DataError) as e:
        load_records(src, Pair, max_bad_fraction=0.1)
    msg = str(e.value)
    assert f"{src}: 1 of 3 lines are malformed" in msg
    assert f"{src}:2: invalid JSON" in msg
    assert "--max_bad_fraction" in msg


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_records(tmp_path / "nope.jsonl", Pair)


def test_optional_and_float_fields():
    from humpback_ds.records import from_dict

    s = from_dict(
        Scored,
        {
            "id": "1",
            "segment_id": "s",
            "instruction": "i",
            "output": "o",
            "mode": "logprob",
            "model": "m",
            "score": 4,
            "parsed": True,
            "probs": [0.1, 0.1, 0.1, 0.6, 0.1],
            "expected": None,
        },
    )
    assert s.score == 4 and s.expected is None
    with pytest.raises(ValueError, match="field 'parsed' must be bool"):
        from_dict(
            Scored,
            {
                "id": "1",
                "segment_id": "s",
                "instruction": "i",
                "output": "o",
                "mode": "m",
                "model": "m",
                "score": None,
                "parsed": 1,
            },
        )


def test_atomic_writer_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "x.jsonl"
    out.write_text("old\n")
    with pytest.raises(RuntimeError), AtomicWriter(out) as w:
        w.write_line("new")
        raise RuntimeError("boom")
    assert out.read_text() == "old\n"  # the previous complete file survives
    assert list(tmp_path.iterdir()) == [out]


def test_manifest(tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text("abc\n")
    m = Manifest("seed", {"num_examples": 3})
    m.add_input(data)
    m.counts["read"] = 10
    m.counts["written"] = 7
    m.reject("not_english", 2)
    m.reject("empty")
    out = tmp_path / "out.jsonl"
    out.write_text("")
    assert m.write(out) == tmp_path / "out.jsonl.manifest.json"
    got = read_manifest(out)
    assert got["inputs"] == {str(data): content_hash(data)}
    assert content_hash(data) == "edeaaff3f1774ad2888673770c6d64097e391bc362d7d6fb34982ddf0efd18cb"
    assert got["counts"] == {"read": 10, "written": 7}
    assert got["rejected"] == {"not_english": 2, "empty": 1}
    assert got["config"] == {"num_examples": 3}
    assert got["versions"]["torch"].startswith("2.")
    assert got["wall_time_s"] >= 0
    d = tmp_path / "model"
    d.mkdir()
    assert manifest_path(d) == d / "manifest.json"


def test_non_utf8_lines_are_quarantined_and_corrupt_gzip_is_an_error(tmp_path):
    latin = tmp_path / "latin.jsonl"
    good = b'{"id": "a", "instruction": "x", "output": "y"}\n'
    latin.write_bytes(good + b'{"id": "caf\xe9"}\n' + good.replace(b'"a"', b'"b"'))
    stats = ReadStats(str(latin))
    q = Quarantine(tmp_path / "q.jsonl")
    got = load_records(latin, Pair, quarantine=q, max_bad_fraction=1.0, stats=stats)
    q.close()
    assert [p.id for p in got] == ["a", "b"]
    (bad,) = [json.loads(x) for x in (tmp_path / "q.jsonl").read_text().splitlines()]
    assert bad["line"] == 2 and bad["error"].startswith("not UTF-8 at byte 11")
    assert bad["text"] == '{"id": "caf\ufffd"}'
    with pytest.raises(DataError, match=r"latin.jsonl:2: not UTF-8"):
        load_records(latin, Pair)
    gz = tmp_path / "broken.jsonl.gz"
    gz.write_bytes(gzip.compress(good * 1000)[:200])
    with pytest.raises(DataError, match="broken.jsonl.gz: cannot be read after line"):
        load_records(gz, Pair)
