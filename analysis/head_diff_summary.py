"""Seed 002's questions answered from head-diff's rows: which heads changed, where in depth, how concentrated
the change is, in plain sentences beside the numbers."""

from __future__ import annotations

import math

from analysis.head_diff_stats import MIN_FOLD

TOP_FRACTION = 0.10


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


def _fmt(x, digits=4):
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)
