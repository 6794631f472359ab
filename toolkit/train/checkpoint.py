"""Atomic checkpoints: everything needed to continue a run exactly.

`checkpoints/step-N/` holds
  trainable.safetensors  every trainable parameter (LoRA weights and gates, or the whole model)
  training_state.pt      optimizer, LR scheduler and RNG states (loaded with weights_only=True)
  state.json             step and the state_dict of every other component (sources, sampler, guard, ...)
  adapter/ or model/     the same weights in Hugging Face / PEFT format, for users and the server
It is written under a temporary name and renamed into place, so a directory named `step-N` is complete.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(
    run_dir: Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    training_state: dict,
    components: dict,
    export: Callable[[Path], None] | None,
    keep_last: int,
) -> Path:
    root = checkpoints_dir(run_dir)
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, tmp / "trainable.safetensors")
    torch.save(training_state, tmp / "training_state.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **components}, indent=1))
    if export is not None:
        export(tmp)
    _fsync_tree(tmp)
    if final.exists():  # re-saving a step: move the old one aside first, so step-N always exists
        old = root / f".step-{step}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    for _, old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    path = Path(path)
    trainable = load_file(path / "trainable.safetensors")
    training_state = torch.load(path / "training_state.pt", weights_only=True, map_location="cpu")
    components = json.loads((path / "state.json").read_text())
    return trainable, training_state, components


def rng_state() -> dict:
    """Global RNGs (dropout, anything a library draws); our own samplers keep their own generators."""
    state = {"torch": torch.get_rng_state(), "python": _python_state_to_tensor(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_python_state_from_tensor(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_tensor(state) -> torch.Tensor:
    # Mersenne Twister words are < 2**32, so int64 holds them; gauss_next is reset (we never use it)
    version, internal, _ = state
    return torch.tensor([version, *internal], dtype=torch.int64)


def _python_state_from_tensor(tensor: torch.Tensor):
    values = tensor.tolist()
    return (values[0], tuple(values[1:]), None)


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
