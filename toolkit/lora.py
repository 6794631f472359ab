"""LoRA on any causal LM, with presets for Qwen3.5 / Qwen3-Next hybrids (Gated DeltaNet + full attention).

Targets are resolved here to an explicit list of module names before peft sees them, so a preset hits
exactly the modules it names (peft's own suffix matching would also hit, e.g., a vision tower). Names are
kept from the decoder block list on (`layers.3.self_attn.q_proj`, `h.0.attn.c_attn`), so the adapter
selects the same modules in the text-only class we train (`model.layers`) and in a multimodal checkpoint's
class (`model.language_model.layers`); `save_adapter` stores the tensors under both names.

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
import json
import re
from pathlib import Path

import torch
from torch import nn

from toolkit.config.model import GDN_GATE_PARAMS, LoraConfig
from toolkit.errors import ToolkitError, did_you_mean
from toolkit.model import PICKLE_HINT, pickle_only_weights

ADAPTER_WEIGHTS = "adapter_model.safetensors"

# Regexes on full module names; each is matched as a dotted suffix: (anything.)?<pattern>.
# Llama/Qwen/Mistral/Gemma self_attn projections; GPT-2's fused Conv1D c_attn and its output c_proj
_ATTENTION = r"self_attn\.(q_proj|k_proj|v_proj|o_proj)|attn\.(c_attn|c_proj)"
# Qwen3.5 (separate projections) and Qwen3-Next (fused in_proj_qkvz / in_proj_ba)
_GDN = r"linear_attn\.(in_proj_qkv|in_proj_z|in_proj_a|in_proj_b|in_proj_qkvz|in_proj_ba|out_proj)"
# dense MLPs (GPT-2: c_fc, c_proj) and MoE shared experts; routed experts are fused 3-D parameters, not modules
_MLP = r"mlp\.(gate_proj|up_proj|down_proj|c_fc|c_proj)|mlp\.shared_expert\.(gate_proj|up_proj|down_proj)"
# MoE: the shared expert, its gate and the router (`mlp.gate`, a weight that is not an nn.Linear)
_MOE = r"mlp\.shared_expert\.(gate_proj|up_proj|down_proj)|mlp\.shared_expert_gate|mlp\.gate"

LORA_PRESETS: dict[str, tuple[str, ...]] = {
    "attention": (_ATTENTION,),
    "gdn": (_GDN,),
    "mlp": (_MLP,),
    "moe": (_MOE,),
    "hybrid-all": (_ATTENTION, _GDN, _MLP),
}


# ---------------------------------------------------------------- targets


def _is_linear(module) -> bool:
    """nn.Linear, GPT-2's Conv1D (a transposed linear peft also adapts), or an MoE router: a module whose own
    2-D `weight` is a linear map but that is not an nn.Linear (LoRA reaches it through peft's target_parameters)."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, (nn.Linear, Conv1D)):
        return True
    weight = getattr(module, "weight", None)
    return type(module).__name__.endswith("Router") and isinstance(weight, nn.Parameter) and weight.ndim == 2


def _linear_modules(model) -> dict[str, nn.Module]:
    """Full name -> linear module, skipping peft's own layers (lora_A/lora_B) if LoRA is already attached."""
    found = {}
    for name, module in model.named_modules():
        if _is_linear(module) and ".lora_" not in name and not name.endswith(".base_layer"):
            found[name] = module
        elif name.endswith(".base_layer") and _is_linear(module):
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
    return [n for n in names if n in selected]


def split_targets(model, names: list[str]) -> tuple[list[str], list[str]]:
    """(target_modules, target_parameters) for peft, as layout-free names (see `portable_name`).

    Modules peft wraps as themselves go to target_modules. Two kinds go to target_parameters (LoRA on the
    module's `weight`) instead: routers, which are not nn.Linear, and linears that peft would rewrite. On
    transformers v5 peft turns `gate_proj`/`up_proj`/`down_proj`/`gate` targets of MoE architectures
    (Qwen3-Next, Qwen3.5-MoE, Mixtral, ...) into LoRA on every routed expert's fused weight, shared-expert
    and dense MLPs included, on attach and again on load; as parameters they stay the modules named.
    """
    from transformers.pytorch_utils import Conv1D

    modules = _linear_modules(model)
    rewritten = {leaf for leaf in {n.rsplit(".", 1)[-1] for n in names} if _peft_rewrites(model, leaf)}
    as_modules, as_parameters = [], []
    for name in names:
        wrappable = isinstance(modules[name], (nn.Linear, Conv1D)) and name.rsplit(".", 1)[-1] not in rewritten
        (as_modules if wrappable else as_parameters).append(name)
    return [portable_name(n) for n in as_modules], [portable_name(n) + ".weight" for n in as_parameters]


_DECODER_BLOCK = re.compile(r"(?:^|\.)((?:layers|h)\.\d+\..+)$")


def portable_name(name: str) -> str:
    """A module name from the decoder block list on ("layers.3.self_attn.q_proj"): peft matches target names
    as dotted suffixes, so the same adapter config selects the same modules in the text-only class
    (model.layers.3...) and in a multimodal class (model.language_model.layers.3...)."""
    match = _DECODER_BLOCK.search(name)
    return match.group(1) if match else name


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

    target_modules, target_parameters = split_targets(model, resolve_lora_targets(model, lora_cfg.targets))
    if lora_cfg.train_gates and not gate_parameters(model):
        raise ToolkitError("train_gates needs a model with Gated DeltaNet layers (A_log, dt_bias); this one has none",
                           key="lora.train_gates")
    if target_parameters and lora_cfg.dora:
        raise ToolkitError(f"DoRA cannot adapt {target_parameters[0]} (peft applies DoRA to modules only)",
                           key="lora.dora", hint="leave out the moe targets or set lora.dora: false")
    peft_cfg = PeftLoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=target_modules or None,  # explicit names: peft matches exactly these
        target_parameters=target_parameters or None,
        use_rslora=lora_cfg.rslora,
        use_dora=lora_cfg.dora,
        bias="none",
        task_type=TaskType.CAUSAL_LM,
    )
    peft_model = get_peft_model(model, peft_cfg)
    # peft shortens 20+ targets to the fewest suffixes that tell them apart in THIS model (often bare leaf names);
    # saved that way, loading into the checkpoint's class could also hit its vision tower's q_proj. Keep them whole.
    peft_model.peft_config["default"].target_modules = list(target_modules) or None
    if lora_cfg.train_gates:
        # after get_peft_model, which freezes every base parameter. In fp32 even on a bf16 base: an AdamW step
        # of 2e-4 on A_log ~ 1 is below bf16's resolution (2^-7 relative), so in bf16 the gates never move.
        # The GDN layers compute the decay in fp32 from these anyway.
        for param in gate_parameters(peft_model).values():
            param.data = param.data.float()
            param.requires_grad_(True)
    return peft_model


