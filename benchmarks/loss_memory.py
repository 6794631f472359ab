"""Peak memory of one forward+backward of the training loss: chunked (`token_loss_sum`) against the full fp32
upcast (`token_loss_sum_full`), on a model with Qwen3.5's 248,320-token vocabulary (CPU).

    .venv/bin/python benchmarks/loss_memory.py [BATCH] [SEQ]      # defaults: 2 x 1024

The model is a LlamaForCausalLM with hidden size 64, 2 layers, vocabulary 248,320, untied embeddings, in fp32
(so both variants give the same loss to 1e-5; on a GPU the logits would be bf16 and the full upcast would add
an fp32 copy on top), so the logits dominate everything else, as they do for real Qwen3.5 training at batch x
sequence = 8 x 2048.

How memory is measured: each variant runs in a fresh Python process, which builds the same seeded model and
batch, reads its peak resident set size (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) as the baseline, runs the
loss forward and backward once, and reads the peak again: the difference is the extra memory the loss step
needed at its high point. Large tensors are mmap'ed by the allocator and returned on free, so RSS follows
the live tensors; a fresh process keeps one variant's high-water mark from hiding the other's.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import torch

VOCAB = 248_320


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(variant: str, batch: int, seq: int) -> dict:
    """One forward+backward of `variant` in this process: its loss and the peak RSS it added."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from toolkit.loss import token_loss_sum, token_loss_sum_full

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=seq,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, VOCAB, (batch, seq))
    batch_dict = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    loss_fn = token_loss_sum if variant == "chunked" else token_loss_sum_full
    baseline = peak_mb()
    loss = loss_fn(model, batch_dict)
    loss.backward()
    return {"loss": loss.item(), "peak_mb": peak_mb() - baseline}


def run_fresh(variant: str, batch: int, seq: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--variant", variant, str(batch), str(seq)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(batch: int = 2, seq: int = 1024) -> None:
    from toolkit.loss import CHUNK_BYTES

    chunk = CHUNK_BYTES // (4 * VOCAB)
    print(f"LlamaForCausalLM hidden 64, 2 layers, vocab {VOCAB:,} (untied), fp32; batch {batch} x {seq}; "
          f"chunk {chunk} positions; one forward+backward, peak RSS over the baseline, fresh process each")
    results = {variant: run_fresh(variant, batch, seq) for variant in ("full", "chunked")}
    for variant, r in results.items():
        print(f"{variant:>8}: loss {r['loss']:.6f}   peak {r['peak_mb']:8,.0f} MB")
    full, chunked = results["full"], results["chunked"]
    same = abs(full["loss"] - chunked["loss"]) <= 1e-5 * abs(full["loss"])
    print(f"full / chunked peak: {full['peak_mb'] / chunked['peak_mb']:.1f}x   losses equal to 1e-5 relative: {same}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--variant"]:
        print(json.dumps(measure(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    else:
        main(*map(int, sys.argv[1:3]))
