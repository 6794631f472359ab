"""Forward passes of the steering analysis, batched with right padding: read the decoder blocks' outputs at
the completion's tokens (`last` or the `mean` over them) for contrast pairs, and score text under the model
as it stands (steered or not): the mean log-prob of each completion, the positive-minus-negative margin
per pair, and the next-token log-probs of neutral prompts for the off-target KL.
"""

from __future__ import annotations

import torch

from analysis.hooks import capturing
from analysis.steering_data import encode
from toolkit.errors import ToolkitError
from toolkit.text.padding import pad_id, pad_rows

POSITIONS = ("last", "mean")


# ---------------------------------------------------------------- hooks and forward passes


def _device(model):
    return next(model.parameters()).device


@torch.no_grad()
def collect_activations(model, tokenizer, prompts: list[str], completions: list[str], layers: list[int],
                        position: str = "last", batch_size: int = 8) -> dict[int, torch.Tensor]:
    """Per layer an (n, hidden) float32 CPU tensor read at `position` of each completion."""
    if position not in POSITIONS:
        raise ToolkitError(f"unknown position '{position}'", where="--position", hint=f"one of {', '.join(POSITIONS)}")
    encoded = [encode(tokenizer, p, c) for p, c in zip(prompts, completions)]
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    pad = pad_id(tokenizer)
    for lo in range(0, len(encoded), batch_size):
        batch = encoded[lo:lo + batch_size]
        ids, mask = pad_rows([e[0] for e in batch], pad, device=_device(model))
        with capturing(model, layers) as store:
            model(input_ids=ids, attention_mask=mask, use_cache=False)
        for layer in layers:
            hidden = store[layer].float()
            for row, (seq, start) in enumerate(batch):
                if position == "last":
                    out[layer].append(hidden[row, len(seq) - 1].cpu())
                else:
                    out[layer].append(hidden[row, start:len(seq)].mean(0).cpu())
    return {layer: torch.stack(vs) for layer, vs in out.items()}


def pair_activations(model, tokenizer, rows: list[dict], layers: list[int], position: str = "last",
                     batch_size: int = 8) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """(positive, negative) activations per layer, each (n_pairs, hidden)."""
    prompts = [r["prompt"] for r in rows]
    pos = collect_activations(model, tokenizer, prompts, [r["positive"] for r in rows], layers, position, batch_size)
    neg = collect_activations(model, tokenizer, prompts, [r["negative"] for r in rows], layers, position, batch_size)
    return pos, neg


# ---------------------------------------------------------------- measuring


@torch.no_grad()
def completion_logprobs(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 8) -> list[float]:
    """Mean log p(completion token | everything before) over each completion's tokens."""
    encoded = [encode(tokenizer, p, c) for p, c in zip(prompts, completions)]
    pad = pad_id(tokenizer)
    result = []
    for lo in range(0, len(encoded), batch_size):
        batch = encoded[lo:lo + batch_size]
        ids, mask = pad_rows([e[0] for e in batch], pad, device=_device(model))
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), -1)
        for row, (seq, start) in enumerate(batch):
            targets = ids[row, start:len(seq)]
            scores = logp[row, start - 1:len(seq) - 1].gather(-1, targets[:, None])[:, 0]
            result.append(float(scores.mean()))
    return result


def margins(model, tokenizer, rows: list[dict], batch_size: int = 8) -> list[float]:
    """Per row: mean log p(positive | prompt) - mean log p(negative | prompt)."""
    prompts = [r["prompt"] for r in rows]
    pos = completion_logprobs(model, tokenizer, prompts, [r["positive"] for r in rows], batch_size)
    neg = completion_logprobs(model, tokenizer, prompts, [r["negative"] for r in rows], batch_size)
    return [p - n for p, n in zip(pos, neg)]


@torch.no_grad()
def next_token_logprobs(model, tokenizer, prompts: list[str], batch_size: int = 8) -> list[torch.Tensor]:
    """Per prompt a (T, vocab) float32 CPU tensor of next-token log-probs at every real position."""
    encoded = [encode(tokenizer, p, None)[0] for p in prompts]
    pad = pad_id(tokenizer)
    out = []
    for lo in range(0, len(encoded), batch_size):
        batch = encoded[lo:lo + batch_size]
        ids, mask = pad_rows(batch, pad, device=_device(model))
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), -1)
        out += [logp[row, :len(seq)].cpu() for row, seq in enumerate(batch)]
    return out
