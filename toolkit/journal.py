"""The run's append-only logs: `journal.jsonl` (events) and `metrics.jsonl` (numbers per step).

Every component writes events through one `Journal`: one JSON object a line with the schema
`{"step", "time", "kind", "severity", "data"}`, flushed per event so a killed run loses nothing.
A resume rewinds every log to its size at the checkpoint (`rewind_logs`), so the steps a killed run
did past its last checkpoint are not counted twice.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from toolkit.util.jsonl import read_jsonl  # noqa: F401 (the logs' reader, imported here by tests)

SEVERITIES = ("info", "warn", "high", "critical")
RUN_LOGS = ("metrics.jsonl", "journal.jsonl", "dream/examples.jsonl", "dream/pairs.jsonl")  # under the run dir


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


# ---------------------------------------------------------------- rewinding the logs on resume


def log_sizes(run_dir: Path) -> dict[str, int]:
    """Bytes in each of the run's logs now (0 when absent): what a checkpoint records."""
    return {name: _size(Path(run_dir) / name) for name in RUN_LOGS}


def rewind_logs(run_dir: Path, sizes: dict[str, int], keep_after: Callable[[str, dict], bool]) -> None:
    """Cut each log back to its recorded size; of the rows past it, keep those `keep_after(name, row)`
    accepts (e.g. the journal's record of the checkpoint itself). A torn last line goes too."""
    for name, size in sizes.items():
        path = Path(run_dir) / name
        data = path.read_bytes() if path.is_file() else b""
        if len(data) > size:  # else nothing was written past the checkpoint
            write_atomic(path, data[:size] + _rows_kept(data[size:], functools.partial(keep_after, name)))


def drop_rows_after(run_dir: Path, step: int, names=("metrics.jsonl", "journal.jsonl")) -> None:
    """For a checkpoint that recorded no log sizes: drop the rows past its step (and a torn last line)."""
    for name in names:
        path = Path(run_dir) / name
        if path.is_file():
            write_atomic(path, _rows_kept(path.read_bytes(), lambda row: row.get("step", 0) <= step))


def _rows_kept(data: bytes, wanted: Callable[[dict], bool]) -> bytes:
    kept = []
    for line in data.splitlines():
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # the torn line a kill left (or a blank one)
        if isinstance(row, dict) and wanted(row):
            kept.append(line + b"\n")
    return b"".join(kept)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace a file whole: readers see the old content or the new, never a half-written one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


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
