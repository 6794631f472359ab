"""What a run directory records about where it came from: library versions and the toolkit's commit."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

LIBRARIES = ("toolkit", "torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "safetensors", "pydantic")


def toolkit_commit() -> str | None:
    repo = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment_info() -> str:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info = {"python": platform.python_version(), "platform": platform.platform(), "libraries": versions,
            "toolkit_commit": toolkit_commit()}
    return json.dumps(info, indent=1)


def flat_hparams(resolved: dict, prefix: str = "") -> dict:
    """The resolved recipe as flat scalars, the shape TensorBoard's hparams accept."""
    flat = {}
    for key, value in resolved.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat
