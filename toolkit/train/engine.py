"""The distributed engine accelerate runs the loop on: one process, DDP, FSDP2 or DeepSpeed.

The loop stays engine-agnostic; what differs between engines lives here:
  - FSDP on CPU processes: accelerate enables FSDP only for accelerator devices (on gloo/CPU ranks it keeps
    MULTI_CPU and silently drops the plugin, i.e. trains with DDP). torch's `fully_shard` runs on gloo, so
    when the launcher asked for FSDP (ACCELERATE_USE_FSDP) we hand accelerate the plugin it would have built
    and its own FSDP2 code path (prepare, no_sync, clipping, state dicts) does the rest, as on GPUs.
  - DeepSpeed steps, clips and zeroes inside `accelerator.backward` of the last micro-batch: the loop marks
    that micro-batch (`accelerator.sync_gradients`) and the recipe's batch and clipping fill the config.
  - sharded checkpoints: torch distributed checkpoint (FSDP) or the DeepSpeed engine's own, written by every
    rank; the full trainable weights are gathered for the Hugging Face export.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from toolkit.errors import ToolkitError

DEEPSPEED_TAG = "zero"  # the engine's checkpoint sub-directory name


def make_accelerator(**kwargs):
    """`Accelerator(**kwargs)`, with FSDP kept on CPU ranks when the launcher asked for it."""
    from accelerate import Accelerator
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    accelerator = Accelerator(**kwargs)
    state = accelerator.state
    wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if wants_fsdp and state.distributed_type == DistributedType.MULTI_CPU:
        from torch.distributed.fsdp import CPUOffloadPolicy  # here: the import costs ~0.6 s at every start

        plugin = FullyShardedDataParallelPlugin()  # reads the launcher's FSDP_* settings
        if isinstance(plugin.cpu_offload, CPUOffloadPolicy):  # torch would fail looking for a GPU to copy to
            raise ToolkitError("fsdp_offload_params offloads from GPUs; these processes run on CPUs",
                               where="accelerate config (fsdp_config)", hint="set fsdp_offload_params: false")
        state.fsdp_plugin = plugin
        state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as AcceleratorState itself does
    if state.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise ToolkitError("FSDP version 1 is not supported", where="accelerate config",
                           hint="set fsdp_config.fsdp_version: 2 (recipes/accelerate/fsdp2.yaml)")
    return accelerator


def kind(accelerator) -> str:
    """'fsdp2', 'deepspeed' or 'replicated' (one process or DDP: every rank holds every weight)."""
    from accelerate.utils import DistributedType

    if accelerator.is_fsdp2:
        return "fsdp2"
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return "deepspeed"
    return "replicated"


def check_recipe(recipe, engine: str, finetune: bool) -> None:
    """Dream cycles and monitor audits generate on the main process alone; with sharded weights every rank
    takes part in each forward, so the others would wait forever."""
    if engine == "replicated":
        return
    if finetune and recipe.dream.enabled:
        raise ToolkitError(f"dream cycles cannot run on a sharded model ({engine})", key="dream.enabled",
                           hint="set dream.enabled: false, or train with DDP (accelerate launch --multi_gpu)")
    if finetune and recipe.lora.enabled and recipe.lora.export_merged:
        raise ToolkitError(f"a merged copy cannot be exported from a sharded model ({engine})",
                           key="lora.export_merged", hint="set lora.export_merged: false and merge RUN/adapter after the run")
    audit_every = recipe.monitor.audit_every if recipe.monitor.enabled else 0
    if audit_every and recipe.train.max_steps >= audit_every:
        raise ToolkitError(f"monitor audits cannot run on a sharded model ({engine})", key="monitor.audit_every",
                           hint="set monitor.audit_every: 0 (spike detectors keep running), or train with DDP")


def name_fsdp_blocks(accelerator, model) -> None:
    """accelerate wraps each class in the model's `_no_split_modules` and fails on one the model lacks (the
    Qwen3.5 text model lists the vision tower's block): name the classes present, unless the config did."""
    plugin = accelerator.state.fsdp_plugin if accelerator.is_fsdp2 else None
    if plugin is None or plugin.transformer_cls_names_to_wrap:
        return
    present = {type(module).__name__ for module in model.modules()}
    listed = getattr(model, "_no_split_modules", None) or []
    plugin.transformer_cls_names_to_wrap = [name for name in listed if name in present]


