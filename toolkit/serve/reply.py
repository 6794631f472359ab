"""One chat reply under a wall-clock limit: the server holds its model lock while generating, so a reply that
would run long is cut at `seconds` (a StoppingCriteria checked after every new token) and says so."""

from __future__ import annotations

import time

import torch
from transformers import StoppingCriteria

from toolkit.text.generate import eos_token_ids, generation_config
from toolkit.text.padding import pad_id

# why a reply ended, as the API reports it
END_OF_TURN, MAX_NEW_TOKENS, TIME_LIMIT = "end_of_turn", "max_new_tokens", "time_limit"


class Deadline(StoppingCriteria):
    """True once the wall clock passes `seconds` from construction; `hit` remembers that it stopped generation."""

    def __init__(self, seconds: float):
        self.at = time.monotonic() + seconds
        self.hit = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        self.hit = time.monotonic() >= self.at
        return torch.full((input_ids.shape[0],), self.hit, dtype=torch.bool, device=input_ids.device)


def reply(model, tokenizer, prompt_ids: list[int], *, temperature: float, top_p: float, max_new_tokens: int,
          seconds: float, seed: int) -> tuple[str, str]:
    """(text, why it stopped: END_OF_TURN, MAX_NEW_TOKENS or TIME_LIMIT). temperature 0 is greedy; the
    caller's global RNG is left as it was."""
    eos = eos_token_ids(model, tokenizer)
    device = next(model.parameters()).device
    input_ids = torch.tensor([prompt_ids], device=device)
    deadline = Deadline(seconds)
    config = generation_config(temperature, max_new_tokens, eos, pad_id(tokenizer, eos), top_p=top_p)
    with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                             generation_config=config, stopping_criteria=[deadline])
    new = out[0, input_ids.shape[1]:].tolist()
    ended = next((k for k, t in enumerate(new) if t in eos), None)
    text = tokenizer.decode(new[:ended], skip_special_tokens=True)
    if ended is not None:
        return text, END_OF_TURN
    return text, TIME_LIMIT if deadline.hit else MAX_NEW_TOKENS
