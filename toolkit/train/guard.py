"""Regime-aware divergence guard (INV-TRAIN-005).

The first validation loss may not exceed 10.0 when fine-tuning, or 2 × ln(vocab_size) when training
from scratch (a cold start sits at ln(V), ≈10.8 for V=50257, which a flat 10.0 cap would reject).
After that, a validation loss more than double the previous one, or any NaN/Inf loss, stops the run.
"""

from __future__ import annotations

import math

FINETUNE_FIRST_VAL_CAP = 10.0
EXIT_DIVERGED = 3


def first_val_loss_cap(regime: str, vocab_size: int) -> float:
    if regime == "finetune":
        return FINETUNE_FIRST_VAL_CAP
    if regime == "from_scratch":
        return 2.0 * math.log(vocab_size)
    raise ValueError(f"unknown regime {regime}")


class DivergenceGuard:
    """`check_*` return None when training may go on, else the one-line reason to stop."""

    def __init__(self, regime: str, vocab_size: int):
        self.regime = regime
        self.vocab_size = vocab_size
        self.val_history: list[float] = []

    def check_train_loss(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return f"INV-TRAIN-005: training loss is {loss}"
        return None

    def check_val_loss(self, loss: float) -> str | None:
        """A loss enters the history only when it passes, so a resumed run is judged against a good one."""
        reason = self._verdict(loss)
        if reason is None:
            self.val_history.append(loss)
        return reason

    def _verdict(self, loss: float) -> str | None:
        previous = self.val_history[-1] if self.val_history else None
        if not math.isfinite(loss):
            return f"INV-TRAIN-005: validation loss is {loss}"
        if previous is None:
            cap = first_val_loss_cap(self.regime, self.vocab_size)
            if loss > cap:
                rule = "10.0" if self.regime == "finetune" else f"2 x ln({self.vocab_size}) = {cap:.2f}"
                return f"INV-TRAIN-005: first validation loss {loss:.4f} exceeds the {self.regime} cap {rule}"
            return None
        if loss > 2.0 * previous:
            return f"INV-TRAIN-005: validation loss {loss:.4f} is more than double the previous {previous:.4f}"
        return None

    def state_dict(self) -> dict:
        return {"val_history": list(self.val_history)}

    def load_state_dict(self, state: dict) -> None:
        self.val_history = list(state["val_history"])
