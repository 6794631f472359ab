"""The training loss: summed next-token cross-entropy over target tokens.

A batch is a dict of tensors: `labels` (IGNORE = -100 where no loss) and the model's own inputs
(input_ids, and attention_mask or the packed-sequence keys), which are passed to the model as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def model_inputs(batch: dict) -> dict:
    """The keys of a batch the model takes (everything but the labels)."""
    return {k: v for k, v in batch.items() if k != "labels"}


def token_loss_sum(model, batch: dict) -> torch.Tensor:
    """Summed next-token cross-entropy over target tokens (labels != IGNORE)."""
    logits = model(**model_inputs(batch)).logits
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE, reduction="sum"
    )
