"""The dream loop's scenario temperature (seed 003): adaptive to the recent failure rate, by schedule, or fixed."""

from __future__ import annotations

from collections import deque

from toolkit.config.dream import TemperatureConfig

# Before any outcome the adaptive mode assumes everything fails (rate 1.0, T = base + gain = 1.2 by default):
# early training does fail a lot, the seed's own schedule starts at its highest temperature (1.2), and
# exploring broadly first is the cheap mistake; the first evaluated cycle replaces the guess.
PRIOR_FAILURE_RATE = 1.0


class TemperaturePolicy:
    """Which temperature the next cycle's scenarios are sampled at; `record` feeds it the cycle's outcomes."""

    def __init__(self, cfg: TemperatureConfig):
        self.cfg = cfg
        self._passed: deque[bool] = deque(maxlen=cfg.window)

    def temperature(self, progress: float, phase_temperature: float | str | None = None) -> float:
        """progress is training progress in [0, 1]. A curriculum phase may override: a number wins outright,
        "adaptive" forces the adaptive mode, None keeps the configured mode."""
        if isinstance(phase_temperature, (int, float)) and not isinstance(phase_temperature, bool):
            return float(phase_temperature)
        if phase_temperature not in (None, "adaptive"):
            raise ValueError(f"phase temperature must be a number, 'adaptive' or None, not {phase_temperature!r}")
        mode = "adaptive" if phase_temperature == "adaptive" else self.cfg.mode
        if mode == "fixed":
            return self.cfg.value
        if mode == "schedule":
            return self._scheduled(progress)
        rate = self.failure_rate()
        return self.cfg.base + self.cfg.gain * (PRIOR_FAILURE_RATE if rate is None else rate)

    def _scheduled(self, progress: float) -> float:
        # The first [until_progress, T] pair not yet reached; at (or past) the end, the last temperature.
        return next((t for until, t in self.cfg.schedule if progress < until), self.cfg.schedule[-1][1])

    def record(self, passed: list[bool]) -> None:
        """The pass/fail outcomes of the responses evaluated in one cycle, in order."""
        self._passed.extend(bool(p) for p in passed)

    def failure_rate(self) -> float | None:
        """Failures over the last `window` outcomes; None before any. The seed divides by 20 even when fewer
        are known, which would read a young run as passing; the share of those known does not."""
        if not self._passed:
            return None
        return sum(not p for p in self._passed) / len(self._passed)

    def state_dict(self) -> dict:
        return {"passed": list(self._passed)}

    def load_state_dict(self, state: dict) -> None:
        # maxlen keeps only the newest `window` outcomes if the window shrank between runs.
        self._passed = deque((bool(p) for p in state.get("passed", [])), maxlen=self.cfg.window)
