"""`toolkit curriculum explain` and `toolkit curriculum plot`: the curriculum read from the recipe alone.

No data is read and no model is loaded; every answer comes from `CurriculumPlan`, the same code the
training loop asks, and names the recipe value (with its file:line) that decides it.
"""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.curriculum.plan import CurriculumPlan
from toolkit.errors import ToolkitError, did_you_mean
from toolkit.util.jsonl import read_jsonl


def explain(loaded, step: int, source: str | None = None) -> dict:
    recipe = loaded.recipe
    plan = CurriculumPlan.from_recipe(recipe)
    if not 0 <= step < plan.max_steps:
        raise ToolkitError(f"step {step} is outside the run (steps 0-{plan.max_steps - 1})", key="train.max_steps")
    phase = plan.phase_at(step)
    tiers, tiers_key = plan.open_tiers(step)
    gates = {name: plan.gate(name, step) for name in plan.names}
    eligible = [n for n, g in gates.items() if g.allowed]
    cfg = recipe.curriculum
    out = {
        "step": step,
        "phase": phase.name,
        "phase_steps": [phase.start, phase.end - 1],
        "phase_index": phase.index,  # -1: the recipe has no phases
        "eligible_sources": eligible,
        "blocked_sources": {n: g.reason for n, g in gates.items() if not g.allowed},
        "tiers": tiers if tiers is not None else "all",
        "lr": plan.lr_at(step, 0.5),  # adaptive phases: the rate at failure rate 0.5, where a run starts
        "lr_mode": "adaptive" if phase.lr is None else "fixed",
        "dream_temperature": phase.dream_temperature,
        "warmup": {"steps": cfg.warmup_steps, "active": step < cfg.warmup_steps, "sources": cfg.warmup_sources},
        "sampler": cfg.sampler,
        "caps": {n: cfg.caps[n] for n in eligible if n in cfg.caps},
        "floors": {n: cfg.floors[n] for n in eligible if n in cfg.floors},
        "decided_by": {"phase": loaded.where(phase.key), "tiers": loaded.where(tiers_key)},
    }
    if recipe.dream.enabled:  # eligible by the recipe, drawn once the dream loop has added an example
        out["dream_source"] = recipe.dream.source
    if phase.lr is None:
        out["lr_range"] = list(phase.lr_range)
        out["lr_at_range_ends"] = [plan.lr_at(step, 0.0), plan.lr_at(step, 1.0)]
    if source is not None:
        if source not in gates:
            hint = did_you_mean(source, plan.names) or f"the sources are: {', '.join(plan.names)}"
            raise ToolkitError(f"unknown source '{source}'", where="--source", hint=hint)
        gate = gates[source]
        out["source"] = {"name": source, "can_draw": gate.allowed, "reason": gate.reason,
                         "decided_by": gate.key, "where": loaded.where(gate.key) if gate.key else None}
    return out


def render_explain(info: dict) -> str:
    where = info["decided_by"]["phase"] if info["phase_index"] >= 0 else "no curriculum.phases"
    lines = [
        f"step {info['step']}: phase '{info['phase']}' (steps {info['phase_steps'][0]}-{info['phase_steps'][1]}, "
        f"{where})",
        f"  eligible sources: {', '.join(info['eligible_sources']) or '(none)'}",
        f"  tiers: {info['tiers']}",
        f"  learning rate: {_lr_text(info)}",
        f"  dream temperature: {info['dream_temperature'] if info['dream_temperature'] is not None else 'dream section'}",
        f"  sampler: {info['sampler']}" + (f"; caps {info['caps']}" if info["caps"] else "")
        + (f"; floors {info['floors']}" if info["floors"] else ""),
    ]
    if info.get("dream_source") in info["eligible_sources"]:
        lines.append(f"  ({info['dream_source']} is the dream loop's source: drawn once it holds an example)")
    warmup = info["warmup"]
    if warmup["steps"]:
        state = "active" if warmup["active"] else "over"
        lines.append(f"  warmup: {state} (curriculum.warmup_steps = {warmup['steps']})")
    for name, reason in info["blocked_sources"].items():
        lines.append(f"  not drawn: {name}: {reason}")
    if "source" in info:
        s = info["source"]
        verdict = "yes" if s["can_draw"] else "no"
        lines.append(f"can '{s['name']}' be drawn at step {info['step']}? {verdict}: {s['reason']} "
                     f"(decided by {s['decided_by']}, {s['where']})")
    return "\n".join(lines)


