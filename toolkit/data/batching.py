"""Micro-batches and collation: `bucket`/`pad` (one example per row, right-padded) or `pack` (one row per
micro-batch, examples back to back, no padding).

Right padding keeps every example exact on hybrid models: the Gated DeltaNet recurrence and its causal
conv1d only look backwards, so pads after an example never reach its tokens.

A packed row uses the padding-free layout of transformers' `DataCollatorWithFlattening`: no attention_mask,
`position_ids` restarting at 0 for each example (transformers' masking builds a block-diagonal causal mask
from them for sdpa/eager attention), and `cu_seq_lens_q/k` + `max_length_q/k` (flash-attention varlen, and
the GDN layers through `toolkit.packing`). Packing is only as exact as the model makes it, so `pack` is
measured per model (`packing_check`) and refused where examples would see each other; elsewhere a leak
like that has silently produced loss 0.
"""

from __future__ import annotations

import heapq
import math

import torch

from toolkit.data.formatting import IGNORE, Example
from toolkit.errors import ToolkitError, first_line
from toolkit.packing import enable_packed_sequences
from toolkit.text.padding import pad_rows

BATCHING_MODES = ("auto", "bucket", "pad", "pack")
PROBE_LENGTHS = (5, 9, 7)  # packing_check's random sequences: each boundary inside a conv window and a GDN chunk


def check_batching_supported(batching: str, model) -> None:
    """Raise ToolkitError(key="data.batching") when `batching` cannot keep examples apart on `model`.
    For pack this installs the GDN wrapper (`toolkit.packing`) and then measures packed against alone."""
    if batching in ("auto", "bucket", "pad"):
        return
    if batching != "pack":
        raise ToolkitError(f"unknown batching '{batching}'", key="data.batching",
                           hint=f"use one of {', '.join(BATCHING_MODES)}")
    enable_packed_sequences(model)
    if why := packing_check(model):
        raise ToolkitError(f"batching 'pack' does not keep examples apart on this model: {why}", key="data.batching",
                           hint="use batching: bucket (right-padded, exact on every model) or auto")


def resolve_batching(batching: str, model) -> str:
    """`auto` -> pack where packing is exact on `model` and it runs on an accelerator, else bucket; any other
    mode is checked and returned. On CPU bucket stays the default: there the GDN torch path runs once per
    packed example and attention takes a dense block mask, which costs more than bucket's little padding
    (benchmarks/batching.py)."""
    if batching != "auto":
        check_batching_supported(batching, model)
        return batching
    if not on_accelerator(model):
        return "bucket"
    enable_packed_sequences(model)
    return "pack" if packing_check(model) is None else "bucket"


def on_accelerator(model) -> bool:
    return next(model.parameters()).device.type != "cpu"


def packing_check(model) -> str | None:
    """None when a few random sequences give the same logits packed in one row as each alone; else why not.
    Runs in eval mode under no_grad (the mode is restored) and leaves the global RNG alone."""
    vocab = model.get_input_embeddings().num_embeddings
    gen = torch.Generator().manual_seed(0)
    probes = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in PROBE_LENGTHS]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = _logits(model, collate([Example(p, p, source="probe") for p in probes], 0, "pack"), device)
            alone = torch.cat([_logits(model, {"input_ids": torch.tensor([p]), "use_cache": False}, device)
                               for p in probes], dim=1)
    except (ValueError, RuntimeError, TypeError) as exc:  # e.g. a forward that rejects cu_seq_lens_q
        return f"the packed forward failed: {first_line(exc)}"
    finally:
        model.train(was_training)
    diff = (packed.float() - alone.float()).abs().max().item()
    # fp32 on CPU agrees up to summation order; bf16 / GPU kernels only to a few parts in 100 of the largest
    # logit, while a leak moves the logits of a later example by O(1)
    exact = packed.dtype == torch.float32 and device.type == "cpu"
    tol = 1e-4 if exact else 2e-2 * max(1.0, alone.float().abs().max().item())
    if diff <= tol:
        return None
    return f"logits packed differ from each sequence alone by {diff:.2g} (tolerance {tol:.0e})"


