"""The training loss: summed next-token cross-entropy over target tokens.

A batch is a dict of tensors: `labels` (IGNORE = -100 where no loss) and the model's own inputs
(input_ids, and attention_mask or the packed-sequence keys), which are passed to the model as they are.

`token_loss_sum` never holds the full-vocabulary logits: fp32 logits for batch x sequence x vocabulary are
the largest tensor of a step (Qwen3.5, 248,320 tokens: ~16 GB at 8 x 2048). It runs the model's own forward
(so DDP, accelerate and peft wrappers see their forward) with a pre-hook on the output embedding that keeps
the hidden states and lets the model project only the last position. The loss is then computed from the
kept hidden states in chunks of target positions, each chunk under activation checkpointing, so backward
recomputes one chunk's logits at a time instead of keeping them all. The last position's logits, which the
model computed itself, check that we reproduce the model's logit post-processing; where we do not (or the
model cannot be hooked), the full-logits path `token_loss_sum_full` runs instead, with a warning.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100  # label of a token that carries no loss (PyTorch cross_entropy's ignore_index)
# fp32 logits per chunk: ~270 positions at Qwen3.5's 248,320 tokens, ~2,100 at Llama's 32,000. Backward holds
# about three of these at once (logits, their softmax, the gradient): under 1 GB.
CHUNK_BYTES = 256 * 2**20


def model_inputs(batch: dict) -> dict:
    """The keys of a batch the model takes (everything but the labels)."""
    return {k: v for k, v in batch.items() if k != "labels"}


def _logits_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE, reduction="sum"
    )


def token_loss_sum_full(model, batch: dict) -> torch.Tensor:
    """Summed next-token cross-entropy from the model's full logits upcast to fp32 (memory ~ batch x seq x vocab)."""
    return _logits_loss(model(**model_inputs(batch)).logits, batch["labels"])


def token_loss_sum(model, batch: dict, chunk_size: int | None = None) -> torch.Tensor:
    """Summed next-token cross-entropy over target tokens (labels != IGNORE), without full-vocabulary logits.

    Same value and gradients as `token_loss_sum_full`. `chunk_size`: target positions per chunk (default: as
    many as fit CHUNK_BYTES of fp32 logits).
    """
    head = output_head(model)
    if head is None:
        return token_loss_sum_full(model, batch)
    try:
        logits, hidden = _forward_keeping_hidden(model, head, batch)
    except torch.OutOfMemoryError:  # the full path needs more memory still
        raise
    except Exception as exc:  # a forward that cannot take the one-position slice: the plain path still works
        return _fallback(model, batch, f"the forward failed with the output embedding hooked ({exc!r})")
    if hidden is None:  # the head module was never called with [B, T, H]: the logits are the full ones
        return _logits_loss(logits, batch["labels"])
    post = logit_post_processing(model)
    with torch.no_grad():
        ours = post(head(hidden[:, -1:]))
    if ours.shape != logits.shape or not _close(ours, logits):
        return _fallback(model, batch, "its logits differ from the output embedding's (unknown post-processing)")
    chunk = chunk_size or max(1, CHUNK_BYTES // (4 * logits.shape[-1]))
    return chunked_loss(head, post, hidden, batch["labels"], chunk)


def output_head(model):
    """The output embedding (lm_head) module, looked up through DDP / accelerate / compile / peft wrappers."""
    get = getattr(_unwrap(model), "get_output_embeddings", None)
    return get() if get else None


def _unwrap(model):
    """The transformers model inside DDP (`.module`), torch.compile (`._orig_mod`) and peft wrappers."""
    for attr in ("module", "_orig_mod", "module"):  # DDP around a compiled model, or the other way round
        inner = getattr(model, attr, None)
        model = inner if isinstance(inner, torch.nn.Module) else model
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _forward_keeping_hidden(model, head, batch: dict):
    """Run the model's forward while `head` keeps its input and projects only the last position.

    Returns (the model's logits, the head's [B, T, H] input or None if the head never saw one)."""
    kept = []

    def keep(module, args):
        if kept or not args or args[0].dim() != 3:  # only the first [B, T, H] call; leave anything else alone
            return None
        kept.append(args[0])
        return (args[0][:, -1:], *args[1:])

    handle = head.register_forward_pre_hook(keep)
    try:
        return model(**model_inputs(batch)).logits, (kept[0] if kept else None)
    finally:
        handle.remove()  # also on an exception: a later plain forward must get full logits


def logit_post_processing(model):
    """What the model does to the head's output before returning logits, read from its (text) config."""
    config = getattr(_unwrap(model), "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    softcap = getattr(config, "final_logit_softcapping", None)  # Gemma 2/3
    scale = getattr(config, "logit_scale", None)  # Cohere multiplies
    divide = getattr(config, "logits_scaling", None)  # Granite divides

    def post(logits):
        if scale is not None:
            logits = logits * scale
        if divide is not None:
            logits = logits / divide
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return post


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    """Equal up to the rounding of a bf16 matmul (relative to the largest logit), so autocast differences pass."""
    tolerance = 1e-2 * theirs.detach().abs().max().float() + 1e-4
    return bool(((ours.float() - theirs.detach().float()).abs().max() <= tolerance).item())


def _fallback(model, batch: dict, why: str) -> torch.Tensor:
    loss = token_loss_sum_full(model, batch)  # first: an error that is not about the hook is raised unannounced
    warnings.warn(f"chunked loss unavailable for {type(model).__name__}: {why}; used full logits", stacklevel=3)
    return loss


def chunked_loss(head, post, hidden: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
    """Summed cross-entropy of `post(head(hidden))` against the next-token labels, `chunk` target positions at
    a time; each chunk's logits but the last are recomputed in backward (checkpoint) instead of kept. The last
    chunk's backward runs first, right after the forward, so keeping its logits raises no peak (recomputing
    them would allocate as much at that moment): one chunk fewer to recompute, none when all fit in one."""
    targets = labels[:, 1:]
    keep = targets != IGNORE  # positions without a target need no logits at all
    h, y = hidden[:, :-1][keep], targets[keep]
    total = None
    for start in range(0, max(len(y), 1), chunk):  # at least one (maybe empty) chunk: a graph to backward through
        args = (head, post, h[start:start + chunk], y[start:start + chunk])
        last = start + chunk >= len(y)
        part = _chunk_loss(*args) if last else checkpoint(_chunk_loss, *args, use_reentrant=False)
        total = part if total is None else total + part
    return total


def _chunk_loss(head, post, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(post(head(h)).float(), y, reduction="sum")
