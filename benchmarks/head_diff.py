"""Wall time of a head-diff on tiny-hybrid: 64 probe prompts x 128 tokens (a benchmark, not a test).

Uses the demo's models when they exist (`toolkit demo` first): base runs/demo-pretrain/model, tuned
runs/demo (its LoRA adapter). Prompts are made from the directive data, padded with more of it to 128
tokens each, so every probe is exactly 128 tokens long.

    .venv/bin/python benchmarks/head_diff.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from analysis.head_diff import run_head_diff
from toolkit.model import load_tokenizer
from toolkit.recipe import ModelConfig

BASE, TUNED = Path("runs/demo-pretrain/model"), Path("runs/demo")
PROMPTS, TOKENS = 64, 128


def probes(tokenizer) -> list[dict]:
    rows = [json.loads(line) for line in Path("recipes/data/directive-tier1.jsonl").read_text().splitlines()]
    words = " ".join(m["content"] for r in rows for m in r["messages"] if m["role"] != "system").split()
    out = []
    for i in range(PROMPTS):
        ids = tokenizer(" ".join(words[i * 7:] + words[:i * 7]))["input_ids"][:TOKENS]
        out.append({"text": tokenizer.decode(ids)})
    return out


def main() -> None:
    if not (BASE / "config.json").is_file() or not (TUNED / "adapter").is_dir():
        sys.exit("run `toolkit demo` first: this benchmark diffs its two models")
    tokenizer = load_tokenizer(str(BASE), ModelConfig(name_or_path=str(BASE)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probes.jsonl"
        path.write_text("".join(json.dumps(p) + "\n" for p in probes(tokenizer)))
        start = time.perf_counter()
        result = run_head_diff(str(BASE), str(TUNED), path, Path(tmp) / "out", base_model=str(BASE),
                               max_tokens=TOKENS, plot=False)
        seconds = time.perf_counter() - start
    print(f"head-diff of {result['n_prompts']} prompts x {TOKENS} tokens on tiny-hybrid "
          f"({len(result['heads'])} heads): {seconds:.1f} s wall")
    print(result["summary"]["concentration"])


if __name__ == "__main__":
    main()
