"""Seed stage: first-turn extraction from oasst1 exports in every shape, sampling, quarantine."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from humpback_ds import cli, oasst
from humpback_ds.config import ConfigError, SeedConfig
from humpback_ds.manifest import read_manifest
from humpback_ds.records import DataError, Pair, load_records
from humpback_ds.stages import seed

OASST = Path(__file__).resolve().parent.parent / "humpback_ds" / "sample_data" / "oasst"


# ---------------------------------------------------------------------------------------------
# A hand-made tricky export: one tree per edge case, as nested nodes.
# ---------------------------------------------------------------------------------------------


def msg(
    mid: str,
    role: str,
    text: str,
    rank: int | None = None,
    *,
    deleted: bool = False,
    review: bool | None = True,
    replies: tuple = (),
    lang: str = "en",
) -> dict[str, Any]:
    return {
        "message_id": mid,
        "role": role,
        "text": text,
        "rank": rank,
        "deleted": deleted,
        "review_result": review,
        "lang": lang,
        "replies": list(replies),
    }


def ans(mid: str, text: str, rank: int | None = None, **kw: Any) -> dict[str, Any]:
    return msg(mid, "assistant", text, rank, **kw)


def ask(mid: str, text: str, *replies: dict, **kw: Any) -> dict[str, Any]:
    return msg(mid, "prompter", text, None, replies=replies, **kw)


TRICKY = [
    ask(
        "t01",
        "Best listed last?",
        ans("t01-a", "third", 2),
        ans("t01-b", "second", 1),
        ans("t01-c", "BEST 01", 0),
    ),
    ask(
        "t02",
        "Deleted best?",
        ans("t02-a", "deleted best", 0, deleted=True),
        ans("t02-b", "BEST 02", 1),
        ans("t02-c", "worse", 2),
    ),
    ask(
        "t03",
        "Review failed best?",
        ans("t03-a", "bad review", 0, review=False),
        ans("t03-b", "BEST 03", 1),
    ),
    ask("t04", "Empty best?", ans("t04-a", " \n\t", 0), ans("t04-b", "BEST 04", 1)),
    ask("t05", "Single unranked?", ans("t05-a", "BEST 05", None, review=None)),
    ask("t06", "Two unranked?", ans("t06-a", "one", None), ans("t06-b", "two", None)),
    ask(
        "t07", "Ranked beats unranked?", ans("t07-a", "unranked", None), ans("t07-b", "BEST 07", 1)
    ),
    ask("t08", "Wie geht es?", ans("t08-a", "Gut.", 0, lang="de"), lang="de"),
    ask(
        "t09",
        "Multi-turn?",
        ans(
            "t09-a",
            "BEST 09",
            0,
            replies=(
                ask("t09-b", "Follow-up question", ans("t09-c", "LATER TURN, never used", 0)),
            ),
        ),
        ans("t09-d", "worse first turn", 1),
    ),
    ask("t10", "Nobody answered?"),
    ask("t11", "Deleted prompt?", ans("t11-a", "reply", 0), deleted=True),
    ask("t12", "   ", ans("t12-a", "reply to an empty prompt", 0)),
    ask(
        "t13",
        "All replies bad, mixed reasons?",
        ans("t13-a", "gone", 0, deleted=True),
        ans("t13-b", "", 1),
    ),
    ask("t14", "Only reply deleted?", ans("t14-a", "gone", 0, deleted=True)),
    ask("t15", "Rank tie?", ans("t15-z", "tie, larger id", 0), ans("t15-m", "BEST 15", 0)),
    ask("t16", "Prompt failed review?", ans("t16-a", "reply", 0), review=False),
]

EXPECTED_PAIRS = [
    ("t01", "Best listed last?", "BEST 01", "t01-c", 0),
    ("t02", "Deleted best?", "BEST 02", "t02-b", 1),
    ("t03", "Review failed best?", "BEST 03", "t03-b", 1),
    ("t04", "Empty best?", "BEST 04", "t04-b", 1),
    ("t05", "Single unranked?", "BEST 05", "t05-a", None),
    ("t07", "Ranked beats unranked?", "BEST 07", "t07-b", 1),
    ("t09", "Multi-turn?", "BEST 09", "t09-a", 0),
    ("t15", "Rank tie?", "BEST 15", "t15-m", 0),
]
EXPECTED_REJECTED = {
    "unranked_ambiguous": 1,
    "not_english": 1,
    "no_reply": 1,
    "prompt_deleted": 1,
    "prompt_empty": 1,
    "no_eligible_reply": 1,
    "deleted": 1,
    "prompt_review_failed": 1,
}
# t02-a, t13-a, t14-a deleted; t04-a, t13-b empty; t03-a failed review
EXPECTED_SKIPPED = {"deleted": 3, "empty": 2, "review_failed": 1}


def flat_rows(trees: list[dict]) -> list[dict[str, Any]]:
    """The flat message table of nested trees (parents before children)."""
    rows: list[dict[str, Any]] = []

    def walk(node: dict, parent: str | None, tree_id: str) -> None:
        row = {k: v for k, v in node.items() if k != "replies"}
        rows.append({**row, "parent_id": parent, "message_tree_id": tree_id})
        for child in node["replies"]:
            walk(child, node["message_id"], tree_id)

    for tree in trees:
        walk(tree, None, tree["message_id"])
    return rows


def tree_lines(trees: list[dict]) -> list[dict[str, Any]]:
    return [
        {"message_tree_id": t["message_id"], "tree_state": "ready_for_export", "prompt": t}
        for t in trees
    ]


def write_jsonl(path: Path, objs: list[Any]) -> Path:
    text = "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def run_seed(src: Path, out: Path, **kw: Any) -> list[Pair]:
    seed.run(SeedConfig(input=str(src), output=str(out), **kw))
    return seed_load(out)


def seed_load(out: Path) -> list[Pair]:
    return load_records(out, Pair)


def as_tuples(pairs: list[Pair]) -> list[tuple]:
    return [
        (p.id, p.instruction, p.output, p.meta["reply_id"], p.meta["reply_rank"]) for p in pairs
    ]


# ---------------------------------------------------------------------------------------------


def test_tricky_export_picks_exactly_the_first_turn_best_replies(tmp_path):
    src = write_jsonl(tmp_path / "messages.jsonl", flat_rows(TRICKY))
    pairs = run_seed(src, tmp_path / "seed.jsonl")
    assert as_tuples(pairs) == EXPECTED_PAIRS
    assert all(p.source == "seed" and p.meta["prompt_id"] == p.id for p in pairs)
    assert all(p.meta["lang"] == "en" for p in pairs)
    m = read_manifest(tmp_path / "seed.jsonl")
    assert m["rejected"] == EXPECTED_REJECTED
    assert m["reply_skipped"] == EXPECTED_SKIPPED
    assert m["counts"] == {
        "lines_read": 44,
        "bad_lines": 0,
        "messages": 44,
        "trees_read": 16,
        "kept": 8,
        "written": 8,
        "later_turn_ignored": 2,
        "orphan_replies": 0,
    }
    # every tree is either kept or rejected for exactly one reason
    assert sum(m["rejected"].values()) == m["counts"]["trees_read"] - m["counts"]["kept"]
    assert m["format"] == "messages"
    assert m["output_chars"] == {"min": 7, "median": 7.0, "max": 7}
    assert not (tmp_path / "seed.jsonl.quarantine.jsonl").exists()


def test_keep_unranked_off_and_other_language(tmp_path):
    src = write_jsonl(tmp_path / "messages.jsonl", flat_rows(TRICKY))
    pairs = run_seed(src, tmp_path / "strict.jsonl", keep_unranked=False)
    assert [p.id for p in pairs] == ["t01", "t02", "t03", "t04", "t07", "t09", "t15"]
    assert read_manifest(tmp_path / "strict.jsonl")["rejected"]["unranked"] == 1
    german = run_seed(src, tmp_path / "de.jsonl", lang="de")
    assert as_tuples(german) == [("t08", "Wie geht es?", "Gut.", "t08-a", 0)]
    assert read_manifest(tmp_path / "de.jsonl")["rejected"] == {"not_english": 15}


def test_all_shapes_and_row_orders_give_identical_pairs(tmp_path):
    rows = flat_rows(TRICKY)
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)  # replies before their roots, later turns first, ...
    pq.write_table(pa.Table.from_pylist(shuffled), tmp_path / "messages.parquet")
    inputs = [
        write_jsonl(tmp_path / "messages.jsonl", rows),
        write_jsonl(tmp_path / "shuffled.jsonl", shuffled),
        write_jsonl(tmp_path / "messages.jsonl.gz", shuffled),
        tmp_path / "messages.parquet",
        write_jsonl(tmp_path / "x.trees.jsonl", tree_lines(TRICKY)),
        write_jsonl(tmp_path / "x.trees.jsonl.gz", tree_lines(TRICKY[::-1])),
    ]
    formats = []
    for i, src in enumerate(inputs):
        out = tmp_path / f"out{i}.jsonl"
        assert as_tuples(run_seed(src, out)) == EXPECTED_PAIRS, src.name
        m = read_manifest(out)
        assert (m["rejected"], m["reply_skipped"]) == (EXPECTED_REJECTED, EXPECTED_SKIPPED)
        assert (m["counts"]["trees_read"], m["counts"]["later_turn_ignored"]) == (16, 2)
        formats.append(m["format"])
    assert formats == ["messages"] * 3 + ["parquet"] + ["trees"] * 2
    outputs = {(tmp_path / f"out{i}.jsonl").read_bytes() for i in range(len(inputs))}
    assert len(outputs) == 1  # byte-identical


def test_parquet_written_through_pandas_float_ranks(tmp_path):
    rows = flat_rows(TRICKY)
    table = pa.Table.from_pylist(
        [{**r, "rank": None if r["rank"] is None else float(r["rank"])} for r in rows]
    )
    assert table.schema.field("rank").type == pa.float64()
    pq.write_table(table, tmp_path / "m.parquet")
    assert as_tuples(run_seed(tmp_path / "m.parquet", tmp_path / "out.jsonl")) == EXPECTED_PAIRS


def test_parquet_bad_rows_are_quarantined_by_row_number(tmp_path):
    rows = flat_rows(TRICKY)
    rows.insert(9, {**rows[1], "message_id": "x9", "text": None})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    pairs = run_seed(tmp_path / "m.parquet", tmp_path / "out.jsonl", max_bad_fraction=0.05)
    assert as_tuples(pairs) == EXPECTED_PAIRS
    lines = (tmp_path / "out.jsonl.quarantine.jsonl").read_text(encoding="utf-8").splitlines()
    (q,) = [json.loads(x) for x in lines]
    assert (q["file"], q["line"]) == (str(tmp_path / "m.parquet"), 10)
    assert q["error"] == "field 'text' is missing or null"
    assert json.loads(q["text"])["message_id"] == "x9"
    with pytest.raises(DataError, match=r"m\.parquet: 1 of 45 lines are malformed"):
        run_seed(tmp_path / "m.parquet", tmp_path / "out.jsonl")


def test_unreadable_inputs_are_data_errors(tmp_path):
    (tmp_path / "bin.jsonl.gz").write_bytes(b"not gzip at all")
    (tmp_path / "latin1.jsonl").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "x.parquet").write_bytes(b"PAR1 but not really")
    for name, err in [
        ("bin.jsonl.gz", "cannot read it as UTF-8 JSONL"),
        ("latin1.jsonl", "cannot read it as UTF-8 JSONL"),
        ("x.parquet", "not a readable Parquet file"),
    ]:
        with pytest.raises(DataError, match=err):
            run_seed(tmp_path / name, tmp_path / "out.jsonl")


def test_sampling_is_deterministic_and_order_independent(tmp_path):
    src = OASST / "messages.jsonl"
    a = [p.id for p in run_seed(src, tmp_path / "a.jsonl", num_examples=10, seed=0)]
    b = [p.id for p in run_seed(src, tmp_path / "b.jsonl", num_examples=10, seed=0)]
    lines = src.read_text(encoding="utf-8").splitlines()
    random.Random(5).shuffle(lines)
    (tmp_path / "shuffled.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    c = [
        p.id
        for p in run_seed(
            tmp_path / "shuffled.jsonl", tmp_path / "c.jsonl", num_examples=10, seed=0
        )
    ]
    d = [p.id for p in run_seed(src, tmp_path / "d.jsonl", num_examples=10, seed=1)]
    assert len(a) == 10 and a == sorted(a)
    assert a == b == c
    assert d != a and len(d) == 10
    everything = run_seed(src, tmp_path / "all.jsonl", num_examples=1000)
    assert len(everything) == 30
    assert set(a) < {p.id for p in everything}
    assert read_manifest(tmp_path / "a.jsonl")["counts"]["kept"] == 30


def test_malformed_lines_are_quarantined_with_file_and_line(tmp_path):
    rows = [json.dumps(r) for r in flat_rows(TRICKY)]
    bad = {
        3: "{not json",
        7: json.dumps({"message_id": "x1", "role": "prompter", "message_tree_id": "x1"}),
        12: json.dumps({**flat_rows(TRICKY)[0], "message_id": "x2", "rank": "first"}),
        20: json.dumps({**flat_rows(TRICKY)[0], "text": "duplicate of the t01 root"}),
    }
    for lineno in sorted(bad):
        rows.insert(lineno - 1, bad[lineno])
    src = tmp_path / "messages.jsonl"
    src.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "seed.jsonl"
    pairs = run_seed(src, out, max_bad_fraction=0.2)
    assert as_tuples(pairs) == EXPECTED_PAIRS  # valid lines still come through
    quarantined = [
        json.loads(x) for x in (tmp_path / "seed.jsonl.quarantine.jsonl").read_text().splitlines()
    ]
    assert [(q["file"], q["line"]) for q in quarantined] == [(str(src), n) for n in sorted(bad)]
    errors = [q["error"] for q in quarantined]
    assert errors[0].startswith("invalid JSON")
    assert errors[1:] == [
        "field 'text' is missing or null",
        "field 'rank' must be int, got 'first'",
        "duplicate message_id 't01'",
    ]
    assert quarantined[0]["text"] == "{not json"
    m = read_manifest(out)
    assert (m["counts"]["lines_read"], m["counts"]["bad_lines"]) == (48, 4)


def test_malformed_tree_line_is_quarantined_whole(tmp_path):
    lines = tree_lines(TRICKY[:3])
    broken = json.loads(json.dumps(lines[1]))
    broken["prompt"]["replies"][1]["role"] = "moderator"
    src = write_jsonl(tmp_path / "x.trees.jsonl", [lines[0], broken, lines[2]])
    pairs = run_seed(src, tmp_path / "out.jsonl", max_bad_fraction=0.5)
    assert [p.id for p in pairs] == ["t01", "t03"]
    (q,) = [
        json.loads(x) for x in (tmp_path / "out.jsonl.quarantine.jsonl").read_text().splitlines()
    ]
    assert (q["line"], q["error"]) == (
        2,
        "field 'role' must be 'prompter' or 'assistant', got 'moderator'",
    )


def test_too_many_bad_lines_and_missing_input_are_data_errors(tmp_path):
    rows = [json.dumps(r) for r in flat_rows(TRICKY)] + ["{oops"] * 2
    src = tmp_path / "messages.jsonl"
    src.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "seed.jsonl"
    with pytest.raises(DataError, match=rf"{src}: 2 of 46 lines are malformed"):
        seed.run(SeedConfig(input=str(src), output=str(out)))  # default max_bad_fraction 0.01
    assert not out.exists()
    wrong = [{"id": str(i), "instruction": "q", "output": "a"} for i in range(150)]
    with pytest.raises(DataError, match=r"pairs\.jsonl: 100 of 100 lines are malformed"):
        run_seed(write_jsonl(tmp_path / "pairs.jsonl", wrong), out, max_bad_fraction=0.5)
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        seed.run(SeedConfig(input=str(tmp_path / "nope.jsonl"), output=str(out)))
    with pytest.raises(DataError, match=r"missing column\(s\) \['role', 'text'\]"):
        pq.write_table(
            pa.table({"message_id": ["a"], "parent_id": [None], "message_tree_id": ["a"]}),
            tmp_path / "bad.parquet",
        )
        seed.run(SeedConfig(input=str(tmp_path / "bad.parquet"), output=str(out)))
    with pytest.raises(DataError, match="no first-turn pair survived"):
        seed.run(SeedConfig(input=str(OASST / "messages.jsonl"), output=str(out), lang="xx"))
    with pytest.raises(ConfigError, match="num_examples must be >= 1"):
        seed.run(SeedConfig(input=str(src), output=str(out), num_examples=0))


def test_field_types():
    row = flat_rows(TRICKY)[1]
    assert oasst.parse_message({**row, "rank": 2.0}).rank == 2
    for bad, err in [
        ({"rank": 1.5}, "'rank' must be int"),
        ({"rank": True}, "'rank' must be int"),
        ({"deleted": "no"}, "'deleted' must be bool"),
        ({"text": None}, "'text' is"),
        ({"parent_id": 7}, "'parent_id' must be str"),
    ]:
        with pytest.raises(ValueError, match=err):
            oasst.parse_message({**row, **bad})


def test_cli_writes_pairs_and_manifest(tmp_path, capsys):
    out = tmp_path / "seed.jsonl"
    rc = cli.main(
        [
            "seed",
            "--input",
            str(OASST / "trees.jsonl"),
            "--output",
            str(out),
            "--num_examples",
            "5",
            "--seed",
            "3",
        ]
    )
    assert rc == 0
    pairs = load_records(out, Pair)
    assert len(pairs) == 5
    m = read_manifest(out)
    assert m["stage"] == "seed" and m["config"]["num_examples"] == 5
    assert m["counts"]["written"] == 5 and m["counts"]["kept"] == 30
    assert m["rejected"] == SHIPPED_REJECTED
    assert str(OASST / "trees.jsonl") in m["inputs"]
    assert "trees_read" in capsys.readouterr().err  # the summary table
    assert cli.main(["seed", "--input", str(tmp_path / "missing.jsonl"), "--output", str(out)]) == 1
    assert "missing.jsonl: no such file" in capsys.readouterr().err


SHIPPED_REJECTED = {
    "not_english": 5,
    "prompt_deleted": 1,
    "no_reply": 1,
    "empty": 1,
    "review_failed": 1,
    "unranked_ambiguous": 1,
}


def test_shipped_sample_data(tmp_path):
    flat = run_seed(OASST / "messages.jsonl", tmp_path / "flat.jsonl")
    nested = run_seed(OASST / "trees.jsonl", tmp_path / "nested.jsonl")
    assert len(flat) == 30
    assert flat == nested
    for name in ("flat", "nested"):
        m = read_manifest(tmp_path / f"{name}.jsonl")
        assert m["rejected"] == SHIPPED_REJECTED
        assert m["reply_skipped"] == {"deleted": 2, "empty": 2, "review_failed": 2}
        assert (m["counts"]["trees_read"], m["counts"]["messages"]) == (40, 111)
        assert m["counts"]["later_turn_ignored"] == 14
    by_prompt = {p.instruction: p for p in flat}
    sourdough = by_prompt["My sourdough starter smells like nail polish remover. Is it ruined?"]
    assert sourdough.output.startswith("It is almost certainly not ruined.")  # rank 0, listed 2nd
    snake = by_prompt["How often should I water a snake plant?"]
    assert snake.meta["reply_rank"] == 1  # the rank-0 reply is deleted
    compost = by_prompt["What is a good way to compost in a small apartment?"]
    assert compost.meta["reply_rank"] is None  # the single unranked reply
    assert all(len(p.output) >= 70 and p.output.strip() == p.output for p in flat)


def test_shipped_files_hold_the_same_messages():
    flat = [
        oasst.parse_message(json.loads(line))
        for line in (OASST / "messages.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    nested = [
        m
        for line in (OASST / "trees.jsonl").read_text(encoding="utf-8").splitlines()
        for m in oasst.tree_messages(json.loads(line))
    ]
    assert len(flat) == 111
    assert sorted(flat, key=lambda m: m.id) == sorted(nested, key=lambda m: m.id)
    assert {m.lang for m in flat} == {"en", "de", "es", "fr", "pt-BR", "it"}
