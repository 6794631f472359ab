"""Data at scale: first-start tokenization, second start, peak memory and tokens kept, by corpus size.

    .venv/bin/python benchmarks/data_scale.py [SIZES_MB ...]      (default: 10 50 200)

For each size a JSONL corpus of text documents (lengths from a sentence to a long chapter, so many are
longer than max_length) is written to a scratch directory, and a pretraining recipe's data section is
loaded twice through `load_sources` — the path `toolkit pretrain` takes — each in a fresh process:
the first start tokenizes into an empty cache (num_proc 2), the second maps what the first built.
Printed per size: tokens/s of the first start, seconds of the second, peak RSS of each process and
its tokenizer workers (VmHWM; the workers' ru_maxrss), and trained tokens per epoch against the corpus's
tokens (and what truncation to max_length, the behaviour before windows, kept).
The tokenizer is the tiny-hybrid's byte-level BPE (8K vocabulary here) trained on a sample of the corpus.
"""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the of and to in is was for on that with as by at from his her it an were are which this be or "
         "has had not but have their its one all been new who also more after first two other time into "
         "model layer gradient token attention state memory corpus window recurrence delta gate value key "
         "query training learning rate batch epoch loss sequence kernel chunk cache arrow process").split()
MAX_LENGTH = 512


def write_corpus(path: Path, megabytes: int) -> None:
    """Documents of 5 to 4,000 words (log-uniform), one JSON object a line, until the size is reached."""
    rng = random.Random(megabytes)
    target = megabytes * 1_000_000
    written = 0
    with open(path, "w") as f:
        while written < target:
            n = int(2 ** rng.uniform(2.3, 12))
            text = " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."
            line = json.dumps({"text": text}) + "\n"
            f.write(line)
            written += len(line)


def child(corpus: str, tokenizer_dir: str, cache: str) -> None:
    """One start: load the sources as `toolkit pretrain` does; print JSON figures."""
    from transformers import AutoTokenizer

    from toolkit.data.sources import load_sources
    from toolkit.recipe import DataConfig, SourceConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    data = DataConfig(sources=[SourceConfig(name="corpus", path=corpus)], max_length=MAX_LENGTH, cache_dir=cache,
                      num_proc=2, val_fraction=0.0)
    start = time.perf_counter()
    (source,) = load_sources(data, tokenizer, seed=0, text_windows=True)
    seconds = time.perf_counter() - start
    own = peak_rss_mb()
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rss_mb": own, "workers_rss_mb": workers, "stats": source.stats,
                      "train_rows": len(source.train)}))


def peak_rss_mb() -> float:
    """This process's peak RSS since its exec (VmHWM; ru_maxrss would carry over the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def corpus_tokens(corpus: Path, tokenizer_dir: str) -> tuple[int, int]:
    """(the corpus's tokens, those that truncation to max_length would keep), counted independently:
    a batched encode of every document, plus its EOS."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    lengths, batch = [], []
    with open(corpus) as f:
        for line in f:
            batch.append(json.loads(line)["text"])
            if len(batch) == 2000:
                lengths += [len(ids) + 1 for ids in tokenizer(batch)["input_ids"]]
                batch = []
    lengths += [len(ids) + 1 for ids in tokenizer(batch)["input_ids"]] if batch else []
    return sum(lengths), sum(min(n, MAX_LENGTH) for n in lengths)


def train_tokenizer(corpus: Path, out: Path) -> str:
    from toolkit.model import train_tokenizer as train

    sample = []
    with open(corpus) as f:
        for _, line in zip(range(2000), f):
            sample.append(json.loads(line)["text"])
    train(iter(sample), 8192).save_pretrained(out)
    return str(out)


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        print(f"{'corpus':>8} {'tokens':>12} {'1st start':>10} {'tok/s':>11} {'RSS MB':>7} {'workers':>8} "
              f"{'2nd start':>10} {'RSS MB':>7} {'kept':>7}")
        for mb in sizes:
            corpus = scratch / f"corpus-{mb}mb.jsonl"
            write_corpus(corpus, mb)
            tokenizer_dir = train_tokenizer(corpus, scratch / f"tok-{mb}")
            cache = str(scratch / f"cache-{mb}")
            first = run_child(str(corpus), tokenizer_dir, cache)
            second = run_child(str(corpus), tokenizer_dir, cache)
            tokens, truncated = corpus_tokens(corpus, tokenizer_dir)
            stats = first["stats"]
            # windows overlap by one token: a document's tokens are its rows' tokens less one per extra row
            kept = (stats["tokens"] - (first["train_rows"] - stats["documents"])) / tokens
            print(f"{mb:>6}MB {tokens:>12,} {first['seconds']:>9.1f}s {tokens / first['seconds']:>11,.0f} "
                  f"{first['rss_mb']:>7.0f} {first['workers_rss_mb']:>8.0f} {second['seconds']:>9.2f}s "
                  f"{second['rss_mb']:>7.0f} {kept:>7.2%}   (truncation kept {truncated / tokens:.1%})")
            assert second["stats"] == stats


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:5])
    else:
        main([int(a) for a in sys.argv[1:]] or [10, 50, 200])
