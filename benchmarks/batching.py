"""Padding waste and training throughput: `bucket` against `pad` batching on tiny-hybrid (CPU).

    .venv/bin/python benchmarks/batching.py [MODEL_DIR]

MODEL_DIR defaults to the demo's stage-1 model (runs `toolkit demo` first). Prints the share of pad
tokens and real (non-pad) tokens trained per second for each mode, on the same global batches.
"""

from __future__ import annotations

import sys
import time

import torch

from toolkit.data.batching import collate, micro_batches, padding_waste
from toolkit.data.sources import load_sources
from toolkit.model import load_model, load_tokenizer
from toolkit.recipe import load_recipe
from toolkit.loss import token_loss_sum


def main(model_dir: str = "runs/demo-pretrain/model", steps: int = 20, global_batch: int = 32, micro: int = 8):
    recipe = load_recipe("recipes/demo.yaml").recipe
    tokenizer = load_tokenizer(model_dir, recipe.model)
    model = load_model(model_dir, recipe.model)
    sources = load_sources(recipe.data, tokenizer, seed=0)
    batches = [sources[i % len(sources)].next_examples(global_batch) for i in range(steps)]
    results = {}
    for mode in ("pad", "bucket"):
        groups = [micro_batches(examples, micro, mode) for examples in batches]
        waste = padding_waste([b for g in groups for b in g])
        start = time.perf_counter()
        for group in groups:
            for examples in group:
                token_loss_sum(model, collate(examples, tokenizer.pad_token_id)).backward()
        seconds = time.perf_counter() - start
        real_tokens = sum(len(e) for examples in batches for e in examples)
        results[mode] = (waste, real_tokens / seconds)
        print(f"{mode:>6}: padding waste {waste:6.1%}   {real_tokens / seconds:8,.0f} real tokens/s (fwd+bwd)")
    print(f"bucket vs pad: {results['bucket'][1] / results['pad'][1]:.2f}x tokens/s, "
          f"waste {results['pad'][0]:.1%} -> {results['bucket'][0]:.1%}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main(*sys.argv[1:2])
