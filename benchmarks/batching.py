"""Padding waste and training throughput of `pad`, `bucket` and `pack` batching on tiny-hybrid (CPU).

    .venv/bin/python benchmarks/batching.py [MODEL_DIR]

MODEL_DIR defaults to a random-init tiny-hybrid built into a temporary directory (throughput does not
depend on the weights). The data is the shipped directive chat data, all three tiers shuffled together,
so every global batch mixes one-turn exchanges with long multi-turn conversations. Prints the share of
pad tokens and the real (non-pad) tokens trained per second (forward + backward) for each mode, on the
same global batches; each mode's time is its best of `rounds` interleaved rounds.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from toolkit.data.batching import check_batching_supported, collate, micro_batches, padding_waste
from toolkit.data.formatting import example_from_record
from toolkit.loss import token_loss_sum
from toolkit.model import build_tiny_hybrid, load_model, load_tokenizer
from toolkit.recipe import ModelConfig, TinyHybridConfig

DATA = [Path("recipes/data") / f"directive-tier{t}.jsonl" for t in (1, 2, 3)]
MODES = ("pad", "bucket", "pack")


def mixed_chat_examples(tokenizer, max_length: int = 512) -> list:
    records = [json.loads(line) for path in DATA for line in path.read_text().splitlines() if line.strip()]
    random.Random(0).shuffle(records)  # tiers interleaved: short and long conversations in every batch
    examples = [example_from_record(r, tokenizer, fmt="auto", text_field="text", strip_instructions=True,
                                    max_length=max_length, source="chat", tier=None, where=f"bench[{i}]")
                for i, r in enumerate(records)]
    return [e for e in examples if e is not None]


def main(model_dir: str | None = None, **kwargs):
    if model_dir is not None:
        return run(model_dir, **kwargs)
    texts = [m["content"] for p in DATA for line in p.read_text().splitlines() if line.strip()
             for m in json.loads(line)["messages"]]
    with tempfile.TemporaryDirectory() as tmp:
        return run(str(build_tiny_hybrid(TinyHybridConfig(), iter(texts * 4), Path(tmp) / "model", 0)), **kwargs)


def run(model_dir: str, steps: int = 8, global_batch: int = 32, micro: int = 8, rounds: int = 3):
    cfg = ModelConfig(name_or_path=model_dir)
    tokenizer, model = load_tokenizer(model_dir, cfg), load_model(model_dir, cfg)
    check_batching_supported("pack", model)  # installs the per-example GDN path and checks it is exact
    model.train()
    examples = mixed_chat_examples(tokenizer)
    lengths = sorted(len(e) for e in examples)
    print(f"{len(examples)} chat examples, tokens: min {lengths[0]}, median {statistics.median(lengths):.0f}, "
          f"max {lengths[-1]}; {steps} global batches of {global_batch}, micro-batches of {micro}")
    batches = [[examples[(s * global_batch + i) % len(examples)] for i in range(global_batch)] for s in range(steps)]
    real_tokens = sum(len(e) for examples in batches for e in examples)
    collated = {mode: [collate(b, tokenizer.pad_token_id, mode) for g in batches for b in micro_batches(g, micro, mode)]
                for mode in MODES}
    seconds = {mode: float("inf") for mode in MODES}
    for _ in range(rounds):  # modes interleaved, best round kept: other work on the machine only slows a round
        for mode in MODES:
            token_loss_sum(model, collated[mode][0]).backward()  # warm-up, not timed
            start = time.perf_counter()
            for batch in collated[mode]:
                token_loss_sum(model, batch).backward()
            seconds[mode] = min(seconds[mode], time.perf_counter() - start)
    results = {}
    for mode in MODES:
        results[mode] = (padding_waste(collated[mode]), real_tokens / seconds[mode])
        print(f"{mode:>6}: padding waste {results[mode][0]:6.1%}   {results[mode][1]:8,.0f} real tokens/s (fwd+bwd)")
    for mode in ("bucket", "pack"):
        print(f"{mode} vs pad: {results[mode][1] / results['pad'][1]:.2f}x tokens/s")


if __name__ == "__main__":
    torch.manual_seed(0)
    main(*sys.argv[1:2])
