"""The one training loop, for `toolkit pretrain` and `toolkit finetune`. Read it top to bottom.

Every step draws one global batch from one source (the curriculum picks which), splits it into
micro-batches of similar length, gives each process its share, and normalizes the loss by the
global count of target tokens, so 1 process × accumulation and N processes give the same update.
"""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

import torch

from toolkit import lora as lora_lib
from toolkit.chat import template_description
from toolkit.curriculum import Curriculum, CurriculumPlan
from toolkit.data.batching import collate, micro_batches, padding_waste, resolve_batching, to_device
from toolkit.data.sources import load_sources, source_texts
from toolkit.errors import ToolkitError
from toolkit.journal import Journal, JsonlWriter, write_atomic
from toolkit.loss import token_loss_sum
from toolkit.model import load_model, load_tokenizer, resolve_model_path
from toolkit.monitor.core import EXIT_PAUSED, Monitor
from toolkit.monitor.overhead import Overhead
from toolkit.recipe import LoadedRecipe, dump_recipe
from toolkit.train import checkpoint as ckpt
from toolkit.train import engine as engine_lib
from toolkit.train.behavior import dream_cycle, finish_background, settle_background, start_background, watch
from toolkit.train.guard import EXIT_DIVERGED, DivergenceGuard
from toolkit.train.progress import Progress
from toolkit.train.runinfo import environment_info, flat_hparams
from toolkit.train.state import export_final, restore, resume_point, save_checkpoint, state_before_step
from toolkit.train.validation import examples_loss, target_count
from toolkit.util.rng import global_rng_state

EXIT_SIGNAL_BASE = 128  # exit code 128 + signal number, as shells report


