"""Which heads changed between a base and a tuned model, beyond what a null produces: attention and GDN heads.

    run_head_diff(base, tuned, prompts_jsonl, out_dir, control=None) -> dict
    # writes head_diff.json, .md, .html (self-contained page) and .png

`base`, `tuned` and `control` are anything `analysis.capture.load_capture_model` takes: a model dir, a hub id, a
PEFT adapter dir, a LoRA run dir (adapter merged in memory) or a full-model run dir, of any Hugging Face causal LM.
Attention-only models (Llama, GPT-2) have attention heads only; hybrids (Qwen3.5, Qwen3.5-MoE, Qwen3-Next) have
GDN heads too. A multimodal checkpoint is analysed as its text model.

Change score, per head and probe, always against the base on the same tokens: attention heads (`kind:
attention`) the mean Jensen-Shannon divergence (bits) between base and tuned attention rows (rows 1..T-1);
GDN value heads (`kind: gdn`) ||A_tuned - A_base||_F / ||A_base||_F of the implicit attention matrix (core
output = A @ V, exact delta rule, see capture.py). `score` is its mean over probes. `matrix_distance` is the
same normalized Frobenius distance for both kinds (pattern or A): the one currency for cross-kind summaries.

Null and significance. A distance is never negative, so "mean / standard error" only says that a head changed
consistently; any fine-tune, and any head downstream of a changed one, passes that. Here every head's change is
compared, probe by probe, with a null change of the same head on the same probe:

- with `control` (a fine-tune of the same length on neutral data): the control's change of that head;
- without one, the propagated change: the base model's parameters for that head's layer run on the tuned model's
  own inputs to it (capture.py's counterfactual run). It is what the head would show if only its inputs had
  changed, so a head whose parameters did not move has exactly its null, and a model compared with itself, or
  with a copy in which only other heads changed, has no significant head. Any fine-tune moves every head it
  trains beyond this null; only a control tells behavior from generic fine-tuning drift.

The test is one-sided Wilcoxon signed-rank on the per-probe paired differences (change - null): the sign-flip
permutation test on their ranks, exact up to 50 probes. p-values are corrected across all heads with
Benjamini-Hochberg (false discovery rate `alpha`, default 0.05): a head is `significant` when its corrected p is
below alpha and its mean excess over the null is above fp32 round-off. With a control, the head must also beat
it by more than two runs differ per head (`run_to_run_test`; `p_probes` and `p_runs` are the two corrected
p-values, `p_corrected` the larger) and, as a volcano plot asks a gene for a fold change, by at least `min_fold`
(1.5) times the typical head's ratio to the control (`fold_vs_typical`): shared parameters (a key-head group's
q/k rows, a kv group) make run-to-run deviations come in groups, heavier-tailed than the spread across heads
suggests. `effect_size` is the paired standardized mean difference (mean / std of the per-probe differences),
`ratio_to_null` = matrix_distance / the null's matrix_distance (how many times as far the head's mixing moved
as under the null; a JSD ratio would be about its square).

Direct versus propagated. `direct` is a statement about weights: the head's own parameters (its q_proj
query+gate rows, the k/v rows of its kv group, o_proj columns, q_norm/k_norm; for GDN its in_proj_qkv/z/b/a rows
or Qwen3-Next's fused in_proj_qkvz/in_proj_ba rows, conv1d channels, out_proj columns, A_log, dt_bias) moved
beyond fp32 round-off between base and tuned (LoRA merged). `direct_score` is how much the head's own
parameters move its mixing on identical (tuned) inputs, `propagated_score` how much its inputs alone move it.
A significant head that is not direct changed only because heads below it did.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from analysis.capture import (DEFAULT_MAX_TOKENS, ModelCapture, capture_model, load_capture_model, prompt_text,
                              read_prompts)

EPS = 1e-12
ALPHA = 0.05
SCORE_FLOOR = 1e-6  # an excess below this is fp32 round-off, never significant
MIN_FOLD = 1.5  # against a control: at least this many times the typical head's ratio to the control
DIRECT_FLOOR = 1e-6  # relative weight change beyond fp32 round-off
TOP_FRACTION = 0.10
FIGURE_PROBE = 0  # the probe whose before/after patterns the report draws
TEST = "one-sided Wilcoxon signed-rank on per-probe paired differences (change - null)"
RUN_TEST = "log(change / control change) against its spread across heads (empirical null)"
CORRECTION = "Benjamini-Hochberg (false discovery rate)"


# ---------------------------------------------------------------- metrics per probe


def _entropy_bits(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log2(p.clamp_min(EPS))).sum(-1)


def js_divergence_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """JSD in bits between matching rows of two row-stochastic matrices; in [0, 1]."""
    p = p.double()
    q = q.double()
    m = 0.5 * (p + q)

    def kl(a, b):
        return torch.where(a > 0, a * (torch.log2(a.clamp_min(1e-300)) - torch.log2(b.clamp_min(1e-300))),
                           torch.zeros_like(a)).sum(-1)

    return (0.5 * kl(p, m) + 0.5 * kl(q, m)).clamp_min(0.0).float()


def relative_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.double() - before.double()).norm() / (before.double().norm() + EPS))


def attention_change(P: torch.Tensor, Q: torch.Tensor) -> dict:
    """One probe, one attention head: JSD score, normalized distance and the shape of the change."""
    out = {"score": 0.0, "dist": relative_change(P, Q)}
    if P.shape[0] < 2:
        return out
    rows = slice(1, None)  # row 0 attends only to itself
    idx = torch.arange(1, P.shape[0])
    out.update(score=float(js_divergence_rows(P[rows], Q[rows]).mean()),
               entropy=float((_entropy_bits(Q[rows]) - _entropy_bits(P[rows])).mean()),
               prev=float((Q[idx, idx - 1] - P[idx, idx - 1]).mean()),
               first=float((Q[rows, 0] - P[rows, 0]).mean()))
    return out


def gdn_change(before: torch.Tensor, after: torch.Tensor) -> dict:
    d = relative_change(before, after)
    return {"score": d, "dist": d}


def prompt_changes(before: dict, after: dict) -> dict[str, dict]:
    """Per head, the change from one captured prompt item to another (same tokens)."""
    out = {name: attention_change(P, after["attention"][name]) for name, P in before["attention"].items()}
    out.update({name: gdn_change(v["implicit"], after["gdn"][name]["implicit"]) for name, v in before["gdn"].items()})
    return out


# ---------------------------------------------------------------- capturing against the base


def _reducer(base: ModelCapture, keep_patterns: int | None):
    """Shrink each captured prompt to what the diff needs: changes against the base (and, from the counterfactual,
    the propagated and the direct change), GDN beta/log_decay, full patterns for one probe only."""

    def reduce(index: int, item: dict) -> dict:
        ref = base.prompts[index]
        if ref["tokens"] != item["tokens"]:
            raise ValueError(f"probe {index} tokenizes differently for the two models; use one tokenizer")
        out = {"tokens": item["tokens"], "change": prompt_changes(ref, item),
               "gdn_values": {n: {k: v[k] for k in ("beta", "log_decay")} for n, v in item["gdn"].items()}}
        if "counterfactual" in item:
            out["propagated"] = prompt_changes(ref, item["counterfactual"])  # base params, tuned inputs
            out["direct"] = prompt_changes(item["counterfactual"], item)  # same inputs, own params
        if index == keep_patterns:
            out["patterns"] = {**item["attention"], **{n: v["implicit"] for n, v in item["gdn"].items()}}
        return out

    return reduce


def capture_against(model, base: ModelCapture, prompts, tokenizer, max_tokens: int = DEFAULT_MAX_TOKENS,
                    device: str | None = None, base_model: str | None = None, swap_in: dict | None = None,
                    keep_patterns: int | None = None) -> ModelCapture:
    """Capture `model` on the base's probes, reduced to per-probe changes against `base` (see `_reducer`);
    `swap_in` (`base.mixers`) adds the propagated and direct change of every head."""
    if len(prompts) != len(base.prompts):
        raise ValueError("the base capture and the probes differ in count")
    cap = capture_model(model, prompts, tokenizer, max_tokens, device, base=base_model, swap_in=swap_in,
                        reduce=_reducer(base, keep_patterns))
    if [(h.name, h.kind) for h in cap.heads] != [(h.name, h.kind) for h in base.heads]:
        raise ValueError("the two models have different heads")
    return cap


# ---------------------------------------------------------------- statistics


def excess_test(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """One-sided p-value per row (head) that `observed` exceeds `null` on the same probes (columns): Wilcoxon
    signed-rank on the paired differences. A row of zero differences (an untouched head) gets p = 1."""
    from scipy.stats import wilcoxon

    diff = np.asarray(observed, dtype=np.float64) - np.asarray(null, dtype=np.float64)
    p = np.ones(diff.shape[0])
    moved = np.any(diff != 0, axis=1)
    if moved.any() and diff.shape[1] > 0:
        with warnings.catch_warnings():  # rows with many zero differences: the normal approximation warns
            warnings.simplefilter("ignore", RuntimeWarning)
            p[moved] = wilcoxon(diff[moved], alternative="greater", axis=1, zero_method="wilcox").pvalue
    return np.nan_to_num(p, nan=1.0)


def correct(p: np.ndarray) -> np.ndarray:
    from scipy.stats import false_discovery_control

    return false_discovery_control(p, method="bh") if len(p) else p


def probes_needed(n_heads: int, alpha: float) -> int:
    """The fewest probes with which one changed head among `n_heads` can be significant."""
    return next(n for n in range(1, 64) if n_heads * smallest_p(n) < alpha or n == 63)


def smallest_p(n_probes: int) -> float:
    """The smallest one-sided p the test can give with this many probes (every difference positive)."""
    from scipy.stats import wilcoxon

    return float(wilcoxon(np.arange(1.0, n_probes + 1), alternative="greater").pvalue) if n_probes else 1.0


def run_to_run_test(observed_dist: np.ndarray, null_dist: np.ndarray) -> tuple[np.ndarray, dict]:
    """One-sided p per head that its change beats the control's by more than two runs differ per head by chance.

    One control is one draw: a head moves a bit more in one fine-tune than in another on every probe alike, so the
    per-probe test alone flags heads at random. The spread of log(change / control change) across all heads is the
    empirical null (Efron 2004: centre = median, scale = 1.4826 x MAD, robust to a minority of changed heads);
    a head is tested against it with a normal tail. Uses `matrix_distance` units (both kinds alike)."""
    from scipy.stats import median_abs_deviation, norm

    o, n = observed_dist.mean(axis=1), null_dist.mean(axis=1)
    both = (o > 0) & (n > 0)
    ratios = np.log(o[both] / n[both])
    centre = float(np.median(ratios)) if ratios.size else 0.0
    scale = max(float(median_abs_deviation(ratios, scale="normal")) if ratios.size > 1 else 0.0, 1e-3)
    z = np.zeros(len(o))
    z[both] = (ratios - centre) / scale
    z[(n == 0) & (o > 0)] = np.inf  # the control did not move this head at all
    return norm.sf(z), {"typical_ratio": math.exp(centre), "ratio_spread": math.exp(scale), "n_heads": int(both.sum())}


def versus_null(observed: np.ndarray, null: np.ndarray, observed_dist: np.ndarray, null_dist: np.ndarray) -> dict:
    diff = observed - null
    mean, null_mean = float(observed_dist.mean()), float(null_dist.mean())  # JSD would square the ratio
    sd = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    excess = float(diff.mean())
    if sd > 0:
        effect = excess / sd
    else:
        effect = 0.0 if excess == 0 else math.copysign(math.inf, excess)
    ratio = mean / null_mean if null_mean > 0 else (math.inf if mean > 0 else None)
    return {"null_score": float(null.mean()), "excess": excess,
            "excess_distance": float((observed_dist - null_dist).mean()),
            "ratio_to_null": ratio, "effect_size": effect}


# ---------------------------------------------------------------- per-head rows


def _weight_change(base_w: dict | None, tuned_w: dict | None) -> tuple[float | None, dict]:
    if not base_w or not tuned_w:
        return None, {}
    parts = {k: relative_change(base_w[k], tuned_w[k]) for k in base_w if k in tuned_w}
    num = sum(float((tuned_w[k].double() - base_w[k].double()).norm() ** 2) for k in parts)
    den = sum(float(base_w[k].double().norm() ** 2) for k in parts)
    return math.sqrt(num) / (math.sqrt(den) + EPS), parts


def _mean(cap: ModelCapture, key: str, name: str, metric: str) -> float:
    values = [p[key][name][metric] for p in cap.prompts if metric in p[key][name]]
    return float(np.mean(values)) if values else 0.0


def _distribution_shift(before: np.ndarray, after: np.ndarray, base_split: tuple[np.ndarray, np.ndarray]) -> dict:
    from scipy.stats import ks_2samp, wasserstein_distance

    pooled = math.sqrt(0.5 * (before.var(ddof=1) + after.var(ddof=1))) if before.size > 1 else 0.0
    diff = float(after.mean() - before.mean())
    if np.array_equal(before, after):
        ks_stat, ks_p, w1 = 0.0, 1.0, 0.0
    else:
        with warnings.catch_warnings():  # "exact calculation unsuccessful, switching to asymp" on large samples
            warnings.simplefilter("ignore", RuntimeWarning)
            ks = ks_2samp(before, after)
        ks_stat, ks_p = float(ks.statistic), float(ks.pvalue)
        w1 = float(wasserstein_distance(before, after))
    a, b = base_split
    w1_null = float(wasserstein_distance(a, b)) if a.size and b.size else None
    return {"mean_before": float(before.mean()), "mean_after": float(after.mean()), "wasserstein": w1,
            "wasserstein_base_split": w1_null, "ks_stat": ks_stat, "ks_pvalue": ks_p,
            "effect_size": diff / pooled if pooled > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))}


def _timescale(g: torch.Tensor) -> torch.Tensor:
    """-1/g: the number of steps over which the state decays by e (g <= 0 is the log of the per-step decay)."""
    return -1.0 / g.double().clamp(max=-1e-12)


def _pooled(prompts: list[dict], name: str, key: str, which=slice(None)) -> np.ndarray:
    fn = _timescale if key == "log_decay" else (lambda x: x)
    vals = [fn(p[name][key]).double().numpy() for p in prompts[which]]
    return np.concatenate(vals) if vals else np.zeros(0)


def _gdn_extras(name: str, base: ModelCapture, tuned: ModelCapture) -> dict:
    before = [p["gdn"] for p in base.prompts]
    after = [p["gdn_values"] for p in tuned.prompts]
    shifts = {out: _distribution_shift(_pooled(before, name, key), _pooled(after, name, key),
                                       (_pooled(before, name, key, slice(0, None, 2)),
                                        _pooled(before, name, key, slice(1, None, 2))))
              for out, key in (("beta", "beta"), ("decay_timescale", "log_decay"))}
    bw, tw = base.weights.get(name) or {}, tuned.weights.get(name) or {}
    gates = {}
    for key in ("A_log", "dt_bias"):
        if key in bw and key in tw:
            b, a = float(bw[key][0]), float(tw[key][0])
            gates[key] = {"before": b, "after": a, "delta": a - b, "changed": b != a}
    return {"implicit_distance": _mean(tuned, "change", name, "score"), **shifts, "gates": gates}


def _attention_extras(name: str, tuned: ModelCapture) -> dict:
    return {"mean_jsd_bits": _mean(tuned, "change", name, "score"),
            "entropy_change_bits": _mean(tuned, "change", name, "entropy"),
            "prev_token_attention_change": _mean(tuned, "change", name, "prev"),
            "first_token_attention_change": _mean(tuned, "change", name, "first")}


def _head_row(h, base: ModelCapture, tuned: ModelCapture) -> dict:
    w, parts = _weight_change(base.weights.get(h.name), tuned.weights.get(h.name))
    has_cf = "direct" in tuned.prompts[0]
    direct_score = _mean(tuned, "direct", h.name, "score") if has_cf else None
    row = {"name": h.name, "kind": h.kind, "layer": h.layer, "head": h.head,
           "score": _mean(tuned, "change", h.name, "score"), "matrix_distance": _mean(tuned, "change", h.name, "dist"),
           "direct": bool(w > DIRECT_FLOOR) if w is not None else bool((direct_score or 0.0) > SCORE_FLOOR),
           "direct_score": direct_score,
           "propagated_score": _mean(tuned, "propagated", h.name, "score") if has_cf else None,
           "weight_rel_change": w, "weight_rel_change_parts": parts}
    row.update(_attention_extras(h.name, tuned) if h.kind == "attention" else _gdn_extras(h.name, base, tuned))
    return row


def _series(cap: ModelCapture, key: str, name: str, metric: str) -> np.ndarray:
    return np.array([p[key][name][metric] for p in cap.prompts], dtype=np.float64)


def _null_info(kind: str, n_probes: int, n_heads: int, alpha: float) -> dict:
    floor = min(1.0, n_heads * smallest_p(n_probes))
    return {"kind": kind, "test": TEST, "correction": CORRECTION, "alpha": alpha, "n_probes": n_probes,
            "n_heads_tested": n_heads, "smallest_corrected_p": floor, "too_few_probes": floor >= alpha,
            "probes_needed": probes_needed(n_heads, alpha)}


def _with_run_to_run(rows: list[dict], p_probes: np.ndarray, dists: list[np.ndarray], null: dict):
    """Against a control both tests must pass: beat it on the probes, and by more than two runs differ per head."""
    p_runs, null["run_to_run"] = run_to_run_test(*dists)
    probes_corrected, runs_corrected = correct(p_probes), correct(p_runs)
    typical = null["run_to_run"]["typical_ratio"]
    for row, a, b in zip(rows, probes_corrected, runs_corrected):
        row["p_probes"], row["p_runs"] = float(a), float(b)
        ratio = row["ratio_to_null"]
        row["fold_vs_typical"] = None if ratio is None else (ratio / typical if typical > 0 else math.inf)
    null["test"] = f"{TEST}, and {RUN_TEST}"
    return np.maximum(p_probes, p_runs), np.maximum(probes_corrected, runs_corrected)


def diff_captures(base: ModelCapture, tuned: ModelCapture, control: ModelCapture | None = None,
                  alpha: float = ALPHA, min_fold: float = MIN_FOLD) -> dict:
    """Every head of `tuned` against `base`, tested against the null (see the module docstring). `tuned` and
    `control` come from `capture_against`; without `control`, `tuned` needs the counterfactual (`swap_in`).
    Against a control a significant head also moved at least `min_fold` times the typical head's ratio."""
    if not tuned.prompts:
        raise ValueError("no probes")
    if control is None and "propagated" not in tuned.prompts[0]:
        raise ValueError("without a control the tuned capture needs the counterfactual run (capture_against's "
                         "swap_in=base.mixers)")
    null_cap, null_key = (control, "change") if control is not None else (tuned, "propagated")

    def per_head(cap, key, metric):  # [heads, probes]
        return np.array([_series(cap, key, h.name, metric) for h in base.heads])

    scores = per_head(tuned, "change", "score"), per_head(null_cap, null_key, "score")
    dists = per_head(tuned, "change", "dist"), per_head(null_cap, null_key, "dist")
    rows = [{**_head_row(h, base, tuned), **versus_null(scores[0][i], scores[1][i], dists[0][i], dists[1][i])}
            for i, h in enumerate(base.heads)]
    info = _null_info("control" if control is not None else "propagated", len(tuned.prompts), len(rows), alpha)
    p = excess_test(*scores)
    p, p_corrected = (p, correct(p)) if control is None else _with_run_to_run(rows, p, list(dists), info)
    if control is not None:
        info["min_fold"] = min_fold
    for row, raw, corrected in zip(rows, p, p_corrected):
        row["p_value"], row["p_corrected"] = float(raw), float(corrected)
        big_enough = control is None or (row["fold_vs_typical"] or 0.0) >= min_fold
        row["significant"] = bool(corrected < alpha and row["excess"] > SCORE_FLOOR and big_enough)
    return {"n_prompts": len(tuned.prompts), "null": info, "heads": rows, "summary": summarize(rows, info)}


