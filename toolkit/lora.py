"""LoRA on any causal LM, with presets for Qwen3.5 / Qwen3-Next hybrids (Gated DeltaNet + full attention).

Targets are resolved here to an explicit list of full module names before peft sees them, so a preset
hits exactly the modules it names (peft's own suffix matching would also hit, e.g., a vision tower).

GDN gates. LoRA cannot reach the 1-D gate parameters `A_log` and `dt_bias`; with `train_gates` they
are trained directly. peft has no wrapper for a bare 1-D parameter (`modules_to_save` wraps whole
modules, `trainable_token_indices` is for embeddings, `target_parameters` puts LoRA on >=2-D weights),
but `PeftModel.load_adapter` passes every key of `adapter_model.safetensors` that is not an adapter
weight through to `load_state_dict(strict=False)`. So `save_adapter` adds the gates to that file under
their model names (`base_model.model.model.layers.0.linear_attn.A_log`) and plain
`PeftModel.from_pretrained(base, adapter_dir)` loads them into the base model, unchanged peft, no
extra file. Limitations: the gates overwrite the base model's own values (`disable_adapter()` and
`unload()` do not restore them), and LoRA servers that check adapter keys (e.g. vLLM) may refuse an
adapter saved with gates.
"""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from toolkit.errors import ToolkitError, did_you_mean
from toolkit.recipe import GDN_GATE_PARAMS, LoraConfig

ADAPTER_WEIGHTS = "adapter_model.safetensors"

# Regexes on full module names; each is matched as a dotted suffix: (anything.)?<pattern>.
_ATTENTION = r"self_attn\.(q_proj|k_proj|v_proj|o_proj)"
# Qwen3.5 (separate projections) and Qwen3-Next (fused in_proj_qkvz / in_proj_ba)
_GDN = r"linear_attn\.(in_proj_qkv|in_proj_z|in_proj_a|in_proj_b|in_proj_qkvz|in_proj_ba|out_proj)"
# dense MLPs and MoE shared experts (mlp.shared_expert.gate_proj); fused expert weights are not nn.Linear
_MLP = r"mlp\.(.*\.)?(gate_proj|up_proj|down_proj)"

LORA_PRESETS: dict[str, tuple[str, ...]] = {
    "attention": (_ATTENTION,),
    "gdn": (_GDN,),
    "mlp": (_MLP,),
    "hybrid-all": (_ATTENTION, _GDN, _MLP),
}


# ---------------------------------------------------------------- targets


def _linear_modules(model) -> dict[str, nn.Linear]:
    """Full name -> nn.Linear, skipping peft's own layers (lora_A/lora_B) if LoRA is already attached."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and ".lora_" not in name:
            found[name.removesuffix(".base_layer")] = module
    return found


def linear_module_names(model) -> list[str]:
    """Distinct leaf names of the model's nn.Linear modules (lm_head excluded), sorted."""
    leaves = {name.rsplit(".", 1)[-1] for name in _linear_modules(model)}
    return sorted(leaves - {"lm_head"})


def _matches(pattern: str, names) -> list[str]:
    try:
        rx = re.compile(rf"(?:.*\.)?(?:{pattern})")
    except re.error as exc:
        raise ToolkitError(f"'{pattern}' is not a valid module name or regex: {exc}", key="lora.targets") from None
    return [n for n in names if rx.fullmatch(n)]


def _no_match_error(what: str, model, hint: str | None = None) -> ToolkitError:
    listed = ", ".join(linear_module_names(model)) or "none"
    return ToolkitError(f"{what} matches no linear module; the model's linear modules: {listed}", key="lora.targets",
                        hint=hint)


def resolve_lora_targets(model, targets: str | list[str]) -> list[str]:
    """Full names of the nn.Linear modules that `targets` selects, in model order.

    `targets` is a preset name (LORA_PRESETS) or a list of entries; an entry is a preset name, a leaf name
    ("q_proj"), a dotted suffix ("self_attn.q_proj") or a regex on full names ("model\\.layers\\.3\\..*_proj").
    A preset may match nothing on a given model (gdn on a Llama) as long as the whole set matches something;
    an explicit entry that matches nothing is an error, since it is most likely a typo.
    """
    entries = [targets] if isinstance(targets, str) else list(targets)
    if not entries:
        raise _no_match_error("an empty target list", model)
    names = list(_linear_modules(model))
    selected: set[str] = set()
    for entry in entries:
        if entry in LORA_PRESETS:
            for pattern in LORA_PRESETS[entry]:
                selected.update(_matches(pattern, names))
            continue
        hit = _matches(entry, names)
        if not hit:
            hint = did_you_mean(entry, [*LORA_PRESETS, *linear_module_names(model)])
            raise _no_match_error(f"target '{entry}'", model, hint=hint)
        selected.update(hit)
    if not selected:
        raise _no_match_error(f"targets {entries}", model)
    return _drop_rewritten_by_peft(model, [n for n in names if n in selected])