def _trained_gates(model) -> dict[str, nn.Parameter]:
    return {n: p for n, p in gate_parameters(model).items() if p.requires_grad}


# ---------------------------------------------------------------- save / load


ALIASES_METADATA = "toolkit_layer_aliases"


def save_adapter(model, out_dir: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Write the adapter in PEFT format (safetensors); trained gates go into the same weights file. `state`:
    the trainable tensors gathered whole from a sharded model (FSDP, ZeRO-3), whose own parameters are shards.

    When the base checkpoint's own class keeps the decoder blocks elsewhere than the class we trained (a
    multimodal Qwen3.5: `model.language_model.layers` vs `model.layers`), every tensor is also stored under
    the checkpoint's name. Plain `PeftModel.from_pretrained` loads by exact key and neither peft nor the
    multimodal class map one name to the other, so with both names the adapter loads into either class (each
    takes its own keys and ignores the others); vLLM/SGLang, which load the checkpoint's class, find the names
    they expect. `read_adapter_weights` returns each tensor once.
    """
    from safetensors.torch import load_file, save_file

    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True, state_dict=state)
    path = out_dir / ADAPTER_WEIGHTS
    weights = load_file(path)
    # PeftModel names (base_model.model.<base name>): the keys plain peft's load_state_dict expects
    gates = {n: (p if state is None else state[n]) for n, p in _trained_gates(model).items()}
    weights.update({n: p.detach().cpu().contiguous().clone() for n, p in gates.items()})
    aliases = _layer_aliases(model)
    for trained, checkpoint in aliases.items():
        weights.update({checkpoint + k[len(trained):]: v.clone() for k, v in list(weights.items()) if k.startswith(trained)})
    save_file(weights, path, metadata={"format": "pt", ALIASES_METADATA: json.dumps(aliases)})


def _layer_aliases(model) -> dict[str, str]:
    """{trained key prefix: checkpoint key prefix} of the decoder blocks, when the two differ."""
    from toolkit.layout import checkpoint_layers_name, decoder_layers_name

    base = model.get_base_model()
    name_or_path = getattr(base, "name_or_path", None) or ""
    try:
        checkpoint = checkpoint_layers_name(name_or_path)
    except Exception:  # an architecture this transformers cannot build: save the trained names only
        checkpoint = None
    trained = decoder_layers_name(base)
    if checkpoint is None or checkpoint == trained:
        return {}
    return {f"base_model.model.{trained}.": f"base_model.model.{checkpoint}."}


def read_adapter_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """An adapter's tensors, each once, under the names of the class it was trained in (aliases dropped)."""
    from safetensors import safe_open

    with safe_open(Path(adapter_dir) / ADAPTER_WEIGHTS, framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get(ALIASES_METADATA, "{}"))
        alias_prefixes = tuple(aliases.values())
        return {k: f.get_tensor(k) for k in f.keys() if not (alias_prefixes and k.startswith(alias_prefixes))}


