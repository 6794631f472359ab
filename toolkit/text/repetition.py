"""Repetition measures over token (or word) sequences.

seq-rep-n (Welleck et al. 2019): the share of n-grams in a sequence that repeat an earlier n-gram
of the same sequence: 0 for text without repeats, near 1 for "region region region region".
Also: distinct-n, the longest back-to-back run of one n-gram, and a plain word tokenizer so the
measures work on text without a model tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence


def seq_rep_n(tokens: Sequence, n: int = 4) -> float:
    """1 - distinct n-grams / n-grams; 0.0 for sequences shorter than n + 1."""
    grams = list(zip(*(tokens[i:] for i in range(n))))  # zip of shifted copies: the n-grams, fast
    if len(grams) < 2:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


_WORD_RE = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lowercased word / punctuation tokens: "Region, region!" -> ["region", ",", "region", "!"]."""
    return _WORD_RE.findall(text.lower())


def distinct_n(tokens: Sequence, n: int = 2) -> float:
    """Distinct n-grams / n-grams (Li et al. 2016); 1.0 when the sequence has no n-gram."""
    grams = list(zip(*(tokens[i:] for i in range(n))))
    if not grams:
        return 1.0
    return len(set(grams)) / len(grams)


def longest_repeat_run(tokens: Sequence, n: int = 1) -> int:
    """The most back-to-back repetitions of one n-gram: "region region region region" -> 4 (n=1);
    "a b a b a b" -> 3 (n=2). 1 when nothing repeats back to back, 0 for fewer than n tokens."""
    return repeat_run(tokens, n)[0]


def repeat_run(tokens: Sequence, n: int = 1, keep: Callable[[tuple], bool] | None = None) -> tuple[int, tuple]:
    """(longest back-to-back run, its n-gram); runs of n-grams that fail `keep` are skipped.

    tokens[j] == tokens[j + n] for m consecutive j starting at i means tokens[i : i + m + n] has
    period n: (m + n) // n copies of the n-gram tokens[i : i + n] back to back. Linear time.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    if len(tokens) < n:
        return 0, ()
    best, best_gram = 0, ()
    size, m = len(tokens), 0  # m: how many tokens[k] == tokens[k + n] in a row from k = j
    for j in range(size - n + 1):
        m = max(m - 1, 0)  # the run found at j - 1, one shorter, still holds at j
        while j + m + n < size and tokens[j + m] == tokens[j + m + n]:
            m += 1
        run = (m + n) // n
        if run > best:
            gram = tuple(tokens[j : j + n])
            if keep is None or keep(gram):
                best, best_gram = run, gram
    return best, best_gram
