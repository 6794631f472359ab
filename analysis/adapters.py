"""Reading LoRA adapters for analysis: the factors (B, A) and the deltas ΔW = scale · B @ A of each adapted
module, in any family's layout (Conv1D's fan_in_fan_out, LoRA on parameters, multimodal aliases), and the
trained GDN gates saved with them."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from toolkit.errors import ToolkitError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight")
_MODULE_TYPES = (
    ("attention", re.compile(r"(^|\.)(self_attn\.(q_proj|k_proj|v_proj|o_proj)|attn\.(c_attn|c_proj))$")),
    ("gdn", re.compile(r"(^|\.)linear_attn\.\w+$")),
    ("mlp", re.compile(r"(^|\.)mlp\.(.*\.)?\w+$")),
)
_FROM_BLOCKS = re.compile(r"(?:^|\.)((?:layers|h)\.\d+\..+)$")


def find_adapter(run_or_adapter: str | Path) -> Path:
    """The adapter directory: RUN/adapter for a run directory, or the directory itself."""
    path = Path(run_or_adapter)
    for candidate in (path, path / "adapter"):
        if (candidate / ADAPTER_CONFIG).is_file() and (candidate / ADAPTER_WEIGHTS).is_file():
            return candidate
    raise ToolkitError(f"no LoRA adapter here (looked for {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} in it and in "
                       "adapter/)", where=str(path), hint="pass a finished run directory or a PEFT adapter directory")



def _adapter_config(adapter: Path) -> dict:
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    if config.get("use_dora"):
        raise ToolkitError("a DoRA adapter's delta is not scale·B·A, so its rank cannot be read this way",
                           where=str(adapter / ADAPTER_CONFIG))
    return config



def adapter_tensors(adapter: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the adapter's weights file, each once (an adapter saved for a multimodal base also
    holds every tensor under the checkpoint class's names): the one place that reads the file."""
    try:
        from toolkit.lora import read_adapter_weights
    except ImportError:  # an older toolkit.lora: adapters without alias names
        from safetensors.torch import load_file

        return load_file(str(Path(adapter) / ADAPTER_WEIGHTS))
    return read_adapter_weights(Path(adapter))



def read_factors(run_or_adapter: str | Path) -> tuple[dict, dict]:
    """(lora_factors, {module: (dtype of lora_B, dtype of lora_A) as stored}): the storage dtypes set the rounding
    floor below which a singular value of B @ A is noise (`factor_tolerance`)."""
    adapter = find_adapter(run_or_adapter)
    config = _adapter_config(adapter)
    alpha = float(config.get("lora_alpha", config.get("r", 8)))
    pieces: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in adapter_tensors(adapter).items():
        match = _LORA_KEY.fullmatch(key)
        if match is None:  # GDN gates, DoRA magnitudes, modules_to_save, embedding LoRA
            continue
        pieces.setdefault(match["module"].removeprefix(_PREFIX), {})[match["which"]] = tensor
    factors, dtypes = {}, {}
    for module, ab in pieces.items():
        if set(ab) != {"A", "B"}:
            raise ToolkitError(f"module {module} has lora_{next(iter(ab))} but not its partner",
                               where=str(adapter / ADAPTER_WEIGHTS))
        a, b = ab["A"].to(torch.float64), ab["B"].to(torch.float64)
        r = a.shape[0]  # per module (peft's rank_pattern); alpha_pattern is not used by this toolkit
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        factors[module] = (b * scale, a)
        dtypes[module] = (ab["B"].dtype, ab["A"].dtype)
    if not factors:
        raise ToolkitError("the adapter holds no lora_A/lora_B weights", where=str(adapter / ADAPTER_WEIGHTS))
    order = sorted(factors, key=_natural_key)
    return {m: factors[m] for m in order}, {m: dtypes[m] for m in order}



def lora_factors(run_or_adapter: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module name (as in the base model) -> (scale·B [out, r], A [r, in]), float64 on CPU: the layer's output
    changes by x @ (B @ A)ᵀ. (Conv1D layers, fan_in_fan_out, store their weight as the transpose.)"""
    return read_factors(run_or_adapter)[0]



def lora_deltas(run_or_adapter: str | Path) -> dict[str, torch.Tensor]:
    """Module name -> ΔW = scale · B @ A (the change to module.weight), float64 on CPU."""
    transposed = bool(_adapter_config(find_adapter(run_or_adapter)).get("fan_in_fan_out"))
    return {name: (b @ a).T if transposed else b @ a for name, (b, a) in lora_factors(run_or_adapter).items()}



def _gates(adapter: Path) -> dict[str, torch.Tensor]:
    """Trained GDN gate tensors saved with the adapter, by their base-model parameter names."""
    return {k.removeprefix(_PREFIX): v for k, v in adapter_tensors(adapter).items()
            if _LORA_KEY.fullmatch(k) is None and k.rsplit(".", 1)[-1] in ("A_log", "dt_bias")}



def _match_names(names, available: dict) -> dict[str, str]:
    """{adapter name: name in the model}: the same name, else the one model name with the same path from the
    decoder block list on (model.language_model.layers.3.x and model.layers.3.x are one module). Unmatched
    names are left out."""
    by_tail: dict[str, list[str]] = {}
    for name in available:
        match = _FROM_BLOCKS.search(name)
        if match:
            by_tail.setdefault(match.group(1), []).append(name)
    out = {}
    for name in names:
        if name in available:
            out[name] = name
            continue
        match = _FROM_BLOCKS.search(name)
        candidates = by_tail.get(match.group(1), []) if match else []
        if len(candidates) == 1:
            out[name] = candidates[0]
    return out



def _natural_key(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]



def module_type(name: str) -> str:
    """attention (q/k/v/o_proj), gdn (linear_attn projections), mlp, or other."""
    for kind, rx in _MODULE_TYPES:
        if rx.search(name):
            return kind
    return "other"
