"""Random state that survives a checkpoint and is the same in every process: seeds from values, a component's
own `random.Random` as JSON, and the global torch / Python / CUDA generators as tensors."""

from __future__ import annotations

import random
import zlib


def stable_seed(*parts) -> int:
    """A seed from values that is the same in every process (Python's hash() of a str is salted per process)."""
    return zlib.crc32(":".join(str(p) for p in parts).encode())


def rng_state(rng: random.Random) -> list:
    """A `random.Random`'s state as JSON-ready lists (components keep their RNGs in state.json)."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: list) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


def global_rng_state() -> dict:
    """Global RNGs (dropout, anything a library draws) as tensors for a checkpoint; our own samplers keep their
    own generators (`rng_state`)."""
    import torch  # here, not at the top: the recipe and plan floors use this module without torch

    state = {"torch": torch.get_rng_state(), "python": _python_state_to_tensor(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict) -> None:
    """Restore what `global_rng_state` took."""
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(_python_state_from_tensor(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_tensor(state):
    # Mersenne Twister words are < 2**32, so int64 holds them; gauss_next is reset (we never use it)
    import torch

    version, internal, _ = state
    return torch.tensor([version, *internal], dtype=torch.int64)


def _python_state_from_tensor(tensor):
    values = tensor.tolist()
    return (values[0], tuple(values[1:]), None)