def _logits(model, batch: dict, device) -> torch.Tensor:
    return model(**to_device({k: v for k, v in batch.items() if k != "labels"}, device)).logits


def micro_batches(examples: list[Example], micro_batch_size: int, batching: str) -> list[list[Example]]:
    """Split `examples` into micro-batches. bucket: sorted by length first (stable, so ties keep their
    order) so each micro-batch holds similar lengths; pad: in the given order; pack: as many micro-batches
    as bucket (DDP ranks take every world-th one and must all get the same count), balanced by tokens."""
    if batching == "pack":
        return _balanced_bins(examples, math.ceil(len(examples) / micro_batch_size))
    if batching == "bucket":
        examples = sorted(examples, key=len)  # sorted() is stable
    elif batching != "pad":
        raise ToolkitError(f"batching '{batching}' is not supported here", key="data.batching", hint="use bucket")
    return [examples[i : i + micro_batch_size] for i in range(0, len(examples), micro_batch_size)]


def _balanced_bins(examples: list[Example], n_bins: int) -> list[list[Example]]:
    """Longest first into the least-loaded bin (greedy LPT: the fullest bin exceeds the mean by at most one
    example). Ties go to the bin with fewer examples, then the lower index, so no bin stays empty and the
    result is deterministic; each bin keeps its examples in their given order."""
    heap = [(0, 0, b) for b in range(n_bins)]  # (tokens, examples, bin): already a valid heap
    members: list[list[int]] = [[] for _ in range(n_bins)]
    for i in sorted(range(len(examples)), key=lambda i: (-len(examples[i]), i)):
        tokens, count, b = heapq.heappop(heap)
        members[b].append(i)
        heapq.heappush(heap, (tokens + len(examples[i]), count + 1, b))
    return [[examples[i] for i in sorted(m)] for m in members]


def collate(examples: list[Example], pad_token_id: int, batching: str = "bucket") -> dict:
    """bucket/pad: input_ids, attention_mask, labels as [batch, longest] long tensors, right-padded (labels
    IGNORE there). pack: one padding-free row (see `_collate_packed`)."""
    if batching == "pack":
        return _collate_packed(examples)
    input_ids, attention_mask = pad_rows([ex.input_ids for ex in examples], pad_token_id)
    labels, _ = pad_rows([ex.labels for ex in examples], IGNORE)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _collate_packed(examples: list[Example]) -> dict:
    """[1, total] input_ids/labels/position_ids plus cu_seq_lens_q/k (int32) and max_length_q/k (ints), no
    attention_mask. Each example's first label is IGNORE, so it is not trained to follow the previous
    example. use_cache=False: with a cache, transformers neither detects the packing from position_ids nor
    lets GDN layers run per example, and many models build one by default (config.use_cache)."""
    input_ids, labels, position_ids, cu_seq_lens = [], [], [], [0]
    for ex in examples:
        input_ids += ex.input_ids
        labels += ([IGNORE] + ex.labels[1:])[: len(ex)]
        position_ids += range(len(ex))
        cu_seq_lens.append(cu_seq_lens[-1] + len(ex))
    longest = max(len(ex) for ex in examples)
    cu = torch.tensor(cu_seq_lens, dtype=torch.int32)

    def row(values):
        return torch.tensor([values], dtype=torch.long)

    return {"input_ids": row(input_ids), "labels": row(labels), "position_ids": row(position_ids),
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest,
            "use_cache": False}


def to_device(batch: dict, device) -> dict:
    """The batch with its tensors on `device`; plain values (max_length_q, use_cache) as they are."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def padding_waste(batches, batching: str = "bucket") -> float:
    """Share of pad tokens over all rows of `batches` (lists of Examples collated as `batching`, or collated
    dicts; a packed row, and a packed dict without attention_mask, has no pads)."""
    if batching == "pack":
        return 0.0
    real = total = 0
    for batch in batches:
        if isinstance(batch, dict):
            mask = batch.get("attention_mask")
            real += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
            total += batch["input_ids"].numel()
        elif batch:
            real += sum(len(ex) for ex in batch)
            total += len(batch) * max(len(ex) for ex in batch)
    return 1.0 - real / total if total else 0.0
