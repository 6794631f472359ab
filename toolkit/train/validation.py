"""The loss over a set of examples, as training counts it: summed next-token cross-entropy over target
tokens, in micro-batches, without gradients. The loop's validation loss and `analyze rank`'s sweep use it."""

from __future__ import annotations

import torch

from toolkit.chat import IGNORE
from toolkit.data.batching import collate, micro_batches, to_device
from toolkit.loss import token_loss_sum


def target_count(labels: list[int]) -> int:
    """Tokens that carry loss: the labels after the first (nothing predicts the first) that are not IGNORE."""
    return sum(1 for label in labels[1:] if label != IGNORE)


@torch.no_grad()
def examples_loss(model, examples, batch_size: int, batching: str, pad_id: int) -> tuple[float, int]:
    """(summed loss, target tokens) of `examples` under `model`, in eval mode for the duration."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum, count = 0.0, 0
    for batch_examples in micro_batches(examples, batch_size, batching):
        loss_sum += token_loss_sum(model, to_device(collate(batch_examples, pad_id, batching), device)).item()
        count += sum(target_count(e.labels) for e in batch_examples)
    model.train(was_training)
    return loss_sum, count
