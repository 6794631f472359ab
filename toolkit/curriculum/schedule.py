"""Learning-rate schedules as a multiplier of the base rate: constant, linear or cosine, with warmup."""

from __future__ import annotations

import math


def lr_multiplier(step: int, schedule: str, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        decay = 1.0 - progress
    elif schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown schedule {schedule}")
    return min_ratio + (1.0 - min_ratio) * decay
