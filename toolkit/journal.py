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


def filter_events(events: list[dict], kinds: list[str] | None = None, severity: str | None = None) -> list[dict]:
    """Events of the given kinds at or above a severity (kinds None or empty: every kind)."""
    floor = SEVERITIES.index(severity) if severity else 0
    return [e for e in events if (not kinds or e["kind"] in kinds) and SEVERITIES.index(e["severity"]) >= floor]


def render_event(event: dict, width: int = 160) -> str:
    """One line: step, time, severity, kind, then the data as key=value, cut to `width`."""
    when = time.strftime("%H:%M:%S", time.localtime(event["time"]))
    data = " ".join(f"{k}={_short(v)}" for k, v in event["data"].items())
    line = f"{event['step']:>7}  {when}  {event['severity']:<8} {event['kind']:<16} {data}"
    return line if len(line) <= width else line[: width - 1] + "…"


def _short(value) -> str:
    text = json.dumps(value, default=_jsonable) if not isinstance(value, str) else value
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."