# ---------------------------------------------------------------- summary: seed 002's questions


def _carried(h: dict) -> float:
    """A head's share of the change beyond the null, in the cross-kind currency: significant heads only."""
    return max(h["excess_distance"], 0.0) if h["significant"] else 0.0


def _top_row(h: dict) -> dict:
    return {k: h[k] for k in ("name", "kind", "score", "null_score", "excess", "excess_distance", "p_corrected",
                              "significant", "direct")}


def _layer_summary(heads: list[dict], total: float) -> dict:
    layers = {}
    for h in heads:
        e = layers.setdefault(h["layer"], {"kind": h["kind"], "total": 0.0, "n_heads": 0, "n_significant": 0})
        e["total"] += _carried(h)
        e["n_heads"] += 1
        e["n_significant"] += h["significant"]
    for e in layers.values():
        e["mean"] = e["total"] / e["n_heads"]
        e["share"] = e["total"] / total if total > 0 else 0.0
    return {str(k): v for k, v in sorted(layers.items())}


def _heads_for(ranked: list[dict], total: float, fraction: float) -> int:
    acc = 0.0
    for i, h in enumerate(ranked, 1):
        acc += _carried(h)
        if acc >= fraction * total:
            return i
    return len(ranked)


def summarize(heads: list[dict], null: dict, top_k: int = 10) -> dict:
    total = sum(_carried(h) for h in heads)
    ranked = sorted(heads, key=lambda h: (-_carried(h), -h["excess"]))
    by_kind, mean_by_kind, share = {}, {}, {}
    for kind in ("attention", "gdn"):
        rows = [h for h in heads if h["kind"] == kind]
        by_kind[kind] = {"n_heads": len(rows), "n_significant": sum(h["significant"] for h in rows),
                         "n_direct": sum(h["direct"] for h in rows),
                         "n_significant_direct": sum(h["significant"] and h["direct"] for h in rows),
                         "top": [_top_row(h) for h in sorted(rows, key=lambda h: -h["excess"])[:top_k]]}
        mean_by_kind[kind] = sum(_carried(h) for h in rows) / len(rows) if rows else 0.0
        share[kind] = sum(_carried(h) for h in rows) / total if total > 0 else 0.0
    n_top = max(1, math.ceil(TOP_FRACTION * len(heads)))
    top_share = sum(_carried(h) for h in ranked[:n_top]) / total if total > 0 else 0.0
    summary = {
        "n_significant": sum(h["significant"] for h in heads),
        "n_direct": sum(h["direct"] for h in heads),
        "top_heads": [_top_row(h) for h in ranked[:top_k]],
        "by_kind": by_kind, "share_of_change": share, "mean_change_per_head": mean_by_kind,
        "more_affected_kind": max(mean_by_kind, key=mean_by_kind.get) if total > 0 else None,
        "by_layer": _layer_summary(heads, total),
        "top_fraction_share": top_share, "top_fraction_heads": n_top,
        "heads_for_90_percent": _heads_for(ranked, total, 0.9) if total > 0 else 0,
    }
    summary["concentration"] = _concentration(summary, len(heads), total)
    summary["answers"] = answers(heads, summary, null)
    return summary


