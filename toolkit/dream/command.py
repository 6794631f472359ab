"""Building the dream loop from a recipe, one cycle with its journal entries, and `toolkit dream`."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from toolkit.util.background import Pending, join_step
from toolkit.dream.evaluators import build_evaluator
from toolkit.dream.loop import DreamLoop
from toolkit.dream.pool import DreamSource


def build_dream(recipe, tokenizer, write: bool = True) -> DreamLoop:
    """The recipe's dream loop and its (empty) dream source. `write`: this is the main process, which writes
    files, trains the classifier and alone holds the judge and teacher models (only it runs cycles; the other
    ranks take its results, see train.loop._dream_cycle)."""
    cfg, run_dir = recipe.dream, recipe.output_dir
    source = DreamSource(cfg, tokenizer, recipe.data.max_length, recipe.run.seed, run_dir, write=write)
    with main_process_first():  # the others load the classifier the main process has trained and written
        evaluator = build_evaluator(cfg.evaluator, run_dir, recipe.model, main=write)
    teacher = _teacher(recipe) if write else None
    return DreamLoop(cfg, evaluator, source, run_dir, recipe.run.seed, write=write, teacher=teacher)


@contextmanager
def main_process_first():
    """Under several processes, the main one runs the block first and the others after it (accelerate's
    barrier); in a single process, just the block."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        yield
        return
    from accelerate import PartialState

    with PartialState().main_process_first():
        yield


def _teacher(recipe):
    path = recipe.dream.on_failure.teacher
    if not path:
        return None
    from toolkit.weights import load_weights

    # a model dir, hub id, adapter dir or run dir
    return load_weights(path, options=recipe.model, key="dream.on_failure.teacher")


def run_cycle(dream: DreamLoop, model, tokenizer, step: int, progress: float, phase_temperature, journal) -> dict:
    """One cycle, journaled: a `dream` event per judged response and a `dream_cycle` summary."""
    summary, events = dream.cycle(model, tokenizer, step, progress, phase_temperature)
    for event in events:
        journal.event(step, "dream", "info" if event["passed"] else "warn", **event)
    journal.event(step, "dream_cycle", **summary)
    return summary


def cycle_in_background(dream: DreamLoop, model, tokenizer, step: int, max_steps: int, phase_temperature, journal,
                        background) -> tuple[dict | None, float | None]:
    """dream.async, on the main process after `step`: the cycle whose join step has come is applied, then the
    cycle due now starts in the background on a frozen copy of the weights (the order a synchronous run takes:
    each cycle's temperature and seeds see every earlier outcome). Returns (the applied cycle's summary or
    None, the seconds it ran in the background or None)."""
    summary, seconds, pending = None, None, dream.pending
    if pending is not None and pending.join <= step and pending.step < step:
        summary = apply_pending(dream, step, journal)  # waits for the worker if it is still running
        seconds = pending.seconds
    if dream.due(step):
        job = dream.plan(step, step / max_steps, phase_temperature)
        frozen, own_tokenizer = background.snapshot(model, tokenizer, step)
        dream.pending = Pending(job, join_step(step, dream.cfg.every, max_steps),
                                background.submit(dream.dream, job, frozen, own_tokenizer))
    return summary, seconds


def apply_pending(dream: DreamLoop, step: int, journal) -> dict:
    """dream.async: the cycle that ran in the background (waited for if still running) applied now, at its join
    `step`, and journaled there; `weights_step` is the step whose weights it dreamed on."""
    pending, dream.pending = dream.pending, None
    summary, events = dream.apply(pending.job, pending.result())
    for event in events:
        journal.event(step, "dream", "info" if event["passed"] else "warn", **event)
    summary = {**summary, "weights_step": pending.step}
    journal.event(step, "dream_cycle", **summary)
    return summary


def run_standalone(loaded, cycles: int, adapter: Path | None = None) -> dict:
    """`toolkit dream`: cycles with the recipe's model (and an adapter), no training; the examples
    land in RUN/dream/ and the journal, ready for a fine-tune to pick up."""
    import torch

    from toolkit.data.sources import source_texts
    from toolkit.journal import Journal
    from toolkit.model import load_model, load_tokenizer, resolve_model_path

    recipe = loaded.recipe
    run_dir = recipe.output_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.run.seed)
    base = resolve_model_path(recipe.model, run_dir / "base-model", lambda: source_texts(recipe.data), recipe.run.seed)
    tokenizer = load_tokenizer(base, recipe.model)
    model = load_model(base, recipe.model)
    if adapter is not None:
        from toolkit.lora import load_adapter

        model = load_adapter(model, adapter, allow_pickle=recipe.model.allow_pickle)
    model.eval()
    dream = build_dream(recipe, tokenizer)
    journal = Journal(run_dir / "journal.jsonl")
    journal.event(0, "dream_start", recipe=str(loaded.path), cycles=cycles, adapter=str(adapter) if adapter else None)
    summary = {}
    for n in range(cycles):
        summary = run_cycle(dream, model, tokenizer, n, n / cycles, None, journal)
    return {**summary, "examples": str(run_dir / "dream" / "examples.jsonl")}