def configure_deepspeed(accelerator, cfg) -> None:
    """Fill the DeepSpeed config's "auto" fields from the recipe: no dataloader is prepared, the loop feeds
    `batch_size` rows per micro-batch and marks the last micro-batch itself, and DeepSpeed clips internally."""
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    if config.get("gradient_accumulation_steps", "auto") not in ("auto", 1):  # DeepSpeed would rescale the loss
        raise ToolkitError("DeepSpeed gradient_accumulation_steps must be 1: the toolkit accumulates "
                           "train.grad_accum micro-batches itself", where="accelerate config (deepspeed_config)",
                           hint="set gradient_accumulation_steps: 1 and train.grad_accum in the recipe")
    settings = {"train_micro_batch_size_per_gpu": cfg.batch_size, "gradient_accumulation_steps": 1,
                "gradient_clipping": cfg.max_grad_norm or 0.0}
    for key, value in settings.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
    config["train_batch_size"] = config["train_micro_batch_size_per_gpu"] * accelerator.num_processes
    # the optimizer is the recipe's torch AdamW; with offload_optimizer_device: cpu DeepSpeed would refuse it
    config.setdefault("zero_force_ds_cpu_optimizer", False)


def grad_norm(accelerator, model, max_norm: float | None) -> float:
    """Clip (DeepSpeed already did, in its step) and return the global gradient norm."""
    import math

    params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
    norm = accelerator.clip_grad_norm_(params, max_norm if max_norm else math.inf)
    if norm is None:  # DeepSpeed before its first step
        return float("nan")
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
        norm = norm.full_tensor()
    return float(norm)


# ---------------------------------------------------------------- weights


def full_weights(accelerator, train_model, model, trainable_only: bool) -> dict[str, torch.Tensor]:
    """The weights of a sharded model gathered whole on the CPU of the main process (the other ranks get an
    empty dict), named as in `model.state_dict()`: the trainable ones (LoRA), or all (a full fine-tune).
    Collective: every rank calls it."""
    if kind(accelerator) == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
        state = get_model_state_dict(train_model, options=options)
    elif trainable_only:  # DeepSpeed, LoRA: gather the adapter's partitions only, not the frozen base
        import deepspeed

        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters([p for _, p in trainable]):
            main = accelerator.is_main_process
            return {n: p.detach().cpu().clone() for n, p in trainable} if main else {}
    else:
        state = accelerator.get_state_dict(train_model)  # ZeRO-3: gathered on the main process
    return _trainable(state, model) if trainable_only else _without_tied_aliases(state, model)


def _without_tied_aliases(state: dict, model) -> dict:
    """Drop the second name of a tied weight (lm_head.weight = embed_tokens.weight): gathered, the two are
    separate copies that save_pretrained would write twice, where an unsharded model's save writes one."""
    first, aliases = {}, set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(param), name) != name:
            aliases.add(name)
    return {k: v for k, v in state.items() if k not in aliases}


def _trainable(state: dict, model) -> dict:
    """Only the trainable entries: `ignore_frozen_params` keeps a frozen weight's tied alias (lm_head.weight of
    tied embeddings), a vocabulary-sized matrix a LoRA checkpoint has no use for."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k in trainable}


# ---------------------------------------------------------------- sharded checkpoints


def save_sharded(directory: Path, accelerator, train_model, optimizer) -> None:
    """Every rank writes its shard of the trainable weights and the optimizer state into `directory`."""
    if kind(accelerator) == "deepspeed":
        train_model.save_checkpoint(str(directory), tag=DEEPSPEED_TAG, exclude_frozen_parameters=True)
        return
    import torch.distributed.checkpoint as dcp

    dcp.save(_dcp_state(train_model, optimizer), checkpoint_id=str(directory))


def load_sharded(directory: Path, accelerator, train_model, optimizer) -> None:
    """Inverse of save_sharded, on every rank, after `accelerator.prepare`."""
    if kind(accelerator) == "deepspeed":
        loaded, _ = train_model.load_checkpoint(str(directory), tag=DEEPSPEED_TAG, load_module_strict=False,
                                                load_optimizer_states=True, load_lr_scheduler_states=False)
        if loaded is None:
            raise ToolkitError("the DeepSpeed checkpoint did not load", where=str(directory))
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state = _dcp_state(train_model, optimizer)
    dcp.load(state, checkpoint_id=str(directory))
    set_state_dict(train_model, _torch_optimizer(optimizer), model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"], options=StateDictOptions(strict=False))


def _dcp_state(train_model, optimizer) -> dict:
    """The sharded (DTensor) state dicts of the trainable weights and of the optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_state, optim_state = get_state_dict(train_model, _torch_optimizer(optimizer),
                                              options=StateDictOptions(ignore_frozen_params=True))
    return {"model": _trainable(model_state, train_model), "optimizer": optim_state}


def _torch_optimizer(optimizer):
    """The torch optimizer inside accelerate's wrapper (torch's state-dict helpers match it to the model)."""
    return getattr(optimizer, "optimizer", optimizer)