def _concentration(s: dict, n_heads: int, total: float) -> str:
    if total == 0:
        return "No head changed beyond the null."
    share = s["top_fraction_share"]
    shape = "concentrated" if share >= 0.5 else "moderately concentrated" if share >= 0.25 else "distributed"
    return (f"The change is {shape}: the top {s['top_fraction_heads']} of {n_heads} heads ({TOP_FRACTION:.0%}) "
            f"carry {share:.0%} of the change beyond the null (an even spread would give "
            f"{s['top_fraction_heads'] / n_heads:.0%}).")


def _depth(layer: int, n_layers: int) -> str:
    third = layer * 3 // max(n_layers, 1)
    return ("early", "middle", "late")[min(third, 2)]


def _names(rows: list[dict], limit: int = 8) -> str:
    text = ", ".join(f"{h['name']} ({h['kind']}, {'direct' if h['direct'] else 'propagated'})" for h in rows[:limit])
    return text + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def _which_answer(heads: list[dict], sig: list[dict], null: dict) -> str:
    against = (f"the control run's change of the same head (consistently over the probes, beyond how much two runs "
               f"differ per head, and at least {null.get('min_fold', MIN_FOLD)}x the typical head's ratio to the "
               f"control)" if null["kind"] == "control" else
               "the head's propagated change (base parameters on the tuned model's inputs)")
    if sig:
        n_direct = sum(h["direct"] for h in sig)
        which = (f"{len(sig)} of {len(heads)} heads changed more than {against} (FDR {null['alpha']:.0%}): "
                 f"{_names(sig)}. ")
        which += ("All of them had their own parameters moved (direct)." if n_direct == len(sig) else
                  f"{n_direct} had their own parameters moved (direct); the other {len(sig) - n_direct} changed "
                  f"only because heads below them did (propagated).")
    else:
        which = f"No head changed more than {against} (FDR {null['alpha']:.0%})."
    if null["kind"] == "control":
        runs = null["run_to_run"]
        which += (f" Heads moved typically {runs['typical_ratio']:.2f}x as much as in the control (spread across "
                  f"heads x/{runs['ratio_spread']:.2f}): that much is the fine-tune's overall size, not a head's.")
    if null["too_few_probes"]:
        which += (f" With {null['n_probes']} probes a lone changed head cannot reach significance among "
                  f"{null['n_heads_tested']} heads (its corrected p is at least {null['smallest_corrected_p']:.2g}); "
                  f"use more probes (at least {null['probes_needed']}).")
    return which


