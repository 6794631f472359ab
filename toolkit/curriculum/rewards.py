"""Bandit rewards: what drawing a source taught the model, scaled to [0, 1].

- learning_progress: how much the source's loss fell since it was last drawn (relative to its
  running mean), the signal of Graves et al. 2017 "Automated Curriculum Learning"
- neg_loss: the negative loss (favors what the model already finds easy: use with the repetition guard)
- score: a number a callback supplies (a teacher's or a judge's verdict)

Raw rewards drift in scale as training goes, so they are mapped to [0, 1] by the 20th and 80th
percentiles of the recent raw rewards (Graves et al.'s rescaling): one UCB `c` serves every reward.
When those percentiles meet (pass/fail scores once more than 80% of draws pass), the whole recent
range stands in for them, so a 0 and a 1 still reach the bandit as 0 and 1, not both as one constant.
"""

from __future__ import annotations

import bisect
from collections import deque


LOSS_EMA = 0.3  # weight of the newest loss in a source's running loss
NO_SPREAD = 1e-12  # a range narrower than this cannot tell rewards apart


class RewardScaler:
    def __init__(self, history: int = 1000):
        self.history = history
        self.recent: deque = deque()
        self.ordered: list[float] = []

    def __call__(self, raw: float) -> float:
        self._add(raw)
        low, high = self._quantile(0.2), self._quantile(0.8)
        if high - low < NO_SPREAD:
            # more than 60% of recent rewards are one value: a constant here would blind the bandit.
            # The full range keeps them apart at full size (0/1 stay 0/1), which a rank would not:
            # midranks shrink the gap and shift with the other arms' pass rates.
            low, high = self.ordered[0], self.ordered[-1]
        if high - low < NO_SPREAD:  # every recent reward equal: nothing to compare it with
            return raw if 0.0 <= raw <= 1.0 else 0.5
        return min(max((raw - low) / (high - low), 0.0), 1.0)

    def _add(self, raw: float) -> None:
        if len(self.recent) == self.history:
            oldest = self.recent.popleft()
            del self.ordered[bisect.bisect_left(self.ordered, oldest)]
        self.recent.append(raw)
        bisect.insort(self.ordered, raw)

    def _quantile(self, q: float) -> float:
        return self.ordered[min(int(q * len(self.ordered)), len(self.ordered) - 1)]

    def state_dict(self) -> dict:
        return {"recent": list(self.recent)}

    def load_state_dict(self, state: dict) -> None:
        self.recent, self.ordered = deque(), []
        for raw in state["recent"]:
            self._add(raw)


def raw_reward(kind: str, loss: float, running_loss: float | None, score: float | None) -> float | None:
    """The unscaled reward of one draw; None when there is nothing to judge yet."""
    if kind == "learning_progress":
        return None if running_loss is None else (running_loss - loss) / max(abs(running_loss), 1e-8)
    if kind == "neg_loss":
        return -loss
    return score
