"""Progress display: a rich bar on a terminal, a plain line every tenth of the run elsewhere (CI logs)."""

from __future__ import annotations

import sys

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    def __init__(self, total: int, start: int, enabled: bool = True):
        self.total = total
        self.enabled = enabled
        self.every = max(1, total // 10)
        self.bar = None
        if enabled and sys.stdout.isatty():
            self.bar = RichProgress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  {task.fields[tps]:,.0f} tok/s  lr {task.fields[lr]:.2e}"),
                TimeRemainingColumn(),
            )
            self.task = self.bar.add_task("train", total=total, completed=start, loss=float("nan"), tps=0.0, lr=0.0)
            self.bar.start()

    def update(self, step: int, loss: float, tokens_per_s: float, lr: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=loss, tps=tokens_per_s, lr=lr)
        elif step % self.every == 0 or step == self.total:
            print(f"step {step}/{self.total}  loss {loss:.4f}  {tokens_per_s:,.0f} tok/s  lr {lr:.2e}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