def _where_answer(heads: list[dict], value, what: str) -> str:
    """Which layers and which kind carry `value` (per head), in words."""
    total = sum(value(h) for h in heads)
    layers, kinds = {}, {}
    for h in heads:
        layers.setdefault((h["layer"], h["kind"]), []).append(value(h))
        kinds.setdefault(h["kind"], []).append(value(h))
    n_layers = max(h["layer"] for h in heads) + 1
    ranked = sorted(layers.items(), key=lambda kv: -sum(kv[1]))
    depths = {}
    for (layer, _), values in ranked:
        depths[_depth(layer, n_layers)] = depths.get(_depth(layer, n_layers), 0.0) + sum(values) / total
    where = max(depths, key=depths.get)
    top = ", ".join(f"layer {layer} ({kind}, {sum(v) / total:.0%})" for (layer, kind), v in ranked[:4] if sum(v) > 0)
    per_head = {kind: sum(v) / len(v) for kind, v in kinds.items()}
    more = max(per_head, key=per_head.get)
    label = {"attention": "full-attention", "gdn": "GDN"}
    kind_text = ", ".join(f"{label[k]} {_fmt(v, 3)}" for k, v in per_head.items())
    return (f"Layers: mostly {where} ({depths[where]:.0%} of {what}): {top}. Per head, {label[more]} heads carry "
            f"more ({kind_text}).")


