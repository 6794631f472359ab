"""What the loop saves and restores: where to resume from, every component's state, the checkpoint itself
(through toolkit/train/checkpoint.py and the engine's sharded form), and the final weights in Hugging Face
form."""

from __future__ import annotations

import json
from pathlib import Path

from toolkit import lora as lora_lib
from toolkit.errors import ToolkitError
from toolkit.journal import log_sizes
from toolkit.train import checkpoint as ckpt
from toolkit.train import engine as engine_lib
from toolkit.util.rng import global_rng_state, set_global_rng_state


def resume_point(run_dir: Path, resume: bool, processes: int, engine: str) -> tuple[Path | None, list[ckpt.Damage]]:
    """The checkpoint to continue from and the damaged newer ones skipped for it."""
    if resume:
        return ckpt.resume_checkpoint(run_dir, processes, engine)
    if ckpt.list_checkpoints(run_dir):
        raise ToolkitError(
            "run directory already holds checkpoints", key="run.output_dir",
            hint="pass --resume to continue it, or choose another run.output_dir",
        )
    return None, []


def component_states(components: dict) -> dict:
    states = {name: part.state_dict() for name, part in components.items() if name != "sources"}
    states["sources"] = {s.name: s.state_dict() for s in components["sources"]}
    return states


def state_before_step(run_dir: Path, components: dict, is_main: bool) -> dict:
    """What a checkpoint of a step that fails must hold instead of the live state: the step has already
    drawn its batch (source cursor, bandit) and dropout masks. Serialized now, as a checkpoint would be."""
    if not is_main:  # the others only contribute their RNG state to a checkpoint
        return {"rng": global_rng_state()}
    return {"rng": global_rng_state(), "components": json.dumps(component_states(components)),
            "logs": log_sizes(run_dir)}


def save_checkpoint(run_dir, step, model, tokenizer, optimizer, components, use_lora, rngs, cfg,
                     before: dict | None = None, engine: str = "replicated", weights: dict | None = None) -> Path:
    """`weights`: under a sharded engine, whose shards (and optimizer) the ranks already wrote, the gathered
    weights for the Hugging Face export."""
    sharded = engine != "replicated"
    training_state = {"rng": rngs} if sharded else {"optimizer": optimizer.state_dict(), "rng": rngs}
    states = json.loads(before["components"]) if before else component_states(components)
    extra = {"engine": engine} if sharded else {}
    return ckpt.save_checkpoint(
        run_dir, step, None if sharded else lora_lib.trainable_state_dict(model), training_state,
        {"components": states, "processes": len(rngs), **extra},
        lambda directory: export_weights(directory, model, tokenizer, use_lora, weights), cfg.keep_last,
        log_sizes=before["logs"] if before else None, started=sharded,
    )


def weights_dir(use_lora: bool) -> str:
    return "adapter" if use_lora else "model"


def export_weights(directory: Path, model, tokenizer, use_lora: bool, weights: dict | None = None) -> Path:
    """The weights in Hugging Face form, with the tokenizer: `adapter/` (PEFT) or `model/`. `weights`: the
    whole tensors gathered from a sharded model (its own parameters are shards)."""
    out = directory / weights_dir(use_lora)
    if use_lora:
        lora_lib.save_adapter(model, out, weights)
    else:
        model.save_pretrained(out, safe_serialization=True, state_dict=weights)
    tokenizer.save_pretrained(out)
    return out


def restore(path: Path, model, optimizer, components, accelerator, train_model) -> int:
    """Weights, optimizer, RNGs and every component's state; after `accelerator.prepare` (shards load in place)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    trainable, training_state, state = ckpt.load_checkpoint(path)
    if trainable is None:  # a sharded checkpoint: every rank loads its shard of weights and optimizer
        engine_lib.load_sharded(Path(path) / ckpt.SHARDED, accelerator, train_model, optimizer)
    else:
        lora_lib.load_trainable_state_dict(model, trainable)
        optimizer.load_state_dict(training_state["optimizer"])
    rngs = training_state["rng"]
    if len(rngs) != world:  # checkpoints that predate state.json's "processes"; every rank raises alike
        raise ToolkitError(f"the checkpoint was written by {len(rngs)} process(es), this run has {world}; "
                           "resume with as many", where=str(path))
    set_global_rng_state(rngs[rank])
    saved = state["components"]
    for source in components["sources"]:
        if source.name in saved["sources"]:
            source.load_state_dict(saved["sources"][source.name])
    for name, part in components.items():
        if name != "sources" and name in saved:
            part.load_state_dict(saved[name])
    return int(state["step"])


def export_final(run_dir: Path, model, tokenizer, use_lora: bool, merged: bool, is_main: bool,
                  weights: dict | None = None) -> dict:
    outputs = {weights_dir(use_lora): str(run_dir / weights_dir(use_lora))}
    if merged and use_lora:
        outputs["merged"] = str(run_dir / "merged")
    if is_main:
        export_weights(run_dir, model, tokenizer, use_lora, weights)
        if merged and use_lora:
            lora_lib.export_merged(model, tokenizer, run_dir / "merged")
    return outputs
