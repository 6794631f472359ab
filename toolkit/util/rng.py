"""Random state that survives a checkpoint and is the same in every process."""

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