def answers(heads: list[dict], s: dict, null: dict) -> list[dict]:
    """Seed 002's questions about a behavioral fine-tune, answered in plain language from this diff. When no head
    beats the null, where the raw change sits is still said, marked as such."""
    sig = sorted((h for h in heads if h["significant"]), key=lambda h: -_carried(h))
    if sig:
        where = _where_answer(heads, _carried, "the change beyond the null")
    elif any(h["matrix_distance"] > 0 for h in heads):
        where = "Nothing beyond the null. " + _where_answer(heads, lambda h: h["matrix_distance"],
                                                             "all the change, null included")
    else:
        where = "Nothing changed."
    rank = (f"{s['heads_for_90_percent']} heads carry 90% of the change beyond the null. For the effective rank of "
            f"the weight update itself (would rank 64 do?) run `toolkit analyze rank RUN`." if sig else
            "Nothing to rank: no head changed beyond the null.")
    out = [{"question": "Which heads did the fine-tune change?", "answer": _which_answer(heads, sig, null)},
           {"question": "Which layers, and GDN or full-attention heads?", "answer": where},
           {"question": "Is the change concentrated or distributed?", "answer": s["concentration"]},
           {"question": "How many heads does the change need?", "answer": rank}]
    if null["kind"] == "propagated":
        out.append({"question": "What does significant mean here?", "answer": (
            "Without a control, significant means a head's own parameters moved its token mixing beyond what its "
            "changed inputs alone do. Every fine-tune does that to the heads it trains, so it cannot tell the "
            "behavior from generic fine-tuning drift: pass --control RUN, a fine-tune of the same length on "
            "neutral data (README: head-diff).")})
    return out


