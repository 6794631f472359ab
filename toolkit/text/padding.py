"""Rows of token ids into one [rows, longest] tensor and its attention mask, padded on the right (training,
forward passes: a causal model's real positions never see pads after them) or on the left (generation: every
row's next token is in the last column)."""

from __future__ import annotations

from typing import Literal

import torch


def pad_id(tokenizer, eos: list[int] | None = None) -> int:
    """The id pads are written with: the tokenizer's pad token, else the first end-of-sequence id (`eos`, or
    the tokenizer's), else 0. Pads are masked, so the choice only has to be a valid id."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if eos:
        return eos[0]
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def pad_rows(rows: list[list[int]], value: int, side: Literal["right", "left"] = "right",
             device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask): `rows` as a long tensor filled with `value` where a row is shorter than the longest, and a
    long mask with 1 on real tokens. Built by hand, so no tokenizer's padding_side is touched."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)
