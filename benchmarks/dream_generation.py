"""Dream-scenario generation: batched (left-padded, KV cache) against one prompt at a time, on tiny-hybrid.

    .venv/bin/python benchmarks/dream_generation.py [MODEL_DIR]

MODEL_DIR defaults to the demo's trained tiny hybrid (runs/demo-pretrain/model) when it exists; otherwise
a fresh tiny-hybrid is built in a temporary directory. Prints scenarios per second for each mode on the
same 32 scenario prompts and the speed-up against one at a time. Runs on one CPU thread unless
OMP_NUM_THREADS is set.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from toolkit.text.generate import chat_prompt, generate
from toolkit.model import build_tiny_hybrid, load_model, load_tokenizer
from toolkit.recipe import DreamConfig, ModelConfig, TinyHybridConfig

DEMO_MODEL = Path("runs/demo-pretrain/model")
NEW_TOKENS = 48


def situations(limit: int = 32) -> list[str]:
    """User turns from the directive data, standing in for the dream seeds' situations."""
    found = []
    for path in sorted(Path("recipes/data").glob("directive-tier*.jsonl")):
        for line in path.read_text().splitlines():
            user = [m["content"] for m in json.loads(line)["messages"] if m["role"] == "user"]
            found += user[:1]
    step = max(1, len(found) // limit)  # spread over the tiers
    return found[::step][:limit]


def scenario_prompts(tokenizer, limit: int = 32) -> list[str]:
    template = DreamConfig().scenario_prompt
    return [chat_prompt(tokenizer, [{"role": "user", "content": template.format(constitution="", situation=s)}])
            for s in situations(limit)]


def load(model_dir: str | None):
    if model_dir is None and DEMO_MODEL.is_dir():
        model_dir = str(DEMO_MODEL)
    if model_dir is None:
        model_dir = str(Path(tempfile.mkdtemp()) / "model")
        texts = [json.dumps(json.loads(line)) for p in Path("recipes/data").glob("directive-*.jsonl")
                 for line in p.read_text().splitlines()]
        build_tiny_hybrid(TinyHybridConfig(vocab_size=1024), iter(texts * 3), Path(model_dir), seed=0)
    cfg = ModelConfig(name_or_path=model_dir)
    return model_dir, load_model(model_dir, cfg), load_tokenizer(model_dir, cfg)


def main(model_dir: str | None = None, rounds: int = 3):
    if "OMP_NUM_THREADS" not in os.environ:
        # One intra-op thread unless asked otherwise: on a small shared CPU machine a descheduled worker thread
        # stalls every tiny op, which swamped the one-at-a-time mode (up to 25x slower than one thread here).
        torch.set_num_threads(1)
    model_dir, model, tokenizer = load(model_dir)
    prompts = scenario_prompts(tokenizer)
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    print(f"model {model_dir}; {len(prompts)} scenario prompts of {min(lengths)}-{max(lengths)} tokens; "
          f"{NEW_TOKENS} new tokens each at temperature 1.0 (min_new_tokens = max_new_tokens, so every mode "
          f"generates the same number of tokens); torch threads: {torch.get_num_threads()}")
    kwargs = dict(temperature=1.0, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, seed=0)
    generate(model, tokenizer, prompts[:2], batch_size=2, **kwargs)  # warm-up: first-call setup, kernels
    # Modes take turns over a few rounds and each keeps its best time: a busy machine (other jobs on the same
    # cores) then slows all modes alike instead of whichever happened to run first.
    seconds = {batch_size: float("inf") for batch_size in (1, 8, 16)}
    for _ in range(rounds):
        for batch_size in seconds:
            start = time.perf_counter()
            generate(model, tokenizer, prompts, batch_size=batch_size, **kwargs)
            seconds[batch_size] = min(seconds[batch_size], time.perf_counter() - start)
    rates = {batch_size: len(prompts) / s for batch_size, s in seconds.items()}
    for batch_size, rate in rates.items():
        label = "one at a time" if batch_size == 1 else f"batch {batch_size}"
        print(f"{label:>14}: {rate:6.2f} scenarios/s  ({rate * NEW_TOKENS:7.1f} new tokens/s)  {rate / rates[1]:5.2f}x")
    best = max(rates[8], rates[16]) / rates[1]
    print(f"speed-up, best batch vs one at a time: {best:.2f}x (goal >= 4x); best of {rounds} rounds, "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