# ---------------------------------------------------------------- reports


def _fmt(x, digits=4):
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def write_markdown(result: dict, path: Path):
    s, null = result["summary"], result["null"]
    against = f"control run {result['control']}" if null["kind"] == "control" else "propagated change"
    probes = (f"Probes: {result['n_prompts']} ({result['prompts']}), at most {result['max_tokens']} tokens each. "
              f"Null: {against}; {null['test']}; {null['correction']} at {null['alpha']}.")
    lines = [f"# Head diff: {result['base']} -> {result['tuned']}", "", probes, "", "## Answers", ""]
    lines += [f"- **{a['question']}** {a['answer']}" for a in s["answers"]]
    lines.append("")
    for kind, label in (("attention", "Full-attention heads (score: mean JSD, bits)"),
                        ("gdn", "GDN heads (score: implicit-matrix normalized distance)")):
        k = s["by_kind"][kind]
        if not k["n_heads"]:
            continue
        lines += [f"### {label}", "", f"{k['n_significant']} of {k['n_heads']} significant; {k['n_direct']} direct.",
                  "", "| head | score | null | excess | p (BH) | significant | direct |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {t['name']} | {_fmt(t['score'])} | {_fmt(t['null_score'])} | {_fmt(t['excess'])} | "
                  f"{_fmt(t['p_corrected'], 3)} | {_fmt(t['significant'])} | {_fmt(t['direct'])} |" for t in k["top"]]
        lines.append("")
    lines += ["### By layer", "", "| layer | kind | change beyond null | share | significant |",
              "|---|---|---|---|---|"]
    lines += [f"| {layer} | {e['kind']} | {_fmt(e['total'])} | {e['share']:.0%} | {e['n_significant']}/{e['n_heads']} |"
              for layer, e in s["by_layer"].items()]
    lines += ["", "## Every head", "",
              ("| head | kind | score | direct score | propagated | null | ratio | effect | p (BH) | sig | direct "
               "| weight d |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for h in result["heads"]:
        lines.append(f"| {h['name']} | {h['kind']} | {_fmt(h['score'])} | {_fmt(h['direct_score'])} | "
                     f"{_fmt(h['propagated_score'])} | {_fmt(h['null_score'])} | {_fmt(h['ratio_to_null'], 3)} | "
                     f"{_fmt(h['effect_size'], 3)} | {_fmt(h['p_corrected'], 3)} | {_fmt(h['significant'])} | "
                     f"{_fmt(h['direct'])} | {_fmt(h['weight_rel_change'])} |")
    gdn = [h for h in result["heads"] if h["kind"] == "gdn"]
    if gdn:
        header = "| head | beta W1 (base split) | beta d | tau W1 (base split) | tau KS | tau d | d A_log | d dt_bias |"
        lines += ["", "## GDN gates", "", header, "|---|---|---|---|---|---|---|---|"]
        for h in gdn:
            b, t, g = h["beta"], h["decay_timescale"], h["gates"]
            lines.append(f"| {h['name']} | {_fmt(b['wasserstein'])} ({_fmt(b['wasserstein_base_split'])}) | "
                         f"{_fmt(b['effect_size'], 3)} | {_fmt(t['wasserstein'])} "
                         f"({_fmt(t['wasserstein_base_split'])}) | {_fmt(t['ks_stat'], 3)} | "
                         f"{_fmt(t['effect_size'], 3)} | "
                         f"{_fmt(g.get('A_log', {}).get('delta'))} | {_fmt(g.get('dt_bias', {}).get('delta'))} |")
    lines += ["", "## How to read this", "",
              ("- score: attention = mean Jensen-Shannon divergence per query row (bits); GDN = "
               "||A_after - A_before||_F / ||A_before||_F of the exact implicit attention matrix (core output = A V)."),
              ("- null: the control's change of the head, or without a control its propagated change (base "
               "parameters on the tuned inputs). excess = score - null; ratio = how many times as far the head's "
               "mixing matrix moved as under the null; effect = mean / std of the per-probe differences."),
              f"- significant: {null['test']}, {null['correction']}-corrected p < {null['alpha']}.",
              "- direct: the head's own weights moved (beyond fp32 round-off); otherwise any change is propagated.",
              "- tau = -1/g, the decay timescale in tokens; W1 in brackets is the base model's own even/odd-probe W1.",
              ""]
    path.write_text("\n".join(lines))


def write_plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    heads = result["heads"]
    fig, ax = plt.subplots(figsize=(min(40, max(6, 0.3 * len(heads))), 4))
    colors = ["tab:red" if h["kind"] == "attention" else "tab:blue" for h in heads]
    ax.bar(range(len(heads)), [h["excess_distance"] for h in heads], color=colors,
           edgecolor=["black" if h["significant"] else "none" for h in heads])
    if len(heads) <= 128:
        ax.set_xticks(range(len(heads)))
        ax.set_xticklabels([h["name"] for h in heads], rotation=90, fontsize=6)
    ax.set_ylabel("change beyond the null (normalized distance)")
    ax.set_title("Head change beyond the null (red: attention, blue: GDN; outlined: significant)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def _figure_patterns(result: dict, base: ModelCapture, tuned: ModelCapture, k: int = 6) -> list[dict]:
    """Before/after matrices on the figure probe of the top significant heads (or, when none is, of the heads that
    changed most)."""
    after = tuned.prompts[FIGURE_PROBE].get("patterns") or {}
    ref = base.prompts[FIGURE_PROBE]
    top = [t for t in result["summary"]["top_heads"] if t["significant"]]
    if not top:
        top = [h for h in sorted(result["heads"], key=lambda h: -h["matrix_distance"]) if h["score"] > SCORE_FLOOR]
    out = []
    for t in top[:k]:
        name = t["name"]
        before = ref["attention"].get(name)
        if before is None:
            before = ref["gdn"][name]["implicit"]
        if name in after:
            out.append({"name": name, "kind": t["kind"], "before": before.numpy(), "after": after[name].numpy()})
    return out


def run_head_diff(base: str | Path, tuned: str | Path, prompts_jsonl: str | Path, out_dir: str | Path,
                  base_model: str | None = None, max_tokens: int = DEFAULT_MAX_TOKENS, device: str | None = None,
                  plot: bool = True, control: str | Path | None = None, alpha: float = ALPHA,
                  min_fold: float = MIN_FOLD) -> dict:
    """Diff every head of `tuned` against `base` on the probes in `prompts_jsonl`, tested against `control`'s change
    (a run of the same length on neutral data) or, without one, against each head's propagated change.

    Writes OUT/head_diff.json (everything below), .md (readable), .html (heatmaps, top heads' patterns, answers)
    and .png (bar chart; with `plot` and matplotlib, which also draw the html's pattern figures). `base_model` is
    the base for an adapter given as `tuned`/`control` when it cannot be read from the run dir / adapter config.
    All models are tokenized with the base's tokenizer; one model is in memory at a time.
    """
    from analysis.report_head_diff import pattern_figures, write_html

    out_dir = Path(out_dir)
    rows = read_prompts(prompts_jsonl)
    if not rows:
        raise ValueError(f"{prompts_jsonl}: no probes")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_capture_model(base, device=device)
    texts = [prompt_text(r, tokenizer) for r in rows]
    base_cap = capture_model(model, texts, tokenizer, max_tokens, device, keep_mixers=True)
    del model
    tuned_cap = capture_against(tuned, base_cap, texts, tokenizer, max_tokens, device, base_model,
                                swap_in=base_cap.mixers, keep_patterns=FIGURE_PROBE)
    base_cap.mixers = None
    control_cap = (capture_against(control, base_cap, texts, tokenizer, max_tokens, device, base_model)
                   if control is not None else None)
    result = {"base": str(base), "tuned": str(tuned), "control": str(control) if control is not None else None,
              "prompts": str(prompts_jsonl), "max_tokens": max_tokens,
              "figure_probe": {"index": FIGURE_PROBE, "text": texts[FIGURE_PROBE][:200]},
              **diff_captures(base_cap, tuned_cap, control_cap, alpha, min_fold)}
    result = _jsonable(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "head_diff.json").write_text(json.dumps(result, indent=2))
    write_markdown(result, out_dir / "head_diff.md")
    figures = pattern_figures(_figure_patterns(result, base_cap, tuned_cap)) if plot else []
    write_html(result, out_dir / "head_diff.html", figures)
    if plot and write_plot(result, out_dir / "head_diff.png"):
        result["plot"] = str(out_dir / "head_diff.png")
    return result
