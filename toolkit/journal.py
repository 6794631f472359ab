"""The run's append-only logs: `journal.jsonl` (events) and `metrics.jsonl` (numbers per step).

Every component writes events through one `Journal`: one JSON object a line with the schema
`{"step", "time", "kind", "severity", "data"}`, flushed per event so a killed run loses nothing.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

SEVERITIES = ("info", "warn", "high", "critical")


class JsonlWriter:
    """Append JSON objects to a file, one a line, flushed per record."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")
            f.flush()


class Journal(JsonlWriter):
    def event(self, step: int, kind: str, severity: str = "info", **data) -> dict:
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}")
        record = {"step": step, "time": time.time(), "kind": kind, "severity": severity, "data": data}
        self.write(record)
        return record


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)
