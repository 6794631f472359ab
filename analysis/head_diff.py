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
from analysis.head_diff_stats import (ALPHA, CORRECTION, EPS, MIN_FOLD, RUN_TEST, SCORE_FLOOR, TEST, correct,
                                      excess_test, probes_needed, run_to_run_test, smallest_p, versus_null)
from analysis.head_diff_summary import summarize
from analysis.report_head_diff import FIGURE_PROBE, _figure_patterns, _jsonable, write_markdown, write_plot

DIRECT_FLOOR = 1e-6  # relative weight change beyond fp32 round-off


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


# ---------------------------------------------------------------- reports


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
