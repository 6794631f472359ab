"""What the behavior machinery costs the demo's fine-tune: wall time with dream and monitor off, on, and on in
the background (dream.async, monitor.async), with and without the end-of-run analysis (head-diff, eval report).

    .venv/bin/python benchmarks/behavior_overhead.py [--rounds 3] [--steps 60] [--before DIR]

Needs runs/demo-pretrain/model (`.venv/bin/toolkit pretrain recipes/demo-pretrain.yaml`). Each run is
`toolkit finetune recipes/demo.yaml` for --steps steps with a dream cycle and an audit every 20 steps; the
configurations take turns for --rounds rounds (a busy machine then slows them alike) and the table shows
medians: wall time of the whole command, its ratio to "off", and the seconds the training thread spent per
part (from the run_end event's overhead summary), with the background seconds of the async runs.
--before DIR adds the synchronous configurations run from another checkout of the repository (e.g. the
previous commit: `git archive HEAD | tar -x -C DIR`, with DIR/runs/demo-pretrain linked to this one's).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ANALYSIS_OFF = ["analysis.head_diff=false", "eval.prompts=null"]
BEHAVIOR_ON = ["dream.every=20", "monitor.enabled=true", "monitor.audit_every=20"]
ASYNC = ["dream.async=true", "monitor.async=true"]
CONFIGS = {
    "off": ["dream.enabled=false", "monitor.enabled=false", *ANALYSIS_OFF],
    "dream+monitor": [*BEHAVIOR_ON, *ANALYSIS_OFF],
    "dream+monitor async": [*BEHAVIOR_ON, *ASYNC, *ANALYSIS_OFF],
    "demo (+head-diff, eval)": BEHAVIOR_ON,
    "demo async": [*BEHAVIOR_ON, *ASYNC],
}
PARTS = ("dream", "audit", "eval", "head_diff", "eval_report")


def run_once(overrides: list[str], steps: int, out_dir: Path, cwd: str | None = None) -> dict:
    sets = [f"train.max_steps={steps}", f"run.output_dir={out_dir}", "logging.progress=false", *overrides]
    command = [sys.executable, "-m", "toolkit", "finetune", "recipes/demo.yaml"]
    for item in sets:
        command += ["--set", item]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    journal = [json.loads(line) for line in (out_dir / "journal.jsonl").read_text().splitlines()]
    end = next(e for e in journal if e["kind"] == "run_end")["data"].get("overhead")
    if end is None:  # a checkout from before the overhead summary: wall time only
        return {"wall": wall, **{p: math.nan for p in PARTS}, "background": math.nan}
    return {"wall": wall, **{p: end["parts"].get(p, {}).get("seconds", 0.0) for p in PARTS},
            "background": sum(end["background_seconds"].values())}


def table(results: dict[str, list[dict]]) -> str:
    median = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in results.items()}
    off = median["off"]["wall"]
    head = ("| configuration | wall s | × off | dream s | audits s | validation s | head-diff s | eval report s "
            "| background s |")
    lines = [head, "|---|" + "---:|" * (head.count("|") - 2)]
    for name, m in median.items():
        parts = " | ".join("—" if math.isnan(m[k]) else f"{m[k]:.1f}" for k in (*PARTS, "background"))
        lines.append(f"| {name} | {m['wall']:.1f} | {m['wall'] / off:.2f} | {parts} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--only", nargs="*", choices=list(CONFIGS), help="a subset of the configurations")
    parser.add_argument("--before", help="another checkout whose synchronous runs join the table")
    args = parser.parse_args()
    if not Path("runs/demo-pretrain/model").is_dir():
        raise SystemExit("needs runs/demo-pretrain/model: .venv/bin/toolkit pretrain recipes/demo-pretrain.yaml")
    configs = {name: CONFIGS[name] for name in (args.only or CONFIGS)}
    configs = {"off": (CONFIGS["off"], None), **{name: (sets, None) for name, sets in configs.items()}}
    if args.before:
        configs.update({f"before: {name}": (CONFIGS[name], str(Path(args.before).resolve()))
                        for name in ("dream+monitor", "demo (+head-diff, eval)")})
    results: dict[str, list[dict]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for i, (name, (overrides, cwd)) in enumerate(configs.items()):
                results[name].append(run_once(overrides, args.steps, Path(tmp) / f"r{round_}-{i}", cwd))
                print(f"round {round_ + 1}: {name}: {results[name][-1]['wall']:.1f} s", file=sys.stderr)
    print(f"demo fine-tune, {args.steps} steps, dream cycle and audit every 20 steps; medians of {args.rounds} "
          f"interleaved rounds; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(table(results))


if __name__ == "__main__":
    main()
