"""The behavior steps inside the training loop: dream cycles and monitor audits, inline or in the
background (`dream.async`, `monitor.async`), run on the main process with their results shared so every
rank's data and decisions stay identical."""

from __future__ import annotations

import json
import time

from toolkit.errors import ToolkitError


def dream_cycle(dream, model, tokenizer, step: int, max_steps: int, curriculum, journal, accelerator,
                 background=None, overhead=None) -> None:
    """Dream cycles on the main process; the others take its results, so every rank's dream source (and so
    every rank's batches) stays identical. With dream.async (`background`) a cycle runs beside training on a
    frozen copy of the weights and is applied at its join step (toolkit/util/background.py)."""
    from accelerate.utils import broadcast_object_list

    from toolkit.dream.command import cycle_in_background, run_cycle

    is_async = background is not None and dream.cfg.background
    if not (dream.due(step) or (is_async and step == max_steps)):
        return
    start, summary, seconds = time.perf_counter(), None, None
    if accelerator.is_main_process:
        phase_temperature = curriculum.phase(step).dream_temperature
        if is_async:
            summary, seconds = cycle_in_background(dream, model, tokenizer, step, max_steps, phase_temperature,
                                                   journal, background)
        else:
            summary = run_cycle(dream, model, tokenizer, step, step / max_steps, phase_temperature, journal)
    if accelerator.num_processes > 1:
        states = [dream.state_dict(), dream.source.state_dict(), summary] if accelerator.is_main_process else [None] * 3
        states = broadcast_object_list(states)
        if not accelerator.is_main_process:
            dream.load_state_dict(states[0])
            dream.source.load_state_dict(states[1])
        summary = states[2]
    if summary is not None:  # an async run's first due step only starts a cycle
        curriculum.note_failure_rate(dream.policy.failure_rate())  # drives adaptive learning rates
        accelerator.log({"dream/temperature": summary["temperature"], "dream/pool": summary["pool"],
                         "dream/pass_rate": summary["passed"] / max(summary["responses"], 1)}, step=step)
    if overhead is not None:
        overhead.record(step, "dream", time.perf_counter() - start, background=seconds)


def watch(monitor, model, tokenizer, step: int, max_steps: int, loss: float, grad_norm: float, source: str,
           curriculum, journal, accelerator, background=None, overhead=None) -> str | None:
    """The understanding module after a step: spikes, and every audit_every steps a sample audit (on the
    main process, its findings shared so every rank penalizes and pauses alike; with monitor.async it runs
    beside training and its findings act at its join step). Returns a pause reason."""
    from accelerate.utils import broadcast_object_list

    findings = monitor.after_step(step, loss, grad_norm, source)
    is_async = background is not None and monitor.cfg.background
    if monitor.due(step) or (is_async and step == max_steps):
        start, audit = time.perf_counter(), None
        if accelerator.is_main_process:
            audit = (monitor.audit_in_background(model, tokenizer, step, max_steps, background) if is_async
                     else (*monitor.audit(model, tokenizer, step), step, None))
        if accelerator.num_processes > 1:
            audit = broadcast_object_list([audit])[0]
        if audit is not None:
            findings += audit_findings(monitor, audit, step, curriculum, journal)
        if overhead is not None:
            overhead.record(step, "audit", time.perf_counter() - start, background=audit[3] if audit else None)
    journal_findings(findings, step, journal, accelerator)
    return monitor.pause_reason(findings)


def journal_findings(findings: list, step: int, journal, accelerator) -> None:
    for f in findings:
        data = {k: v for k, v in f.data.items() if k not in ("step", "kind", "severity")}  # the event has those
        journal.event(step, f.detector, f.severity, **{**data, "value": f.value, "message": f.message})
        if f.severity in ("high", "critical"):
            accelerator.print(f"step {step}: {f.severity} {f.detector}: {f.message}")


def audit_findings(monitor, audit: tuple, step: int, curriculum, journal) -> list:
    """An audit's samples journaled and its repetition penalized; its findings. `audit`: (samples, findings,
    the step whose weights it sampled, background seconds or None)."""
    samples, audit_findings, weights_step, _ = audit
    journal.event(step, "audit", samples=samples, **({"weights_step": weights_step} if weights_step != step else {}))
    penalized = monitor.penalize(curriculum, audit_findings)
    if penalized:
        journal.event(step, "penalize", "warn", repetition_by_source=penalized)
    return audit_findings


def start_background(dream, monitor, model, tokenizer, engine: str, is_main: bool):
    """The worker for dream.async / monitor.async (None when neither is on), with the work a checkpoint saved
    unfinished started again from its weights (the ones just restored) on the main process, which alone runs
    cycles and audits."""
    parts = [p for p in (dream, monitor) if p is not None and p.cfg.background]
    if not parts:
        return None
    if engine != "replicated":
        raise ToolkitError("dream.async and monitor.async need unsharded weights (one process or DDP)",
                           key="dream.async" if dream in parts else "monitor.async",
                           hint=f"turn it off under {engine}")
    from toolkit.util.background import Background

    background = Background()
    for part, run in ((dream, getattr(dream, "dream", None)), (monitor, getattr(monitor, "background_audit", None))):
        if is_main and part is not None and part.pending is not None and part.pending.future is None:
            part.pending.resubmit(background, run, model, tokenizer)
    return background


def finish_background(dream, monitor, step: int, curriculum, journal, accelerator, background, overhead) -> None:
    """The end of an async run: the cycle and audit still in the background applied and journaled."""
    if background is None or not accelerator.is_main_process:
        return
    from toolkit.dream.command import apply_pending

    if dream is not None and dream.pending is not None:
        pending = dream.pending
        with overhead.timed("dream"):
            apply_pending(dream, step, journal)
        overhead.background["dream"] += pending.seconds
    if monitor is not None and monitor.pending is not None:
        pending, monitor.pending = monitor.pending, None
        with overhead.timed("audit"):
            samples, findings = monitor.audit_from_result(pending.result())
            findings = audit_findings(monitor, (samples, findings, pending.step, None), step, curriculum, journal)
            journal_findings(findings, step, journal, accelerator)  # too late to pause: the run is done
        overhead.background["audit"] += pending.seconds
    background.close()


def settle_background(step: int, components: dict, before: dict | None) -> dict | None:
    """A checkpoint at `step` waits for background work started before it; a failed step's saved state
    (serialized at the step's start, before that work ended) gets the work's result."""
    parts = {n: p for n, p in components.items() if n in ("dream", "monitor") and getattr(p, "pending", None)}
    for part in parts.values():
        part.pending.settle(step)
    if before is None or "components" not in before or not parts:
        return before
    states = json.loads(before["components"])
    for name, part in parts.items():
        states[name]["pending"] = part.pending.state_dict()
    return {**before, "components": json.dumps(states)}
