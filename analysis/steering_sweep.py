"""The steering sweep: for each layer and coefficient, steer the model and measure the margins (mean with a
95% bootstrap interval over prompts, sample std, shift from unsteered), the off-target KL on neutral
prompts and an evaluator's pass rate on greedy generations; per layer whether the mean margin moves one
way as the coefficient grows. Also the one-line CLI summary of a layer and the report files (sweep.json,
sweep.csv, sweep.png).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from analysis.hooks import steering
from analysis.stats import CONFIDENCE, mean_ci, monotonicity
from analysis.steering_forward import margins, next_token_logprobs
from toolkit.errors import ToolkitError


def mean_kl(reference: list[torch.Tensor], steered: list[torch.Tensor]) -> float:
    """KL(reference || steered) per position, averaged over positions and then prompts."""
    values = [float((ref.exp() * (ref - st)).sum(-1).mean()) for ref, st in zip(reference, steered)]
    return float(np.mean(values)) if values else 0.0


def margin_row(margins_: list[float], baseline: list[float], seed: int = 0) -> dict:
    """Mean margin with its bootstrap CI, sample std (ddof=1), mean shift from unsteered with its paired CI."""
    if not margins_:
        return {key: None for key in ("mean_margin", "mean_margin_ci_low", "mean_margin_ci_high", "std_margin",
                                      "mean_margin_shift", "mean_margin_shift_ci_low", "mean_margin_shift_ci_high")}
    m, shift = np.asarray(margins_, float), np.asarray(margins_, float) - np.asarray(baseline, float)
    ci, shift_ci = mean_ci(m, seed) or (None, None), mean_ci(shift, seed) or (None, None)
    return {"mean_margin": float(m.mean()), "mean_margin_ci_low": ci[0], "mean_margin_ci_high": ci[1],
            "std_margin": float(m.std(ddof=1)) if len(m) > 1 else None,
            "mean_margin_shift": float(shift.mean()), "mean_margin_shift_ci_low": shift_ci[0],
            "mean_margin_shift_ci_high": shift_ci[1]}


def layer_summary(coefficients: list[float], by_coef: list[list[float]], seed: int = 0) -> dict:
    """Per layer: the margins, the monotonicity of the mean margin across coefficients, and per prompt the share
    whose margin changes direction somewhere and the share going the wrong way (Spearman rho ≤ 0)."""
    n_prompts = len(by_coef[0]) if by_coef else 0
    per_prompt = [[ms[i] for ms in by_coef] for i in range(n_prompts)]
    mono = [monotonicity(coefficients, ys, p_value=False) for ys in per_prompt]
    return {
        "coefficients": list(coefficients),
        "margins": by_coef,
        "monotonicity": monotonicity(coefficients, [float(np.mean(ms)) for ms in by_coef], seed) if n_prompts else None,
        "prompts_monotonic_share": float(np.mean([m["monotonic"] for m in mono])) if mono else None,
        "wrong_direction_share": float(np.mean([(m["spearman_rho"] or 0.0) <= 0 for m in mono])) if mono else None,
    }


def describe_layer(layer: str, info: dict) -> str | None:
    """One line for the CLI: the mean margin's monotonicity across coefficients."""
    mono = info.get("monotonicity")
    if mono is None:
        return None
    shape = (f"monotonic, {mono['direction']}" if mono["monotonic"]
             else f"NOT monotonic ({mono['sign_changes']} sign changes)")
    rho = "n/a" if mono["spearman_rho"] is None else f"{mono['spearman_rho']:.2f} (p {mono['spearman_p']:.3g})"
    return (f"layer {layer}: mean margin {shape}, spearman rho {rho}; prompts going the wrong way "
            f"{info['wrong_direction_share']:.0%}")


def sweep(model, tokenizer, vectors: dict[int, torch.Tensor], layers: list[int], coefficients: list[float],
          rows: list[dict], neutral: list[str], evaluator=None, max_new_tokens: int = 32, batch_size: int = 8,
          seed: int = 0) -> dict:
    """For each layer and coefficient: margins (mean, bootstrap CI over prompts, sample std), off-target KL on
    neutral prompts, evaluator pass rate; per layer the monotonicity of the response."""
    from toolkit.text.generate import chat_prompt, generate

    behavior = [r for r in rows if r.get("positive") and r.get("negative")]
    reference = next_token_logprobs(model, tokenizer, neutral, batch_size) if neutral else []
    baseline = margins(model, tokenizer, behavior, batch_size) if behavior else []
    gen_prompts = [chat_prompt(tokenizer, [{"role": "user", "content": r["prompt"]}]) for r in behavior]
    table, per_layer = [], {}
    for layer in layers:
        if layer not in vectors:
            raise ToolkitError(f"the vector file has no layer {layer}", where="--layers",
                               hint=f"it has {sorted(vectors)}")
        by_coef = []
        for coef in coefficients:
            with steering(model, {layer: coef * vectors[layer]}):
                m = margins(model, tokenizer, behavior, batch_size) if behavior else []
                kl = mean_kl(reference, next_token_logprobs(model, tokenizer, neutral, batch_size)) if neutral else None
                pass_rate = None
                if evaluator is not None and behavior:
                    texts = generate(model, tokenizer, gen_prompts, temperature=0.0, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size, seed=seed)
                    verdicts = evaluator.evaluate([r["prompt"] for r in behavior], texts)
                    pass_rate = float(np.mean([v.passed for v in verdicts]))
            table.append({"layer": layer, "coefficient": coef, **margin_row(m, baseline, seed), "kl": kl,
                          "pass_rate": pass_rate})
            by_coef.append(m)
        per_layer[str(layer)] = layer_summary(coefficients, by_coef, seed)
    return {"unsteered_margins": baseline, "confidence": CONFIDENCE, "rows": table, "layers": per_layer}


def write_sweep(out: str | Path, result: dict) -> dict:
    """DIR/sweep.json, DIR/sweep.csv, DIR/sweep.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    fields = ["layer", "coefficient", "mean_margin", "mean_margin_ci_low", "mean_margin_ci_high", "std_margin",
              "mean_margin_shift", "mean_margin_shift_ci_low", "mean_margin_shift_ci_high", "kl", "pass_rate"]
    with open(out / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in result["rows"]:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in fields})
    panels = [("mean_margin", "log-prob margin (pos - neg)"), ("kl", "off-target KL"), ("pass_rate", "evaluator pass rate")]
    panels = [p for p in panels if any(r.get(p[0]) is not None for r in result["rows"])] or panels[:1]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for layer in result["layers"]:
            rows = [r for r in result["rows"] if str(r["layer"]) == layer and r.get(key) is not None]
            xs, ys = [r["coefficient"] for r in rows], [r[key] for r in rows]
            ax.plot(xs, ys, marker="o", label=f"layer {layer}")
            if key == "mean_margin" and all(r["mean_margin_ci_low"] is not None for r in rows):
                ax.fill_between(xs, [r["mean_margin_ci_low"] for r in rows], [r["mean_margin_ci_high"] for r in rows],
                                alpha=0.2)  # the bootstrap CI over prompts
        ax.set_xlabel("coefficient")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=100)
    plt.close(fig)
    return {"json": str(out / "sweep.json"), "csv": str(out / "sweep.csv"), "png": str(out / "sweep.png")}
