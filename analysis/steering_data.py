"""Inputs of the steering commands: load the model to steer, read the prompts and contrast-pair JSONL files
(a bad row names its file:line), parse the --layers and --coefficients options, and encode a prompt and its
completion as the model sees them. The prompt is the user turn through the chat template with the
generation prompt, the completion is appended as the assistant's text (no end-of-turn token); the two are
tokenized separately and concatenated, so the completion's tokens are exact.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from toolkit.errors import ToolkitError
from toolkit.util.jsonl import jsonl_rows


def load_steer_model(path_or_run: str | Path, base: str | None = None, device: str | None = None):
    """(model, tokenizer, model dir) for a model dir, run dir or adapter dir of any causal LM; an adapter is
    loaded on its base and merged in memory (no copy on disk). A multimodal checkpoint gives its text model."""
    from analysis.capture import load_capture_model
    from toolkit.weights import resolve_weights

    model_dir, _ = resolve_weights(path_or_run, base=base)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_capture_model(path_or_run, base=base, device=device)
    return model, tokenizer, model_dir


def read_prompts(path: str | Path, fields: tuple[str, ...] = ("prompt",)) -> list[dict]:
    """Rows of a prompts JSONL, each with the non-empty string `fields`; a bad row names its file:line."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError("file not found", where=str(path))
    rows = []
    for where, row, problem in jsonl_rows(path):
        missing = [f for f in fields if not isinstance((row or {}).get(f), str) or not row[f]]
        if problem or missing:
            raise ToolkitError(problem or f"each row needs a non-empty string '{missing[0]}'", where=where)
        rows.append(row)
    if not rows:
        raise ToolkitError("no rows", where=str(path))
    return rows


def read_pairs(path: str | Path) -> list[dict]:
    """Rows {"prompt", "positive", "negative"}; every field a non-empty string."""
    return read_prompts(path, ("prompt", "positive", "negative"))


def parse_layers(text: str | list[int], n_layers: int, option: str = "--layers") -> list[int]:
    """'2,3' (or '1-3', negative = from the end) -> sorted unique ints in [0, n_layers)."""
    if isinstance(text, (list, tuple)):
        items = [str(x) for x in text]
    else:
        items = [p.strip() for p in str(text).split(",") if p.strip()]
    layers: list[int] = []
    try:
        for item in items:
            if re.fullmatch(r"\d+-\d+", item):
                lo, hi = item.split("-")
                layers += list(range(int(lo), int(hi) + 1))
            else:
                value = int(item)
                layers.append(value + n_layers if value < 0 else value)
    except ValueError:
        raise ToolkitError(f"'{text}' is not a list of layer numbers", where=option, hint="e.g. --layers 2,3") from None
    bad = [x for x in layers if not 0 <= x < n_layers]
    if not layers or bad:
        raise ToolkitError(f"layer {bad[0] if bad else text} out of range", where=option,
                           hint=f"the model has {n_layers} decoder layers: 0..{n_layers - 1}")
    return sorted(set(layers))


def parse_floats(text: str, option: str) -> list[float]:
    try:
        values = [float(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        raise ToolkitError(f"'{text}' is not a comma-separated list of numbers", where=option) from None
    if not values:
        raise ToolkitError("empty list", where=option)
    return values


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The user turn through the chat template with the generation prompt (the plain format without one),
    encoded as at inference (toolkit.chat)."""
    from toolkit.chat import chat_prompt, encode_prompt

    return encode_prompt(tokenizer, chat_prompt(tokenizer, [{"role": "user", "content": prompt}]))


def encode(tokenizer, prompt: str, completion: str | None) -> tuple[list[int], int]:
    """(token ids, index of the first completion token); without a completion the start is len(ids)."""
    ids = prompt_ids(tokenizer, prompt)
    start = len(ids)
    if completion:
        ids = ids + tokenizer(completion, add_special_tokens=False)["input_ids"]
    return ids, start
