"""Caps and floors: the most and the least share of draws each source may take.

Shares are counted over the current segment (the draws since the eligible set last changed, so a
source that opens at step 20K is not owed 20K steps of floor at once) and over the segment's last
`window` draws. A source short of its floor by a whole draw is drawn now; a source that one more
draw would put more than one draw over its cap is set aside.
"""

from __future__ import annotations

from collections import Counter, deque


class ShareLimiter:
    def __init__(self, caps: dict[str, float], floors: dict[str, float], window: int):
        self.caps, self.floors, self.window = dict(caps), dict(floors), window
        self.new_segment()

    def new_segment(self) -> None:
        self.segment: Counter = Counter()
        self.total = 0  # draws in the segment
        self.recent: deque = deque(maxlen=self.window)
        self.recent_counts: Counter = Counter()

    def record(self, name: str) -> None:
        if len(self.recent) == self.window:
            self.recent_counts[self.recent[0]] -= 1
        self.recent.append(name)
        self.recent_counts[name] += 1
        self.segment[name] += 1
        self.total += 1

    def owed(self, eligible: list[str]) -> str | None:
        """The eligible source furthest below its floor, if one is short by a whole draw."""
        deficits = {n: max(self._deficit(n, counts, total) for counts, total in self._views())
                    for n in eligible if self.floors.get(n)}
        owed = max(deficits, key=deficits.get, default=None)  # ties: recipe order
        return owed if owed is not None and deficits[owed] >= 1 - 1e-9 else None

    def under_cap(self, eligible: list[str]) -> list[str]:
        """The eligible sources one more draw leaves within a draw of their cap (never none)."""
        allowed = [n for n in eligible if all(self._fits(n, counts, total) for counts, total in self._views())]
        if allowed:
            return allowed
        # every source at its cap (possible for a moment even when the caps add up): least over goes
        return [min(eligible, key=lambda n: (self.segment[n] + 1) / (self.caps.get(n, 1.0) or 1e-9))]

    def shares(self) -> dict[str, float]:
        return {n: c / self.total for n, c in self.segment.items()} if self.total else {}

    def _views(self):
        yield self.segment, self.total
        if len(self.recent) == self.window:
            yield self.recent_counts, self.window

    def _fits(self, name: str, counts: Counter, total: int) -> bool:
        cap = self.caps.get(name)
        return cap is None or counts[name] + 1 <= cap * (total + 1) + 1

    def _deficit(self, name: str, counts: Counter, total: int) -> float:
        return self.floors[name] * (total + 1) - counts[name]

    def state_dict(self) -> dict:
        return {"segment": dict(self.segment), "recent": list(self.recent)}

    def load_state_dict(self, state: dict) -> None:
        self.new_segment()
        for name in state["recent"]:
            self.record(name)
        self.segment = Counter(state["segment"])
        self.total = sum(self.segment.values())