def train(loaded: LoadedRecipe, command: str, resume: bool = False, stop_at: int | None = None,
          after_training: dict | None = None) -> int:
    """Run a recipe; returns the process exit code (0 done or stopped at `stop_at`, 3 guard stop,
    128+N on signal N). `after_training`: {part: step(recipe, base_path, run_dir, journal) -> outputs}, run on
    the main process of a finished fine-tune before `run_end` (toolkit/after_training.py)."""
    from accelerate.utils import gather_object, set_seed

    recipe = loaded.recipe
    cfg = recipe.train
    run_dir = recipe.output_dir
    use_lora = command == "finetune" and recipe.lora.enabled
    _check_trackers(recipe.logging.trackers)
    accelerator = engine_lib.make_accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=_mixed_precision(cfg.precision),
        log_with=recipe.logging.trackers or None,
        project_dir=str(run_dir),
    )
    engine = engine_lib.kind(accelerator)  # replicated (1 process, DDP), fsdp2 or deepspeed
    engine_lib.check_recipe(recipe, engine, finetune=command == "finetune")
    if engine == "deepspeed":
        engine_lib.configure_deepspeed(accelerator, cfg)
    is_main = accelerator.is_main_process
    set_seed(recipe.run.seed)

    # every process checks the checkpoint (files, process count, engine) before any collective call
    resume_from, damaged = resume_point(run_dir, resume, accelerator.num_processes, engine)
    journal = Journal(run_dir / "journal.jsonl", enabled=is_main)
    metrics = JsonlWriter(run_dir / "metrics.jsonl", enabled=is_main)
    overhead = Overhead(metrics)  # seconds in dream cycles, audits, validation, analysis: metrics rows and run_end
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)

    # ---- model, tokenizer, data
    with accelerator.main_process_first():
        base_path = resolve_model_path(
            recipe.model, run_dir / "base-model", lambda: source_texts(recipe.data), recipe.run.seed
        )
    tokenizer = load_tokenizer(base_path, recipe.model)
    # LoRA on a bf16 GPU run keeps the frozen base in bf16 (peft keeps the adapter in fp32)
    weights_dtype = torch.bfloat16 if use_lora and accelerator.mixed_precision == "bf16" else torch.float32
    model = load_model(base_path, recipe.model, dtype=weights_dtype)
    if use_lora:
        model = lora_lib.attach_lora(model, recipe.lora)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with accelerator.main_process_first():  # rank 0 tokenizes into the cache; the others then map it
        sources = load_sources(recipe.data, tokenizer, recipe.run.seed, text_windows=command == "pretrain")
    if not sources:
        raise ToolkitError("the recipe names no data sources", key="data.sources")
    dream = None
    if recipe.dream.enabled and command == "finetune":
        from toolkit.dream.command import build_dream

        dream = build_dream(recipe, tokenizer, write=is_main)
        sources.append(dream.source)  # empty until failures land; the curriculum skips it till then
    curriculum = Curriculum(CurriculumPlan.from_recipe(recipe), sources, recipe.run.seed)
    guard = DivergenceGuard(recipe.regime, model.config.vocab_size)

    # ---- optimizer; restore everything from the checkpoint before the first step
    if engine == "replicated":  # FSDP2 and DeepSpeed move each rank's shard to its device: no whole copy there
        model.to(accelerator.device)
    optimizer = _adamw(model, cfg)
    model_class = type(model.get_base_model() if use_lora else model).__name__
    # together: FSDP2 and DeepSpeed shard the model and re-bind the optimizer to the shards; DDP wraps the model
    engine_lib.name_fsdp_blocks(accelerator, model)
    train_model, optimizer = accelerator.prepare(model, optimizer)
    batching = resolve_batching(recipe.data.batching, model)  # on the device: auto packs where it is exact
    monitor = Monitor(recipe.monitor, recipe.run.seed) if recipe.monitor.enabled else None
    components = {"sources": sources, "curriculum": curriculum, "guard": guard}
    if dream is not None:
        components["dream"] = dream
    if monitor is not None:
        components["monitor"] = monitor
    start_step = 0
    if resume_from is not None:
        start_step = restore(resume_from, model, optimizer, components, accelerator, train_model)
        if is_main:  # restored, so the resume holds: now the killed run's rows past the checkpoint go
            ckpt.rewind_logs(run_dir, resume_from)
        for damage in damaged:
            journal.event(start_step, "checkpoint_skipped", "warn", checkpoint=str(damage.checkpoint),
                          file=str(damage.file), reason=damage.reason)
        journal.event(start_step, "resume", checkpoint=str(resume_from), recipe=str(loaded.path),
                      processes=accelerator.num_processes)
        if curriculum.pivot:  # resumed under a changed curriculum: the polish pivot
            journal.event(start_step, "curriculum_pivot", changes=curriculum.pivot)
    else:
        journal.event(0, "run_start", command=command, recipe=str(loaded.path), output_dir=str(run_dir),
                      processes=accelerator.num_processes, device=str(accelerator.device),
                      model_class=model_class, engine=engine,
                      chat_template=template_description(tokenizer), batching=batching)
    for note in curriculum.plan.notes:  # recipe settings the curriculum set aside (dream caps, empty phases)
        journal.event(start_step, "recipe_note", **note)
    if is_main:  # only now: a rejected resume must leave the run's recipe (read by serve, eval) as it was
        write_atomic(run_dir / "resolved_recipe.yaml", dump_recipe(recipe))
        write_atomic(run_dir / "environment.json", environment_info())
    journal.event(start_step, "data", max_length=recipe.data.max_length, too_long=recipe.data.too_long,
                  sources={s.name: s.report() for s in sources})
    if cfg.divergence_guard and not any(s.val for s in sources):
        journal.event(start_step, "guard_off", "warn", reason="no validation examples (data.val_fraction is 0)")
    world, rank = accelerator.num_processes, accelerator.process_index
    global_batch = cfg.batch_size * cfg.grad_accum * world
    if is_main:
        accelerator.init_trackers(recipe.logging.project or recipe.run.name, config=flat_hparams(loaded.resolved))
    saved = {"step": -1, "path": None}

    def save(step: int, before: dict | None = None) -> Path | None:
        """`before`: the state from before a failed step (`state_before_step`), saved in place of the live one."""
        if saved["step"] == step:  # e.g. a signal right after a scheduled checkpoint
            return saved["path"]
        before = settle_background(step, components, before)  # dream.async / monitor.async work in flight
        rngs = gather_object([before["rng"] if before else global_rng_state()])  # every rank's: dropout continues exactly
        weights = None
        if engine != "replicated":  # every rank writes its shard, then the whole weights are gathered for the export
            if is_main:
                ckpt.start_checkpoint(run_dir, step)
            accelerator.wait_for_everyone()
            engine_lib.save_sharded(ckpt.temp_dir(run_dir, step) / ckpt.SHARDED, accelerator, train_model, optimizer)
            weights = engine_lib.full_weights(accelerator, train_model, model, trainable_only=use_lora)
        path = None
        if is_main:
            path = save_checkpoint(run_dir, step, model, tokenizer, optimizer, components, use_lora, rngs, cfg,
                                    before, engine, weights)
            journal.event(step, "checkpoint", path=str(path))
        accelerator.wait_for_everyone()
        saved.update(step=step, path=path)
        return path

    def stop(step: int, reason: str, code: int, before: dict | None = None) -> int:
        progress.close()
        path = save(step, before)
        kind = {0: "planned_stop", EXIT_DIVERGED: "guard_stop", EXIT_PAUSED: "pause"}.get(code, "signal_stop")
        journal.event(step, kind, {0: "info", EXIT_PAUSED: "high"}.get(code, "critical"),
                      reason=reason, checkpoint=str(path), resume=f"{loaded.command_line(command)} --resume")
        accelerator.print(f"stopped at step {step}: {reason}; checkpoint {path}")
        accelerator.end_training()
        return code

    def evaluate(step: int) -> str | None:
        start = time.perf_counter()
        val = _validation_loss(model, sources, cfg.batch_size, batching, tokenizer.pad_token_id)
        if val is None:
            return None
        overhead.add("eval", seconds := time.perf_counter() - start)
        metrics.write({"step": step, "val_loss": val["all"], "val_loss_by_source": val["by_source"],
                       "eval_seconds": round(seconds, 4)})
        accelerator.log({"val/loss": val["all"]}, step=step)
        reason = guard.check_val_loss(val["all"]) if cfg.divergence_guard else None
        return _agreed(accelerator, reason)

    signals = _SignalFlag()
    progress = Progress(cfg.max_steps, start_step, enabled=is_main and recipe.logging.progress)
    if start_step == 0 and (reason := evaluate(0)):
        return stop(0, reason, EXIT_DIVERGED)

    background = start_background(dream, monitor, model, tokenizer, engine, is_main)  # dream/monitor.async

    # ---- the loop
    train_model.train()
    for step in range(start_step, cfg.max_steps):
        t0 = time.perf_counter()
        before = state_before_step(run_dir, components, is_main) if cfg.divergence_guard else None
        lr = curriculum.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        source = curriculum.pick(step)
        if curriculum.transition:
            journal.event(step, "curriculum", **curriculum.transition)
        examples = source.next_examples(global_batch)
        micro = micro_batches(examples, cfg.batch_size, batching)
        batches = micro[rank::world]
        target_tokens = sum(target_count(e.labels) for e in examples)
        local_loss = torch.zeros((), device=accelerator.device)
        for i, batch_examples in enumerate(batches):
            batch = to_device(collate(batch_examples, tokenizer.pad_token_id, batching), accelerator.device)
            batch["use_cache"] = False  # no GDN/KV cache in training; activation checkpointing recomputes without one
            last = i == len(batches) - 1
            accelerator.sync_gradients = last  # DeepSpeed steps, clips and zeroes in the last backward only
            sync = contextlib.nullcontext() if last else accelerator.no_sync(train_model)
            with sync, accelerator.autocast():
                loss_sum = token_loss_sum(train_model, batch)
                accelerator.backward(loss_sum * world / max(target_tokens, 1))  # DDP averages over ranks
            local_loss += loss_sum.detach()
        loss = (accelerator.reduce(local_loss, "sum") / max(target_tokens, 1)).item()
        done = step + 1

        if cfg.divergence_guard and (reason := guard.check_train_loss(loss)):  # same on every rank: reduced loss
            optimizer.zero_grad(set_to_none=True)  # keep the last finite weights
            return stop(step, reason, EXIT_DIVERGED, before)  # --resume replays this step exactly
        grad_norm = engine_lib.grad_norm(accelerator, model, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        reward = curriculum.observe(source, loss, examples, step)

        tokens = sum(len(e) for e in examples)
        seconds = time.perf_counter() - t0
        row = {"step": done, "loss": loss, "lr": lr, "grad_norm": grad_norm, "source": source.name,
               "phase": curriculum.phase(step).name, "reward": reward, "tokens": tokens,
               "tokens_per_s": tokens / seconds, "padding_waste": padding_waste(micro, batching), "time": time.time()}
        metrics.write(row)
        accelerator.log({"train/loss": loss, "train/lr": row["lr"], "train/grad_norm": grad_norm,
                         "train/tokens_per_s": row["tokens_per_s"]}, step=done)
        progress.update(done, loss=loss, tokens_per_s=row["tokens_per_s"], lr=row["lr"])
        if dream is not None:
            dream_cycle(dream, model, tokenizer, done, cfg.max_steps, curriculum, journal, accelerator, background,
                         overhead)
        if monitor is not None and (reason := watch(monitor, model, tokenizer, done, cfg.max_steps, loss, grad_norm,
                                                     source.name, curriculum, journal, accelerator, background,
                                                     overhead)):
            return stop(done, reason, EXIT_PAUSED)

        if done % cfg.eval_every == 0 or done == cfg.max_steps:
            if reason := evaluate(done):
                return stop(done, reason, EXIT_DIVERGED)
        if done % cfg.checkpoint_every == 0 or done == cfg.max_steps:
            save(done)
        if stop_at is not None and done >= stop_at:
            return stop(done, f"--stop-at {stop_at}", 0)
        if signum := signals.received(accelerator):
            return stop(done, f"received {signal.Signals(signum).name}", EXIT_SIGNAL_BASE + signum)

    progress.close()
    weights = None if engine == "replicated" else engine_lib.full_weights(accelerator, train_model, model, use_lora)
    outputs = export_final(run_dir, model, tokenizer, use_lora, recipe.lora.export_merged, is_main, weights)
    for part, run_step in (after_training or {}).items() if command == "finetune" and is_main else ():
        with overhead.timed(part):  # head-diff, eval report: handed in by the CLI (toolkit/after_training.py)
            outputs.update(run_step(recipe, base_path, run_dir, journal))
    finish_background(dream, monitor, cfg.max_steps, curriculum, journal, accelerator, background, overhead)
    journal.event(cfg.max_steps, "run_end", outputs=outputs, curriculum=curriculum.summary(),
                  overhead=overhead.summary())
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if is_main:
        _print_outputs(accelerator, run_dir, outputs)
        accelerator.print(overhead.line())
    return 0


# ---------------------------------------------------------------- pieces of a step


def _adamw(model, cfg) -> torch.optim.AdamW:
    """AdamW; no weight decay on 1-D parameters (norms, biases, GDN gates)."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for _, p in trainable if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def _validation_loss(model, sources, batch_size: int, batching: str, pad_id: int) -> dict | None:
    """Each source's loss on its validation examples, and all of them token-weighted; None without any."""
    totals, by_source = [0.0, 0], {}
    for source in sources:
        loss_sum, count = examples_loss(model, source.val, batch_size, batching, pad_id)
        if count:
            by_source[source.name] = loss_sum / count
            totals[0] += loss_sum
            totals[1] += count
    if not totals[1]:
        return None
    return {"all": totals[0] / totals[1], "by_source": by_source}


def _check_trackers(trackers: list[str]) -> None:
    import importlib.util

    for name in trackers:
        if importlib.util.find_spec(name) is None:
            raise ToolkitError(f"tracker '{name}' is not installed", key="logging.trackers",
                               hint=f"pip install {name}, or remove it from logging.trackers")


def _agreed(accelerator, reason: str | None) -> str | None:
    """Stop on every rank if any rank's guard says stop (GPU numerics may differ between ranks)."""
    if accelerator.num_processes == 1:
        return reason
    flag = accelerator.reduce(torch.tensor([1 if reason else 0], device=accelerator.device), "max").item()
    return reason or ("INV-TRAIN-005: another process's guard stopped the run" if flag else None)


def _mixed_precision(precision: str) -> str:
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        return "bf16"
    return "no"  # fp32: CPUs, and GPUs without bf16 (never fp16: GDN layers give NaN)


class _SignalFlag:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the end of the step and exits."""

    def __init__(self):
        self.signum = 0
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signum = signum

    def received(self, accelerator) -> int:
        if accelerator.num_processes == 1:
            return self.signum
        flag = torch.tensor([self.signum], device=accelerator.device)
        return int(accelerator.reduce(flag, "max").item())  # every rank stops at the same step


# ---------------------------------------------------------------- checkpoints and outputs


def _print_outputs(accelerator, run_dir: Path, outputs: dict) -> None:
    lines = [f"run directory   {run_dir}"]
    lines += [f"{name:<15} {path}" for name, path in outputs.items()]
    lines += [
        f"metrics         {run_dir / 'metrics.jsonl'}",
        f"journal         {run_dir / 'journal.jsonl'}",
        f"checkpoints     {ckpt.checkpoints_dir(run_dir)}",
        f"tensorboard     tensorboard --logdir {run_dir}",
    ]
    accelerator.print("\n".join(lines))
