"""Repetition measures over token (or word) sequences.

seq-rep-n (Welleck et al. 2019): the share of n-grams in a sequence that repeat an earlier n-gram
of the same sequence: 0 for text without repeats, near 1 for "region region region region".
"""

from __future__ import annotations

from collections.abc import Sequence


def seq_rep_n(tokens: Sequence, n: int = 4) -> float:
    """1 - distinct n-grams / n-grams; 0.0 for sequences shorter than n + 1."""
    grams = list(zip(*(tokens[i:] for i in range(n))))  # zip of shifted copies: the n-grams, fast
    if len(grams) < 2:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)
