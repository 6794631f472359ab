"""JSON lines, read three ways: `strict` (every line a JSON object, else an error naming file:line),
`live` (a log another process may be appending to: a torn last line is left out) and `tolerant`
(anything that does not parse is skipped, for pages that must never fail on a log)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from toolkit.errors import ToolkitError

Mode = Literal["strict", "live", "tolerant"]


def parse_record(raw: bytes | str) -> tuple[dict | None, str | None]:
    """(record, None) for one JSONL line that holds a JSON object, else (None, why it does not)."""
    try:
        record = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text (byte {exc.start + 1})"
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg} (column {exc.colno})"
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}"
    return record, None


def jsonl_rows(path: Path, data: bytes | None = None) -> Iterator[tuple[str, dict | None, str | None]]:
    """(where, record, problem) for each non-blank line of a JSONL file (or of its bytes `data`):
    `problem` says why a line is not a JSON object (bad JSON, not UTF-8, another JSON type)."""
    lines = data.splitlines() if data is not None else Path(path).read_bytes().splitlines()
    for lineno, raw in enumerate(lines, start=1):  # bytes: a line that is not UTF-8 is a bad line like any other
        if raw.strip():  # blank lines (a trailing newline, spacing) are not records
            yield f"{path}:{lineno}", *parse_record(raw)


def read_jsonl(path: Path, mode: Mode = "live") -> list[dict]:
    """The JSON objects of a JSONL file; a missing file has none. See the module docstring for `mode`."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    complete = data.endswith(b"\n")  # a writer still going (or cut short by a kill) has not ended its last line
    rows = []
    items = list(jsonl_rows(path, data))
    for i, (where, record, problem) in enumerate(items):
        if problem is None:
            rows.append(record)
        elif mode == "strict" or (mode == "live" and (complete or i < len(items) - 1)):
            raise ToolkitError(f"not a JSON line ({problem})", where=where)
    return rows
