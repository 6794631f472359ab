"""Effective rank of LoRA adapters, subspace similarity between two runs, and a truncation sweep.

For each adapted module the delta is ΔW = scale · B @ A (scale = alpha/r, or alpha/sqrt(r) with rslora).
Per module: singular values, the numerical rank, entropy effective rank exp(H(p)) with p = σ/Σσ (Roy & Vetterli
2007), stable rank ‖ΔW‖_F²/σ_max², and the energy Σ_{i≤k} σ_i²/Σσ² captured at k = 8, 16, 32, 64.

The numerical rank is the delta's, not the LoRA r: a singular value counts when it exceeds the noise that
storing the factors in their dtype puts into B @ A (`factor_tolerance`: the noise's expected Frobenius norm,
√((u_B² + u_A²)/3 · Σ_k ‖B[:, k]‖²‖A[k]‖²) with u = eps/2 of each factor's stored dtype). A rank-4 delta stored
as dense fp32 r = 64 factors has 60 more singular values around 1e-8 σ_max; float64's eps would count them all.
A dense delta (`rank_profile`) uses numpy's matrix_rank convention σ_max · max(m, n) · eps, with the eps of its
own dtype.

Given two runs (`toolkit analyze rank RUN_A RUN_B`): the Grassmann similarity (mean cos² of the principal angles)
between their top-k left and right singular subspaces, k = the smaller measured rank (at most 64), beside its
chance level k/n (± sd √2(n−k)/(n√((n−1)(n+2)))) for random k-dim subspaces of R^n.

Truncation sweep: the higher-rank run's deltas cut to their top k singular directions (k = 8 … 256 below its r,
its measured rank, and r) are added to the base model, and the loss on the behavior data (the run's validation
examples, or `--data` JSONL) is compared with the base and full-adapter losses:
retained(k) = (loss_base − loss_k) / (loss_base − loss_full).
Verdict: the measured rank and the share of the delta's energy it holds, the smallest swept k that retains
≥ RETAIN_THRESHOLD (0.9) of the gain (what would have sufficed), and whether rank 64 would have.

SVDs use the factors (QR of B and Aᵀ, then an r×r SVD), so no dense ΔW is formed for the report; the
truncated deltas are applied as float32 low-rank forward hooks on the base Linear layers (exactly a
rank-k LoRA), so a bf16 base on a GPU does not round them away. Trained GDN gates (A_log, dt_bias) saved
with the adapter are loaded for the full and every truncated model (they have no rank to truncate).
DoRA adapters are refused: their delta is not B·A.

Any family: Conv1D LoRA (GPT-2's c_attn, saved with fan_in_fan_out) has ΔW = (B @ A)ᵀ in the weight's own
[in, out] layout; LoRA on a parameter (peft target_parameters, e.g. an MoE router's weight) adds B @ A to the
weight. An adapter saved for a multimodal base holds each tensor under two names (see
toolkit.lora.read_adapter_weights); it is read once. Module names are matched to the loaded base model by
their path from the decoder block list on (layers.N...), so an adapter named for the multimodal class
(model.language_model.layers...) applies to the text model (model.layers...) too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from analysis.adapters import (  # noqa: F401 (reading adapters: tests and callers import them here)
    _adapter_config, _match_names, find_adapter, lora_deltas, lora_factors, module_type, read_factors)
from analysis.spectra import (  # noqa: F401 (the spectra behind the report)
    ENERGY_KS, _similarity, chance_similarity, dense_tolerance, low_rank_svd, measured_rank, profile_from_singular_values,
    rank_profile, spectra, subspace_similarity, truncate_factors)
from analysis.truncation import MIN_LOSS_GAP, truncation_sweep
from toolkit.errors import ToolkitError
from toolkit.weights import find_run_dir

RETAIN_THRESHOLD = 0.9
VERDICT_RANK = 64


# ---------------------------------------------------------------- truncated deltas


def truncate_adapter(run_or_adapter: str | Path, k: int) -> dict[str, torch.Tensor]:
    """Module name -> the delta truncated to its top-k SVD directions (float64, CPU, laid out as lora_deltas)."""
    transposed = bool(_adapter_config(find_adapter(run_or_adapter)).get("fan_in_fan_out"))
    truncated = truncate_factors(lora_factors(run_or_adapter), k)
    return {name: (b @ a).T if transposed else b @ a for name, (b, a) in truncated.items()}


# ---------------------------------------------------------------- profiles of a run


def adapter_profile(run_or_adapter: str | Path) -> tuple[dict, dict]:
    """(report section, {module: (U, Vh, rank)}) for one adapter; ranks are numerical at the factors' storage
    precision (`factor_tolerance`), not the LoRA r."""
    adapter = find_adapter(run_or_adapter)
    config = _adapter_config(adapter)
    factors, dtypes = read_factors(adapter)
    svds = spectra(factors, dtypes)
    modules, bases = {}, {}
    for name, (b, a) in factors.items():
        u, s, vh, tolerance = svds[name]
        shape = (b.shape[0], a.shape[1])
        profile = profile_from_singular_values(s, shape, tolerance)
        modules[name] = {"type": module_type(name), "shape": list(shape), "r": b.shape[1],
                         "dtype": "/".join(sorted({str(d).removeprefix("torch.") for d in dtypes[name]})), **profile}
        bases[name] = (u, vh, profile["rank"])
    rank, energy = measured_rank(svds)
    section = {"path": str(run_or_adapter), "adapter": str(adapter), "r": config.get("r"),
               "lora_alpha": config.get("lora_alpha"), "use_rslora": bool(config.get("use_rslora")),
               "max_rank": max(m["r"] for m in modules.values()), "measured_rank": rank,
               "energy_in_measured_rank": energy, "summary": _summarize(modules), "modules": modules}
    return section, bases


def _summarize(modules: dict) -> dict:
    """Per module type: count, max/median numerical rank, mean/median effective rank, mean stable rank, mean
    energy at each k."""
    groups: dict[str, list[dict]] = {}
    for m in modules.values():
        groups.setdefault(m["type"], []).append(m)
    summary = {}
    for kind in sorted(groups, key=lambda t: ("attention", "gdn", "mlp", "other").index(t)):
        ms = groups[kind]
        eranks = torch.tensor([m["effective_rank"] for m in ms], dtype=torch.float64)
        ranks = torch.tensor([float(m["rank"]) for m in ms], dtype=torch.float64)
        summary[kind] = {
            "modules": len(ms),
            "rank_max": int(ranks.max()),
            "rank_median": float(ranks.median()),
            "effective_rank_mean": float(eranks.mean()),
            "effective_rank_median": float(eranks.median()),
            "stable_rank_mean": sum(m["stable_rank"] for m in ms) / len(ms),
            "energy_mean": {str(k): sum(m["energy"][str(k)] for m in ms) / len(ms) for k in ENERGY_KS},
        }
    return summary


def _compare(bases_a: dict, bases_b: dict) -> dict:
    common = [n for n in bases_a if n in bases_b]
    if not common:
        raise ToolkitError("the two adapters share no module, so their subspaces cannot be compared",
                           hint="compare two runs of the same recipe at different ranks")
    modules = {}
    for name in common:
        (ua, vha, ra), (ub, vhb, rb) = bases_a[name], bases_b[name]
        if ua.shape[0] != ub.shape[0] or vha.shape[1] != vhb.shape[1]:
            raise ToolkitError(f"module {name} has different shapes in the two adapters", hint="same base model?")
        modules[name] = {"type": module_type(name), **_similarity(ua, vha, ra, ub, vhb, rb)}
    summary = {}
    for kind in ("attention", "gdn", "mlp", "other"):
        rows = [m for m in modules.values() if m["type"] == kind and m["k"]]
        if rows:
            summary[kind] = {"modules": len(rows), "left_mean": sum(m["left"] for m in rows) / len(rows),
                             "right_mean": sum(m["right"] for m in rows) / len(rows),
                             "chance_left_mean": sum(m["chance_left"] for m in rows) / len(rows),
                             "chance_right_mean": sum(m["chance_right"] for m in rows) / len(rows),
                             "k_max": max(m["k"] for m in rows)}
    only = sorted(set(bases_a) ^ set(bases_b))
    return {"modules_compared": len(common), "modules_in_one_only": only, "summary": summary, "modules": modules}


# ---------------------------------------------------------------- verdict


def _measured_text(truncation: dict) -> str:
    r, measured = truncation["rank"], truncation.get("measured_rank", truncation["rank"])
    energy = truncation.get("energy_in_measured_rank")
    carries = f" carries {energy:.1%} of the delta's energy" if energy is not None else ""
    return f"Rank {measured} of r = {r}{carries} (numerical rank at the factors' storage precision)."


def verdict(truncation: dict, threshold: float = RETAIN_THRESHOLD) -> dict:
    """The measured rank, the smallest swept k whose top-k truncation retains ≥ threshold of the loss gain (the
    rank that would have sufficed), and whether rank 64 would have (`suffices`)."""
    r, sweep = truncation["rank"], truncation["sweep"]
    gap = truncation["loss_base"] - truncation["loss_full"]
    rule = (f"the smallest swept k whose top-k truncation retains ≥ {threshold:.0%} of the loss gain would have "
            f"sufficed; rank {VERDICT_RANK} suffices when that k ≤ {VERDICT_RANK}")
    head = _measured_text(truncation)
    result = {"rule": rule, "threshold": threshold, "r": r, "measured_rank": truncation.get("measured_rank", r),
              "sufficient_rank": None, "suffices": None}
    if abs(gap) < MIN_LOSS_GAP:
        text = (f"Cannot tell what would have sufficed: the full adapter moves the behavior loss by only {gap:+.2g} "
                f"(base {truncation['loss_base']:.4f}, adapter {truncation['loss_full']:.4f}), too little to measure "
                "retention.")
        return {**result, "text": f"{head} {text}"}
    if gap < 0:
        text = (f"Cannot tell what would have sufficed: the adapter makes the behavior loss worse "
                f"({truncation['loss_base']:.4f} -> {truncation['loss_full']:.4f}), so there is no gain to retain; "
                "check the data.")
        return {**result, "text": f"{head} {text}"}
    retained = {row["k"]: row["retained"] for row in sweep if row["retained"] is not None}
    smallest = min((k for k, v in retained.items() if v >= threshold), default=None)
    below = max((k for k in retained if k < r), default=None)
    if smallest is not None and smallest < r:
        text = (f"r = {smallest} would have sufficed: its top-{smallest} truncation retains "
                f"{retained[smallest]:.0%} of the loss gain on the behavior data (threshold {threshold:.0%}).")
    elif below is not None:
        text = (f"No smaller rank would have sufficed: the top {below} directions retain {retained[below]:.0%} of the "
                f"loss gain on the behavior data (threshold {threshold:.0%}).")
    else:
        text = f"r = {r} is the smallest rank the sweep tried."
    suffices = smallest is not None and smallest <= VERDICT_RANK
    if r > VERDICT_RANK and not suffices and VERDICT_RANK in retained:
        text += (f" Rank {VERDICT_RANK} would not have sufficed: its top-{VERDICT_RANK} truncation retains "
                 f"{retained[VERDICT_RANK]:.0%}.")
    return {**result, "sufficient_rank": smallest, "suffices": suffices, "text": f"{head} {text}"}


# ---------------------------------------------------------------- the report


def rank_report(run_a: str | Path, run_b: str | Path | None = None, data: str | Path | None = None,
                out: str | Path | None = None, trust_remote_code: bool = False, allow_pickle: bool = False) -> dict:
    """Profiles of one or two adapters, their subspace similarity, the truncation sweep of the higher-rank one and
    the verdict; written to OUT/rank.json and OUT/rank.md (default RUN_A/reports/). Returns the report with
    `paths`. The base model loads with `trust_remote_code` / `allow_pickle` as given, never the run's recipe's."""
    section_a, bases_a = adapter_profile(run_a)
    report = {"threshold": RETAIN_THRESHOLD, "run_a": section_a}
    swept = run_a
    if run_b is not None:
        section_b, bases_b = adapter_profile(run_b)
        report["run_b"] = section_b
        report["similarity"] = _compare(bases_a, bases_b)
        if section_b["max_rank"] > section_a["max_rank"]:
            swept = run_b
    report["truncation"] = truncation_sweep(swept, data, trust_remote_code=trust_remote_code,
                                            allow_pickle=allow_pickle)
    report["verdict"] = verdict(report["truncation"])
    if out is None:
        adapter = find_adapter(run_a)
        out = (find_run_dir(adapter) or Path(run_a)) / "reports"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out / "rank.json"), "markdown": str(out / "rank.md")}
    (out / "rank.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "rank.md").write_text(render_markdown(report))
    return {**report, "paths": paths}


def render_markdown(report: dict) -> str:
    lines = ["# LoRA effective rank", "", f"**Verdict.** {report['verdict']['text']}",
             f"(Rule: {report['verdict']['rule']}.)", ""]
    for key in ("run_a", "run_b"):
        if key not in report:
            continue
        sec = report[key]
        lines += [f"## {sec['path']} (r={sec['r']}, alpha={sec['lora_alpha']}"
                  f"{', rslora' if sec['use_rslora'] else ''})", "",
                  (f"Measured rank {sec['measured_rank']} (largest over modules; singular values below what rounding "
                   f"the stored factors could produce are not counted), holding {sec['energy_in_measured_rank']:.4%} "
                   "of the delta's energy."), "",
                  ("| modules | n | rank max | rank median | eff. rank mean | eff. rank median | stable rank mean | "
                   + " | ".join(f"energy@{k}" for k in ENERGY_KS) + " |"),
                  "|---|---|---|---|---|---|---|" + "---|" * len(ENERGY_KS)]
        for kind, s in sec["summary"].items():
            lines.append(f"| {kind} | {s['modules']} | {s['rank_max']} | {s['rank_median']:g} | "
                         f"{s['effective_rank_mean']:.2f} | {s['effective_rank_median']:.2f} | "
                         f"{s['stable_rank_mean']:.2f} | "
                         + " | ".join(f"{s['energy_mean'][str(k)]:.3f}" for k in ENERGY_KS) + " |")
        lines.append("")
    if "similarity" in report:
        sim = report["similarity"]
        lines += ["## Subspace similarity (mean cos² of principal angles, top k = the smaller measured rank, ≤ 64)",
                  "", "Chance is what a random k-dim subspace gives (k/n for n rows or columns).", "",
                  "| modules | n | k max | left | right | chance left | chance right |",
                  "|---|---|---|---|---|---|---|"]
        for kind, s in sim["summary"].items():
            lines.append(f"| {kind} | {s['modules']} | {s['k_max']} | {s['left_mean']:.3f} | {s['right_mean']:.3f} | "
                         f"{s['chance_left_mean']:.3f} | {s['chance_right_mean']:.3f} |")
        lines.append("")
    t = report["truncation"]
    lines += [f"## Truncation sweep of {t['run']} (r = {t['rank']}, measured rank {t['measured_rank']})", "",
              f"Behavior data: {t['data']}, {t['examples']} examples"
              + (f" ({t['skipped']} skipped: nothing to score within max_length)" if t["skipped"] else "")
              + f". Loss: base {t['loss_base']:.4f}, "
              f"full adapter {t['loss_full']:.4f}. "
              "retained(k) = (loss_base − loss_k) / (loss_base − loss_full).", "",
              "| k | loss | retained |", "|---|---|---|"]
    for row in t["sweep"]:
        retained = "n/a" if row["retained"] is None else f"{row['retained']:.3f}"
        lines.append(f"| {row['k']} | {row['loss']:.4f} | {retained} |")
    return "\n".join(lines) + "\n"
