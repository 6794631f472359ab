"""What the behavior machinery costs a run: seconds the training thread spent in dream cycles, audits,
validation and end-of-run analysis, and their share of the wall time.

Each cost is a metrics.jsonl row where it happens (`{"step": 20, "dream_seconds": 0.71}`; validation adds
`eval_seconds` to its `val_loss` row); the run_end journal event carries `summary()`, and the run prints
`line()`. Work done in a background thread (dream.async, monitor.async) is counted apart: it does not block
training, only what the training thread waited for it does.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager

LABELS = {"dream": "dream", "audit": "audits", "eval": "validation", "head_diff": "head-diff",
          "eval_report": "eval report"}


class Overhead:
    def __init__(self, metrics=None):
        self.metrics = metrics  # a JsonlWriter; None: accumulate only
        self.started = time.perf_counter()
        self.blocking: Counter = Counter()  # part -> seconds the training thread spent on it
        self.background: Counter = Counter()  # part -> seconds of background work

    def add(self, part: str, seconds: float) -> None:
        self.blocking[part] += seconds

    def record(self, step: int, part: str, seconds: float, background: float | None = None) -> None:
        """Count `seconds` for `part` and write its metrics row (with the background work's own seconds, if any)."""
        self.add(part, seconds)
        row = {"step": step, f"{part}_seconds": round(seconds, 4)}
        if background is not None:
            self.background[part] += background
            row[f"{part}_background_seconds"] = round(background, 4)
        if self.metrics is not None:
            self.metrics.write(row)

    @contextmanager
    def timed(self, part: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(part, time.perf_counter() - start)

    def wall(self) -> float:
        return time.perf_counter() - self.started

    def summary(self) -> dict:
        """For the run_end event: per part, seconds and share of the wall time; background seconds apart."""
        wall = self.wall()
        parts = {part: {"seconds": round(s, 3), "share": round(s / wall, 4)} for part, s in self.blocking.items()}
        total = sum(self.blocking.values())
        return {"wall_seconds": round(wall, 3), "parts": parts,
                "total": {"seconds": round(total, 3), "share": round(total / wall, 4)},
                "background_seconds": {part: round(s, 3) for part, s in self.background.items()}}

    def line(self) -> str:
        """One line for the end of the run."""
        summary = self.summary()
        parts = [f"{LABELS.get(p, p)} {v['seconds']:.1f} s ({v['share']:.0%})" for p, v in summary["parts"].items()]
        text = (f"overhead: {', '.join(parts) or 'none'}; {summary['total']['seconds']:.1f} s "
                f"({summary['total']['share']:.0%}) of {summary['wall_seconds']:.1f} s wall")
        if summary["background_seconds"]:
            done = ", ".join(f"{LABELS.get(p, p)} {s:.1f} s" for p, s in summary["background_seconds"].items())
            text += f"; in the background: {done}"
        return text
