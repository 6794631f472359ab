"""Which source a step draws from.

Draws come from the sampler's own `random.Random`, seeded by the run seed alone, so every process
under accelerate makes the same decision at every step and a checkpoint restores it exactly.
"""

from __future__ import annotations

import random


class SourceSampler:
    def __init__(self, sources: list, rule: str, seed: int):
        self.sources = sources
        self.rule = rule
        self.rng = random.Random(seed)
        self.draws = {s.name: 0 for s in sources}

    def pick(self, step: int):
        weights = [1.0 if self.rule == "uniform" else s.weight for s in self.sources]
        source = self.rng.choices(self.sources, weights=weights, k=1)[0]
        self.draws[source.name] += 1
        return source

    def observe(self, source, loss: float) -> None:
        """Reward hook; the curriculum issue's bandits learn from it."""

    def state_dict(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss], "draws": dict(self.draws)}

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.draws = dict(state["draws"])