def load_adapter(base_model, adapter_dir: Path, is_trainable: bool = False, allow_pickle: bool = False):
    """PeftModel.from_pretrained, plus: gates saved with the adapter train again when `is_trainable`.

    Plain peft already loads the gate values (see the module docstring); this only restores their
    requires_grad, which peft cannot know about. An adapter saved only as adapter_model.bin (pickle, which
    can run code when loaded) is refused unless `allow_pickle` (peft prefers the safetensors file when both exist).
    """
    from peft import PeftModel
    from safetensors import safe_open

    adapter_dir = Path(adapter_dir)
    pickled = None if allow_pickle else pickle_only_weights(adapter_dir)
    if pickled:
        raise ToolkitError(f"the adapter holds only pickle weights ({pickled})", where=str(adapter_dir),
                           hint=PICKLE_HINT)
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
    """Save base + adapter (+ gates) as one ordinary model in the base checkpoint's own layout (for a
    multimodal base: its class, vision tower included, with the merged text weights); the training model
    is left untouched."""
    out_dir = Path(out_dir)
    merged = copy.deepcopy(model).merge_and_unload()  # a copy: merging in place would end training
    full = _checkpoint_class_with(merged)
    (full if full is not None else merged).save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


def _checkpoint_class_with(merged):
    """The base checkpoint loaded in the class its config.json names, with `merged`'s text weights; None when
    that class is the one we trained."""
    import transformers

    from toolkit.layout import checkpoint_config, checkpoint_layers_name, decoder_layers_name

    raw = checkpoint_config(getattr(merged, "name_or_path", "") or "")
    cls = getattr(transformers, (raw or {}).get("architectures", [""])[0], None)
    if cls is None or isinstance(merged, cls):
        return None
    checkpoint, trained = checkpoint_layers_name(merged.name_or_path), decoder_layers_name(merged)
    full = cls.from_pretrained(merged.name_or_path, dtype=next(merged.parameters()).dtype)
    ckpt_root, trained_root = checkpoint.rsplit(".", 1)[0], trained.rsplit(".", 1)[0]  # model.language_model / model
    state = {(ckpt_root + k[len(trained_root):] if k.startswith(trained_root + ".") else k): v
             for k, v in merged.state_dict().items()}
    missing = set(state) - set(full.state_dict())
    if missing:
        raise ToolkitError(f"cannot place merged weights into {cls.__name__}: e.g. {sorted(missing)[:2]}",
                           key="lora.export_merged")
    full.load_state_dict(state, strict=False)
    return full