def _lr_text(info: dict) -> str:
    if info["lr_mode"] == "adaptive":
        low, high = info["lr_at_range_ends"]
        return f"adaptive, {low:.3g} to {high:.3g} with the failure rate (lr_range {info['lr_range']})"
    return f"{info['lr']:.4g}"


def explain_json(info: dict) -> str:
    return json.dumps(info, indent=2)


# ---------------------------------------------------------------- plot


def plot(loaded, out: Path, run_dir: Path | None = None, points: int = 400) -> Path:
    """Timeline PNG: phases, eligible sources, learning rate and dream temperature over steps;
    with a run directory, each step's actual draw on its source's row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan = CurriculumPlan.from_recipe(loaded.recipe)
    steps = sorted({round(i * (plan.max_steps - 1) / max(points - 1, 1)) for i in range(points)})
    fig, (ax_src, ax_lr, ax_temp) = plt.subplots(3, 1, figsize=(11, 2.2 + 0.35 * len(plan.names) + 3.2),
                                                  sharex=True, height_ratios=[max(len(plan.names), 2), 1.2, 1.2])
    _shade_phases(plan, (ax_src, ax_lr, ax_temp))
    _eligibility_rows(ax_src, plan)
    if run_dir is not None:
        _draws(ax_src, plan, run_dir)
    low, high = [plan.lr_at(s, 0.0) for s in steps], [plan.lr_at(s, 1.0) for s in steps]
    ax_lr.plot(steps, low, color="tab:blue")
    ax_lr.fill_between(steps, low, high, color="tab:blue", alpha=0.3, label="adaptive range")
    ax_lr.set_ylabel("learning rate")
    temps = [plan.phase_at(s).dream_temperature for s in steps]
    ax_temp.plot(steps, [t if isinstance(t, (int, float)) else float("nan") for t in temps], color="tab:red")
    ax_temp.set_ylabel("dream temp.")
    ax_temp.set_xlabel("step")
    ax_src.set_title(f"curriculum of {loaded.path}" + (f" with the draws of {run_dir}" if run_dir else ""))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _shade_phases(plan, axes) -> None:
    for i, phase in enumerate(plan.phases):
        for ax in axes:
            ax.axvspan(phase.start, phase.end, color="0.93" if i % 2 else "0.86", zorder=0)
        axes[0].text(phase.start, len(plan.names) - 0.4, f" {phase.name}", fontsize=8, va="bottom")
    if plan.cfg.warmup_steps:
        for ax in axes:
            ax.axvline(plan.cfg.warmup_steps, color="tab:orange", lw=1, ls="--")


def _eligibility_rows(ax, plan) -> None:
    bounds = plan.boundaries() + [plan.max_steps]
    for row, name in enumerate(plan.names):
        spans = []
        for a, b in zip(bounds, bounds[1:]):
            if plan.gate(name, a).allowed:
                if spans and sum(spans[-1]) == a:
                    spans[-1] = (spans[-1][0], b - spans[-1][0])  # one bar across boundaries it passes
                else:
                    spans.append((a, b - a))
        ax.broken_barh(spans, (row - 0.3, 0.6), color="tab:green", alpha=0.35)
    ax.set_yticks(range(len(plan.names)), plan.names)
    ax.set_ylim(-0.6, len(plan.names) + 0.2)
    ax.set_xlim(0, plan.max_steps)


def _draws(ax, plan, run_dir: Path) -> None:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise ToolkitError("no metrics.jsonl: is this a run directory?", where=str(run_dir))
    rows = [r for r in read_jsonl(metrics) if "source" in r and r.get("source") in plan.names]
    by_row = [plan.names.index(r["source"]) for r in rows]
    ax.scatter([r["step"] - 1 for r in rows], by_row, s=4, color="black", marker="|", label="drawn")
    counts = {n: by_row.count(i) for i, n in enumerate(plan.names)}
    ax.set_yticks(range(len(plan.names)), [f"{n} ({counts[n]})" for n in plan.names])
