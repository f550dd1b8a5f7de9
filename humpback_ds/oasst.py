"""OpenAssistant oasst1 exports -> messages: reading both published shapes and parsing each row.

An oasst1 export comes in either published shape, told apart by its content:
- the flat message table, one message per row, as .jsonl, .jsonl.gz or .parquet (the Hugging Face
  files). A root has a null or absent `parent_id`.
- the nested tree export (*.trees.jsonl(.gz)): one `{"message_tree_id", "tree_state", "prompt":
  {..., "replies": [...]}}` per line.
Both are streamed (Parquet batch by batch through pyarrow). A malformed row raises ValueError
naming the field; the caller reports it with its file:line (file:row for Parquet).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from humpback_ds.records import DataError, ReadStats, check_bad_fraction, open_text

FORMATS = "the oasst1 message table (.jsonl, .jsonl.gz, .parquet) or a *.trees.jsonl(.gz) export"
_REQUIRED_COLUMNS = ("message_id", "parent_id", "message_tree_id", "role", "text")
_COLUMNS = (*_REQUIRED_COLUMNS, "lang", "rank", "deleted", "review_result")


@dataclass(frozen=True)
class Message:
    """The fields of an oasst1 message the seed stage looks at."""

    id: str
    parent_id: str | None
    tree_id: str
    role: str
    text: str
    lang: str | None
    rank: int | None
    deleted: bool
    review_result: bool | None


def _field(obj: dict[str, Any], name: str, kind: type, required: bool = False) -> Any:
    value = obj.get(name)
    if value is None:
        if required:
            raise ValueError(f"field '{name}' is missing or null")
        return None
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)  # Parquet written through pandas stores nullable ints as floats
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ValueError(f"field '{name}' must be {kind.__name__}, got {value!r:.60}")
    return value


def parse_message(obj: Any, tree_id: str | None = None, parent_id: str | None = None) -> Message:
    """A message from a table row, or (given its tree and parent) from a node of a tree export."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if tree_id is None:
        tree_id = _field(obj, "message_tree_id", str, required=True)
        parent_id = _field(obj, "parent_id", str)
    role = _field(obj, "role", str, required=True)
    if role not in ("prompter", "assistant"):
        raise ValueError(f"field 'role' must be 'prompter' or 'assistant', got {role!r:.60}")
    return Message(
        id=_field(obj, "message_id", str, required=True),
        parent_id=parent_id,
        tree_id=tree_id,
        role=role,
        text=_field(obj, "text", str, required=True),
        lang=_field(obj, "lang", str),
        rank=_field(obj, "rank", int),
        deleted=bool(_field(obj, "deleted", bool)),
        review_result=_field(obj, "review_result", bool),
    )


def tree_messages(obj: Any) -> list[Message]:
    """Every message of one line of a tree export, root first; [] when the prompt is null."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    tree_id = _field(obj, "message_tree_id", str, required=True)
    out: list[Message] = []
    stack: list[tuple[Any, str | None]] = [(obj["prompt"], None)] if obj.get("prompt") else []
    while stack:
        node, parent = stack.pop()
        out.append(parse_message(node, tree_id, parent))
        replies = node.get("replies") or []
        if not isinstance(replies, list):
            raise ValueError(f"field 'replies' of message {out[-1].id} must be a list")
        stack.extend((r, out[-1].id) for r in reversed(replies))
    return out


def detect_shape(path: Path) -> str:
    """'parquet', 'trees' (nested export) or 'messages' (flat table), from the first object."""
    if path.suffix == ".parquet":
        return "parquet"
    try:
        with open_text(path) as fh:
            for line in fh:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    return "trees" if "prompt" in obj and "message_id" not in obj else "messages"
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(
            f"{path}: cannot read it as UTF-8 JSONL ({e}); --input takes {FORMATS}"
        ) from None
    return "messages"


def parquet_rows(
    path: Path, stats: ReadStats, max_bad_fraction: float
) -> Iterator[tuple[int, Any]]:
    """(row number, row dict) of the oasst1 message table in Parquet, batch by batch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(
            f"{path}: not a readable Parquet file ({e}); --input takes {FORMATS}"
        ) from None
    names = set(pf.schema_arrow.names)
    missing = [c for c in _REQUIRED_COLUMNS if c not in names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; --input takes {FORMATS}")
    row = 0
    for batch in pf.iter_batches(batch_size=8192, columns=[c for c in _COLUMNS if c in names]):
        for obj in batch.to_pylist():
            row += 1
            stats.read += 1
            yield row, obj
    check_bad_fraction(stats, max_bad_fraction)
