"""Cost of the understanding module's detectors (a benchmark, not a test).

Per training step the monitor runs the two spike detectors; every audit it runs the text detectors
on 2 x len(probes) samples. Prints microseconds per call, and the per-step cost of an audit every
100 steps, against a baseline in the same run (appending to a list).

    .venv/bin/python benchmarks/monitor_detectors.py
"""

from __future__ import annotations

import random
import time

from toolkit.monitor.core import Monitor
from toolkit.recipe import MonitorConfig

SAMPLE = ("Sure, here is how to read the file: open it with open(), then call read() on it. "
          "If the file is large, read it line by line instead. ") * 3


def per_call(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    monitor = Monitor(MonitorConfig(), seed=0)
    rng = random.Random(0)
    baseline = per_call(lambda i: [].append(i), 100_000)
    step_us = per_call(lambda i: monitor.after_step(i, 3.0 + rng.random(), 1.0 + rng.random(), "chat"), 20_000)
    texts = [SAMPLE, "region " * 40, "- a\n- b\n- c\n- d", "All women are bad at math."]
    text_us = {d.__class__.__name__: per_call(lambda i, d=d: d.check([texts[i % 4]]), 2_000)
               for d in monitor.text_detectors}
    audit_us = sum(text_us.values()) * 2 * len(monitor.cfg.probes)  # detectors only; generation excluded
    print(f"baseline (list.append): {baseline:.3f} us")
    print(f"spike detectors per step: {step_us:.1f} us ({step_us / baseline:.0f}x baseline)")
    for name, us in text_us.items():
        print(f"{name} per sample: {us:.1f} us")
    print(f"text detectors per audit ({2 * len(monitor.cfg.probes)} samples): {audit_us / 1e3:.2f} ms; "
          f"per step at audit_every=100: {audit_us / 100:.1f} us")
    print(f"total detector cost per step: {step_us + audit_us / 100:.1f} us")



if __name__ == "__main__":
    main()
