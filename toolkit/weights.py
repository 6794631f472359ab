"""What a path names, in weights: a model dir, a hub id, a PEFT adapter dir, a run dir (its final RUN/adapter
or RUN/model) or a checkpoint dir (RUN/checkpoints/step-N, by its adapter/ or model/); and which base an
adapter belongs to. Serve, the dream loop's judge and teacher, and every analysis command resolve and load
weights here; a run's newest weights when it has no final ones are `train.checkpoint.run_weights`.

An adapter's base is the run's recipe model (RUN/base-model when the run built tiny-hybrid), else the
`base_model_name_or_path` its adapter_config.json names.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from toolkit.config.model import ModelConfig
from toolkit.errors import ToolkitError
from toolkit.model import TINY_HYBRID

ADAPTER_CONFIG = "adapter_config.json"
RUN_RECIPE = "resolved_recipe.yaml"


def find_run_dir(path: Path) -> Path | None:
    """The run directory holding `path` (it has resolved_recipe.yaml): RUN, RUN/adapter,
    RUN/checkpoints/step-N/adapter."""
    path = Path(path)
    for parent in [path, *path.parents][:4]:
        if (parent / RUN_RECIPE).is_file():
            return parent
    return None


def recipe_model(run_dir: Path) -> ModelConfig | None:
    """The run's recipe `model:` section as written (None without one); a section that no longer validates
    keeps its name_or_path. Trust flags are never taken from it: callers set theirs."""
    import yaml

    path = Path(run_dir) / RUN_RECIPE
    if not path.is_file():
        return None
    section = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
    section = {k: v for k, v in section.items() if k not in ("trust_remote_code", "allow_pickle")}
    try:
        return ModelConfig.model_validate(section)
    except ValueError:
        return ModelConfig(name_or_path=str(section.get("name_or_path") or TINY_HYBRID))


def adapter_base(adapter: Path, run_dir: Path | None = None) -> str:
    """The base model (dir or hub id) an adapter was trained on."""
    run_dir = run_dir if run_dir is not None else find_run_dir(adapter)
    if run_dir is not None:
        model = recipe_model(run_dir)
        built = Path(run_dir) / "base-model"
        if model is not None and model.name_or_path != TINY_HYBRID:
            return model.name_or_path
        if (built / "config.json").is_file():
            return str(built)
    config = json.loads((Path(adapter) / ADAPTER_CONFIG).read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ToolkitError("cannot tell the adapter's base model (no run recipe above it, no "
                           "base_model_name_or_path)", where=str(Path(adapter) / ADAPTER_CONFIG),
                           hint="pass the base model explicitly")
    return base


def resolve_weights(path_or_run: str | Path, base: str | None = None) -> tuple[str, Path | None]:
    """(model dir or hub id, adapter dir or None) behind a model dir, hub id, full-model run dir (RUN/model),
    PEFT adapter dir or LoRA run dir (RUN/adapter). `base` overrides an adapter's base."""
    path = Path(str(path_or_run)).expanduser()
    if not path.exists():
        return str(path_or_run), None  # a hub id
    if (path / ADAPTER_CONFIG).is_file():
        run_dir = path.parent if (path.parent / RUN_RECIPE).is_file() else None
        return base or adapter_base(path, run_dir), path
    if (path / "config.json").is_file():
        return str(path), None
    if (path / "adapter" / ADAPTER_CONFIG).is_file():
        return base or adapter_base(path / "adapter", path), path / "adapter"
    if (path / "model" / "config.json").is_file():
        return str(path / "model"), None
    raise ToolkitError("not a model dir, adapter dir or run dir (no config.json, adapter_config.json, adapter/ "
                       "or model/)", where=str(path))


def load_weights(path_or_run: str | Path, base: str | None = None, device=None, dtype: torch.dtype = torch.float32,
                 options: ModelConfig | None = None, key: str | None = None):
    """(model, tokenizer) for a model dir, hub id, adapter dir or run dir, in eval mode (on `device` when given):
    the causal LM through `toolkit.model.load_model` (the text model alone for a multimodal checkpoint), an
    adapter loaded onto it with `toolkit.lora.load_adapter` and merged in memory. The tokenizer is the
    adapter's when it has one. `options`: loading options (trust_remote_code, allow_pickle, attention, chat
    template) for the resolved model; default: ModelConfig's. `key`: the recipe key that named the path (a
    judge, a teacher), put on loading errors in place of model.name_or_path."""
    try:
        return _load_weights(path_or_run, base, device, dtype, options)
    except ToolkitError as exc:
        if key is None:
            raise
        raise ToolkitError(exc.message, where=exc.where, key=key, hint=exc.hint) from None


def _load_weights(path_or_run, base, device, dtype, options):
    from toolkit.lora import load_adapter
    from toolkit.model import load_model, load_tokenizer

    model_dir, adapter = resolve_weights(path_or_run, base)
    cfg = (options or ModelConfig()).model_copy(update={"name_or_path": model_dir})
    model = load_model(model_dir, cfg, dtype=dtype)
    if adapter is not None:
        model = load_adapter(model, adapter, allow_pickle=cfg.allow_pickle).merge_and_unload()
    tok_src = str(adapter) if adapter is not None and (adapter / "tokenizer_config.json").is_file() else model_dir
    tokenizer = load_tokenizer(tok_src, cfg)
    return (model if device is None else model.to(device)).eval(), tokenizer


def inference_placement() -> tuple[torch.device, torch.dtype]:
    """Where to run a model for generation and analysis: bf16 on a GPU that has it, else fp32 (GDN layers
    give NaN in fp16)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return device, torch.bfloat16 if bf16 else torch.float32
