"""Micro-batches and collation: one example per row, RIGHT-padded.

Right padding keeps every example exact on hybrid models: the Gated DeltaNet recurrence and its causal
conv1d only look backwards, so pads after an example never reach its tokens (tests/test_batching.py
checks this to 1e-4). Packing several examples into one row is refused: transformers' torch fallback
ignores sequence boundaries (cu_seqlens), so GDN recurrent state and conv state leak from one example
into the next; elsewhere this has silently produced loss 0.
"""

from __future__ import annotations

import torch

from toolkit.data.formatting import IGNORE, Example
from toolkit.errors import ToolkitError


def check_batching_supported(batching: str, model) -> None:
    """Raise ToolkitError(key="data.batching") when `batching` cannot keep examples apart on `model`."""
    from toolkit.model import is_hybrid

    if batching in ("bucket", "pad"):
        return
    if batching != "pack":
        raise ToolkitError(f"unknown batching '{batching}'", key="data.batching", hint="use bucket or pad")
    if is_hybrid(model):
        why = ("on this hybrid model packing leaks Gated DeltaNet recurrent state and conv1d state from one "
               "example into the next (the torch fallback ignores sequence boundaries)")
    else:
        why = "packing with per-example attention boundaries is not implemented yet"
    raise ToolkitError(f"batching 'pack' (several examples in one row) is not supported: {why}",
                       key="data.batching",
                       hint="use batching: bucket (similar lengths per micro-batch, right-padded, little waste)")


def micro_batches(examples: list[Example], micro_batch_size: int, batching: str) -> list[list[Example]]:
    """Split `examples` into micro-batches. bucket: sorted by length first (stable, so ties keep their
    order) so each micro-batch holds similar lengths; pad: in the given order."""
    if batching == "bucket":
        examples = sorted(examples, key=len)  # sorted() is stable
    elif batching != "pad":
        raise ToolkitError(f"batching '{batching}' is not supported here", key="data.batching", hint="use bucket")
    return [examples[i : i + micro_batch_size] for i in range(0, len(examples), micro_batch_size)]


def collate(examples: list[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask, labels as [batch, longest] long tensors; pads on the right, labels IGNORE there."""
    width = max(len(ex) for ex in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex)
        input_ids[row, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(ex.labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def padding_waste(batches) -> float:
    """Share of pad tokens over all rows of `batches` (lists of Examples, or collated dicts)."""
    real = total = 0
    for batch in batches:
        if isinstance(batch, dict):
            real += int(batch["attention_mask"].sum())
            total += batch["attention_mask"].numel()
        elif batch:
            real += sum(len(ex) for ex in batch)
            total += len(batch) * max(len(ex) for ex in batch)
    return 1.0 - real / total if total else 0.0
