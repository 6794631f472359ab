"""Where a model keeps its decoder blocks, in the class we train and in the class its checkpoint names.

Hub checkpoints differ in layout: a Qwen3.5 checkpoint is a multimodal `Qwen3_5ForConditionalGeneration`
whose text blocks live at `model.language_model.layers`, while `AutoModelForCausalLM` builds the text-only
`Qwen3_5ForCausalLM` with the same blocks at `model.layers`; GPT-2 keeps them at `transformer.h`. Adapters,
merged exports and analysis hooks need both names; this module finds them from the modules themselves (the
ModuleList of decoder blocks), never from a table of families.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from torch import nn

_VISION_WORDS = ("visual", "vision", "image", "audio", "mm_projector")


def text_config(config):
    """The language model's config: `text_config` of a multimodal config, else the config itself."""
    return getattr(config, "text_config", None) or config


def decoder_layers_name(model) -> str:
    """Dotted name of the ModuleList holding the text decoder blocks ("model.layers", "transformer.h",
    "model.language_model.layers"), through a PeftModel wrapper too (its prefix is kept)."""
    n_layers = getattr(text_config(model.config), "num_hidden_layers", None)
    candidates = [
        name for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (n_layers is None or len(module) == n_layers)
        and not any(word in name for word in _VISION_WORDS) and "lora_" not in name
    ]
    if not candidates:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")
    return min(candidates, key=lambda name: name.count("."))  # the outermost list of that length


def decoder_layers(model) -> nn.ModuleList:
    return model.get_submodule(decoder_layers_name(model))


def checkpoint_config(name_or_path: str) -> dict | None:
    """config.json of a local model directory (None for a hub id or a directory without one)."""
    path = Path(str(name_or_path)).expanduser() / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


@functools.lru_cache(maxsize=8)
def checkpoint_layers_name(name_or_path: str) -> str | None:
    """Where the class named in a checkpoint's config.json keeps its decoder blocks, found by building that
    class on the meta device (no weights, no memory); None when it cannot be told (hub id, remote code).
    Cached: every checkpoint save of a run asks about the same base."""
    raw = checkpoint_config(name_or_path)
    if not raw or not raw.get("architectures"):
        return None
    import torch
    import transformers
    from transformers import AutoConfig

    cls = getattr(transformers, raw["architectures"][0], None)
    if cls is None:
        return None
    config = AutoConfig.from_pretrained(str(Path(name_or_path).expanduser()))
    with torch.device("meta"):
        model = cls._from_config(config)
    return decoder_layers_name(model)
