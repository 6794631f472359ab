"""Which heads changed between a base and a tuned model, and how much: full-attention heads and GDN heads.

    run_head_diff(base, tuned, prompts_jsonl, out_dir) -> dict   # writes head_diff.json, .md, .png

`base` and `tuned` are anything `analysis.capture.load_capture_model` takes: a model dir, a hub id, a PEFT
adapter dir, a LoRA run dir (adapter loaded onto its base and merged in memory, nothing written to disk) or a
full-model run dir, of any Hugging Face causal LM. Attention-only models (Llama, GPT-2) have attention heads
only; hybrids (Qwen3.5, Qwen3.5-MoE, Qwen3-Next) have GDN heads too. A multimodal checkpoint is analysed as
its text model (an adapter trained on the text model fits it).

Per full-attention head (`kind: attention`): mean Jensen-Shannon divergence (bits, in [0, 1]) between the
before and after attention distributions of each query row (rows 1..T-1: row 0 attends only to itself),
averaged over positions, then over prompts; mean row entropy change (bits); change in attention to the
previous token and to the first token; relative Frobenius change of the head's weights (its interleaved
q_proj query+gate rows, the k/v rows of its kv group, its o_proj columns).

Per GDN value head (`kind: gdn`): shift of the distribution of beta and of the decay timescale -1/g
(tokens of all prompts pooled): Wasserstein-1, two-sample KS, standardized mean difference (Cohen's d,
pooled std), plus the W1 between the base model's own values on the even and the odd prompts as a yardstick
for how much those distributions move with the probe set alone; A_log / dt_bias before, after, delta; the
relative Frobenius change of the head's weight slices; the implicit attention matrix A (core output = A @ V,
exact delta rule, see capture.py): ||A_after - A_before||_F / (||A_before||_F + eps), averaged over prompts.

Score, null and noise floor. Every head gets `score`, a mean over prompts of a paired per-prompt change
(attention: mean JSD; GDN: normalized implicit-matrix distance). Inference is deterministic, so the only
noise in a score is the choice of probes. The null is the standard error of that mean over prompts
(std / sqrt(n_prompts)): how far the score would move if the probe set were re-drawn. z = score / (null + eps)
is the one-sample t statistic, and a head is `above_noise` when z >= 3 and score > 1e-6 (fp32 round-off).
An untrained model has score 0 on every prompt, so null 0, z 0, never above noise; a change that shows on
one probe only has z ~ 1. We prefer it to split-half disagreement |score_A - score_B|, which is the same
idea estimated from a single arbitrary split. Caveat: a small but systematic change (every head downstream
of a changed layer moves a little on every prompt) is above noise by this test; use the score to judge size.

Cross-kind summaries (share of change by kind and layer, concentration) need one currency: JSD and the
implicit-matrix distance are different units. They use `matrix_distance`, the same normalized Frobenius
distance ||M_after - M_before||_F / ||M_before||_F of each head's token-mixing matrix (softmax pattern for
attention heads, implicit A for GDN heads), averaged over prompts; for GDN heads it equals the score.
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
Z_ABOVE = 3.0
SCORE_FLOOR = 1e-6
TOP_FRACTION = 0.10


# ---------------------------------------------------------------- metrics


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


def _mean_se(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean()) if arr.size else 0.0
    se = float(arr.std(ddof=1) / math.sqrt(arr.size)) if arr.size > 1 else float("inf")
    return mean, se


def _check_same_tokens(base: ModelCapture, tuned: ModelCapture):
    if len(base.prompts) != len(tuned.prompts):
        raise ValueError("base and tuned captures have different prompt counts")
    for i, (a, b) in enumerate(zip(base.prompts, tuned.prompts)):
        if a["tokens"] != b["tokens"]:
            raise ValueError(f"probe {i} tokenizes differently for base and tuned; use one tokenizer")
    if [h.name + h.kind for h in base.heads] != [h.name + h.kind for h in tuned.heads]:
        raise ValueError("base and tuned have different heads")


def _weight_change(base_w: dict | None, tuned_w: dict | None) -> tuple[float | None, dict]:
    if not base_w or not tuned_w:
        return None, {}
    parts = {k: relative_change(base_w[k], tuned_w[k]) for k in base_w if k in tuned_w}
    num = sum(float((tuned_w[k].double() - base_w[k].double()).norm() ** 2) for k in parts)
    den = sum(float(base_w[k].double().norm() ** 2) for k in parts)
    return math.sqrt(num) / (math.sqrt(den) + EPS), parts


def attention_head_diff(name: str, base: ModelCapture, tuned: ModelCapture) -> dict:
    jsd, dist, d_ent, d_prev, d_first = [], [], [], [], []
    for pb, pt in zip(base.prompts, tuned.prompts):
        P, Q = pb["attention"][name], pt["attention"][name]
        dist.append(relative_change(P, Q))
        if P.shape[0] < 2:
            jsd.append(0.0)
            continue
        rows = slice(1, None)
        jsd.append(float(js_divergence_rows(P[rows], Q[rows]).mean()))
        d_ent.append(float((_entropy_bits(Q[rows]) - _entropy_bits(P[rows])).mean()))
        idx = torch.arange(1, P.shape[0])
        d_prev.append(float((Q[idx, idx - 1] - P[idx, idx - 1]).mean()))
        d_first.append(float((Q[rows, 0] - P[rows, 0]).mean()))
    score, null = _mean_se(jsd)
    w, parts = _weight_change(base.weights.get(name), tuned.weights.get(name))
    return {
        "score": score, "null": null, "mean_jsd_bits": score, "matrix_distance": float(np.mean(dist)),
        "entropy_change_bits": float(np.mean(d_ent)) if d_ent else 0.0,
        "prev_token_attention_change": float(np.mean(d_prev)) if d_prev else 0.0,
        "first_token_attention_change": float(np.mean(d_first)) if d_first else 0.0,
        "weight_rel_change": w, "weight_rel_change_parts": parts,
    }


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


def gdn_head_diff(name: str, base: ModelCapture, tuned: ModelCapture) -> dict:
    dist = []
    for pb, pt in zip(base.prompts, tuned.prompts):
        dist.append(relative_change(pb["gdn"][name]["implicit"], pt["gdn"][name]["implicit"]))
    score, null = _mean_se(dist)

    def pooled(cap, key, fn=lambda x: x, which=slice(None)):
        vals = [fn(p["gdn"][name][key]).double().numpy() for p in cap.prompts[which]]
        return np.concatenate(vals) if vals else np.zeros(0)

    beta = _distribution_shift(pooled(base, "beta"), pooled(tuned, "beta"),
                               (pooled(base, "beta", which=slice(0, None, 2)),
                                pooled(base, "beta", which=slice(1, None, 2))))
    tau = _distribution_shift(pooled(base, "log_decay", _timescale), pooled(tuned, "log_decay", _timescale),
                              (pooled(base, "log_decay", _timescale, slice(0, None, 2)),
                               pooled(base, "log_decay", _timescale, slice(1, None, 2))))
    bw, tw = base.weights.get(name) or {}, tuned.weights.get(name) or {}
    gates = {}
    for key in ("A_log", "dt_bias"):
        if key in bw and key in tw:
            before, after = float(bw[key][0]), float(tw[key][0])
            gates[key] = {"before": before, "after": after, "delta": after - before, "changed": before != after}
    w, parts = _weight_change(bw, tw)
    return {"score": score, "null": null, "implicit_distance": score, "matrix_distance": score,
            "beta": beta, "decay_timescale": tau, "gates": gates,
            "weight_rel_change": w, "weight_rel_change_parts": parts}


# ---------------------------------------------------------------- diff and summary


def diff_captures(base: ModelCapture, tuned: ModelCapture) -> dict:
    _check_same_tokens(base, tuned)
    heads = []
    for h in base.heads:
        fn = attention_head_diff if h.kind == "attention" else gdn_head_diff
        row = {"name": h.name, "kind": h.kind, "layer": h.layer, "head": h.head, **fn(h.name, base, tuned)}
        row["z"] = row["score"] / (row["null"] + EPS) if math.isfinite(row["null"]) else 0.0
        row["above_noise"] = bool(row["z"] >= Z_ABOVE and row["score"] > SCORE_FLOOR)
        heads.append(row)
    return {"n_prompts": len(base.prompts), "heads": heads, "summary": summarize(heads)}


def summarize(heads: list[dict], top_k: int = 10) -> dict:
    by_kind = {}
    for kind in ("attention", "gdn"):
        rows = sorted((h for h in heads if h["kind"] == kind), key=lambda h: -h["score"])
        by_kind[kind] = {
            "n_heads": len(rows), "n_above_noise": sum(h["above_noise"] for h in rows),
            "top": [{"name": h["name"], "score": h["score"], "z": h["z"], "above_noise": h["above_noise"]}
                    for h in rows[:top_k]],
        }
    total = sum(h["matrix_distance"] for h in heads)
    share = {kind: (sum(h["matrix_distance"] for h in heads if h["kind"] == kind) / total if total > 0 else 0.0)
             for kind in ("attention", "gdn")}
    mean_by_kind = {kind: float(np.mean([h["matrix_distance"] for h in heads if h["kind"] == kind] or [0.0]))
                    for kind in ("attention", "gdn")}
    layers = {}
    for h in heads:
        entry = layers.setdefault(h["layer"], {"kind": h["kind"], "total": 0.0, "n_heads": 0, "n_above_noise": 0})
        entry["total"] += h["matrix_distance"]
        entry["n_heads"] += 1
        entry["n_above_noise"] += h["above_noise"]
    for entry in layers.values():
        entry["mean"] = entry["total"] / entry["n_heads"]
        entry["share"] = entry["total"] / total if total > 0 else 0.0
    ranked = sorted(heads, key=lambda h: -h["matrix_distance"])
    n_top = max(1, math.ceil(TOP_FRACTION * len(heads)))
    top_share = sum(h["matrix_distance"] for h in ranked[:n_top]) / total if total > 0 else 0.0
    if total == 0:
        verdict = "No head changed: base and tuned compute the same token mixing on these probes."
    else:
        if top_share >= 0.5:
            shape = "concentrated"
        elif top_share >= 0.25:
            shape = "moderately concentrated"
        else:
            shape = "distributed"
        verdict = (f"The change is {shape}: the top {n_top} of {len(heads)} heads ({TOP_FRACTION:.0%}) carry "
                   f"{top_share:.0%} of the total change (an even spread would give {n_top / len(heads):.0%}).")
    more = max(mean_by_kind, key=mean_by_kind.get)
    return {
        "top_heads": [{"name": h["name"], "kind": h["kind"], "score": h["score"],
                       "matrix_distance": h["matrix_distance"], "above_noise": h["above_noise"]}
                      for h in ranked[:top_k]],
        "by_kind": by_kind,
        "share_of_change": share,
        "mean_change_per_head": mean_by_kind,
        "more_affected_kind": more if total > 0 else None,
        "by_layer": {str(k): v for k, v in sorted(layers.items())},
        "top_fraction_share": top_share,
        "top_fraction_heads": n_top,
        "concentration": verdict,
    }


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
    s = result["summary"]
    lines = [f"# Head diff: {result['base']} -> {result['tuned']}", "",
             f"Probes: {result['n_prompts']} ({result['prompts']}), at most {result['max_tokens']} tokens each.", "",
             "## Summary", "", s["concentration"], ""]
    share = s["share_of_change"]
    mean = s["mean_change_per_head"]
    lines += [f"Share of the total change (normalized mixing-matrix distance): full attention "
              f"{share['attention']:.0%}, GDN {share['gdn']:.0%}. Mean change per head: attention "
              f"{_fmt(mean['attention'])}, GDN {_fmt(mean['gdn'])}"
              + (f" — {s['more_affected_kind']} heads are more affected per head." if s["more_affected_kind"]
                 else "."), ""]
    for kind, label in (("attention", "Full-attention heads (score: mean JSD, bits)"),
                        ("gdn", "GDN heads (score: implicit-matrix normalized distance)")):
        k = s["by_kind"][kind]
        lines += [f"### {label}", "", f"{k['n_above_noise']} of {k['n_heads']} above noise (z >= {Z_ABOVE}).", "",
                  "| head | score | z | above noise |", "|---|---|---|---|"]
        lines += [f"| {t['name']} | {_fmt(t['score'])} | {_fmt(t['z'], 3)} | {_fmt(t['above_noise'])} |"
                  for t in k["top"]]
        lines.append("")
    lines += ["### By layer", "", "| layer | kind | total | mean per head | share | above noise |",
              "|---|---|---|---|---|---|"]
    for layer, e in s["by_layer"].items():
        lines.append(f"| {layer} | {e['kind']} | {_fmt(e['total'])} | {_fmt(e['mean'])} | {e['share']:.0%} | "
                     f"{e['n_above_noise']}/{e['n_heads']} |")
    lines += ["", "## Full-attention heads", "",
              "| head | JSD | null | z | above | mixing dist | d entropy | d prev-token | d first-token | weight d |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for h in result["heads"]:
        if h["kind"] == "attention":
            lines.append(f"| {h['name']} | {_fmt(h['score'])} | {_fmt(h['null'])} | {_fmt(h['z'], 3)} | "
                         f"{_fmt(h['above_noise'])} | {_fmt(h['matrix_distance'])} | {_fmt(h['entropy_change_bits'])} | "
                         f"{_fmt(h['prev_token_attention_change'])} | {_fmt(h['first_token_attention_change'])} | "
                         f"{_fmt(h['weight_rel_change'])} |")
    lines += ["", "## GDN heads", "",
              "| head | implicit dist | null | z | above | beta W1 (base split) | beta d | tau W1 (base split) | "
              "tau KS | tau d | d A_log | d dt_bias | weight d |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for h in result["heads"]:
        if h["kind"] == "gdn":
            b, t, g = h["beta"], h["decay_timescale"], h["gates"]
            lines.append(
                f"| {h['name']} | {_fmt(h['score'])} | {_fmt(h['null'])} | {_fmt(h['z'], 3)} | {_fmt(h['above_noise'])} | "
                f"{_fmt(b['wasserstein'])} ({_fmt(b['wasserstein_base_split'])}) | {_fmt(b['effect_size'], 3)} | "
                f"{_fmt(t['wasserstein'])} ({_fmt(t['wasserstein_base_split'])}) | {_fmt(t['ks_stat'], 3)} | "
                f"{_fmt(t['effect_size'], 3)} | {_fmt(g.get('A_log', {}).get('delta'))} | "
                f"{_fmt(g.get('dt_bias', {}).get('delta'))} | {_fmt(h['weight_rel_change'])} |")
    lines += ["", "## How to read this", "",
              "- score: attention = mean Jensen-Shannon divergence per query row (bits); GDN = "
              "||A_after - A_before||_F / ||A_before||_F of the exact implicit attention matrix (core output = A V).",
              "- null: standard error of the score over probes (how much it moves with the probe set); "
              f"z = score / null; above noise when z >= {Z_ABOVE} and score > {SCORE_FLOOR}.",
              "- Cross-kind shares use the normalized distance of each head's token-mixing matrix (pattern or A).",
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
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(heads)), 4))
    colors = ["tab:red" if h["kind"] == "attention" else "tab:blue" for h in heads]
    ax.bar(range(len(heads)), [h["matrix_distance"] for h in heads], color=colors,
           edgecolor=["black" if h["above_noise"] else "none" for h in heads])
    ax.set_xticks(range(len(heads)))
    ax.set_xticklabels([h["name"] for h in heads], rotation=90, fontsize=6)
    ax.set_ylabel("normalized mixing-matrix distance")
    ax.set_title("Head change (red: attention, blue: GDN; outlined: above noise)", fontsize=9)
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


def run_head_diff(base: str | Path, tuned: str | Path, prompts_jsonl: str | Path, out_dir: str | Path,
                  base_model: str | None = None, max_tokens: int = DEFAULT_MAX_TOKENS, device: str | None = None,
                  plot: bool = True) -> dict:
    """Diff every head of `tuned` against `base` on the probes in `prompts_jsonl`.

    Writes OUT/head_diff.json (everything below), OUT/head_diff.md (readable) and OUT/head_diff.png (per-head
    bar chart, when matplotlib is installed). `base_model` is the base for an adapter given as `tuned` when
    it cannot be read from the run dir / adapter config. Both models are tokenized with the base's tokenizer.
    """
    out_dir = Path(out_dir)
    rows = read_prompts(prompts_jsonl)
    if not rows:
        raise ValueError(f"{prompts_jsonl}: no probes")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_capture_model(base, device=device)  # one model in memory at a time
    texts = [prompt_text(r, tokenizer) for r in rows]
    base_cap = capture_model(model, texts, tokenizer, max_tokens, device)
    del model
    tuned_model, _ = load_capture_model(tuned, base=base_model, device=device)
    tuned_cap = capture_model(tuned_model, texts, tokenizer, max_tokens, device)
    del tuned_model
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"base": str(base), "tuned": str(tuned), "prompts": str(prompts_jsonl), "max_tokens": max_tokens,
              **diff_captures(base_cap, tuned_cap)}
    result = _jsonable(result)
    (out_dir / "head_diff.json").write_text(json.dumps(result, indent=2))
    write_markdown(result, out_dir / "head_diff.md")
    if plot and write_plot(result, out_dir / "head_diff.png"):
        result["plot"] = str(out_dir / "head_diff.png")
    return result