def _drop_rewritten_by_peft(model, names: list[str]) -> list[str]:
    """Leave out targets that peft would not wrap as the modules they are.

    On transformers v5, peft rewrites `gate_proj`/`up_proj`/`down_proj` targets of some MoE architectures
    (Qwen3-Next, Mixtral, Qwen2-MoE, ...) into LoRA on every routed expert's fused weight (a shim for adapters
    trained on v4) and drops the nn.Linear targets, dense and shared-expert MLPs included. Left in, `hybrid-all`
    on Qwen3-Next would put rank-r LoRA on each of 512 experts per layer. peft does the same on load, so the
    rewrite cannot be bypassed without breaking plain `PeftModel.from_pretrained`.
    """
    leaves = {n.rsplit(".", 1)[-1] for n in names}
    rewritten = {leaf for leaf in leaves if _peft_rewrites(model, leaf)}
    if not rewritten:
        return names
    kept = [n for n in names if n.rsplit(".", 1)[-1] not in rewritten]
    what = f"peft turns {sorted(rewritten)} targets on {model.config.model_type} into LoRA on every routed expert"
    if not kept:
        raise ToolkitError(f"{what}, so they cannot be targeted here", key="lora.targets",
                           hint="target attention/gdn projections instead")
    warnings.warn(f"lora.targets: {what}; leaving them out ({len(names) - len(kept)} modules)", stacklevel=3)
    return kept


def _peft_rewrites(model, leaf: str) -> bool:
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft.utils.transformers_weight_conversion import convert_peft_config_for_transformers
    except ImportError:  # a peft without the v4 -> v5 shim rewrites nothing
        return False
    probe = PeftLoraConfig(target_modules=[f"probe.{leaf}"])
    try:
        convert_peft_config_for_transformers(probe, model=model, conversions=None)
    except ValueError:  # "cannot convert gate_proj without also targeting up_proj": it would be rewritten
        return True
    return f"probe.{leaf}" not in (probe.target_modules or ())


# ---------------------------------------------------------------- attach, gates


def gate_parameters(model) -> dict[str, nn.Parameter]:
    """The GDN gate parameters (A_log, dt_bias of every linear_attn), by their names in `model`."""
    return {n: p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in GDN_GATE_PARAMS}


def attach_lora(model, lora_cfg: LoraConfig):
    """Wrap `model` in a PeftModel with LoRA on the resolved targets; only adapters (and gates) train."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model

    targets = resolve_lora_targets(model, lora_cfg.targets)
    if lora_cfg.train_gates and not gate_parameters(model):
        raise ToolkitError("train_gates needs a model with Gated DeltaNet layers (A_log, dt_bias); this one has none",
                           key="lora.train_gates")
    peft_cfg = PeftLoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=targets,  # explicit full names: peft matches exactly these
        use_rslora=lora_cfg.rslora,
        use_dora=lora_cfg.dora,
        bias="none",
        task_type=TaskType.CAUSAL_LM,
    )
    peft_model = get_peft_model(model, peft_cfg)
    if lora_cfg.train_gates:
        # after get_peft_model, which freezes every base parameter
        for param in gate_parameters(peft_model).values():
            param.requires_grad_(True)
    return peft_model


def _trained_gates(model) -> dict[str, nn.Parameter]:
    return {n: p for n, p in gate_parameters(model).items() if p.requires_grad}


# ---------------------------------------------------------------- save / load


def save_adapter(model, out_dir: Path) -> None:
    """Write the adapter in PEFT format (safetensors); trained gates go into the same weights file."""
    from safetensors.torch import load_file, save_file

    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    gates = _trained_gates(model)
    if not gates:
        return
    path = out_dir / ADAPTER_WEIGHTS
    weights = load_file(path)
    # PeftModel names (base_model.model.<base name>): the keys plain peft's load_state_dict expects
    weights.update({n: p.detach().cpu().contiguous().clone() for n, p in gates.items()})
    save_file(weights, path, metadata={"format": "pt"})


def load_adapter(base_model, adapter_dir: Path, is_trainable: bool = False):
    """PeftModel.from_pretrained, plus: gates saved with the adapter train again when `is_trainable`.

    Plain peft already loads the gate values (see the module docstring); this only restores their
    requires_grad, which peft cannot know about.
    """
    from peft import PeftModel
    from safetensors import safe_open

    adapter_dir = Path(adapter_dir)
    model = PeftModel.from_pretrained(base_model, str(adapter_dir), is_trainable=is_trainable)
    if is_trainable:
        with safe_open(adapter_dir / ADAPTER_WEIGHTS, framework="pt") as f:
            saved = set(f.keys())
        for name, param in gate_parameters(model).items():
            if name in saved:
                param.requires_grad_(True)
    return model


def trainable_state_dict(model) -> dict[str, torch.Tensor]:
    """Every parameter that trains (LoRA A/B, DoRA magnitudes, gates), by its name in model.named_parameters()."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state_dict(model, state: dict[str, torch.Tensor]) -> None:
    """Inverse of trainable_state_dict: copy values in place; the names must match exactly."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(params.keys() - state.keys()), sorted(state.keys() - params.keys())
    if missing or unexpected:
        raise ToolkitError(f"trainable state does not fit the model: {len(missing)} missing (e.g. {missing[:3]}), "
                           f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})", key="lora",
                           hint="was it saved with other lora settings (targets, r, dora, train_gates)?")
    with torch.no_grad():
        for name, param in params.items():
            if state[name].shape != param.shape:
                raise ToolkitError(f"trainable state: {name} has shape {tuple(state[name].shape)}, "
                                   f"the model has {tuple(param.shape)}", key="lora.r")
            param.copy_(state[name])


def export_merged(model, tokenizer, out_dir: Path) -> None:
    """Save base + adapter (+ gates) as one ordinary model; the training model is left untouched."""
    out_dir = Path(out_dir)
    merged = copy.deepcopy(model).merge_and_unload()  # a copy: merging in place would end training
    merged.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
