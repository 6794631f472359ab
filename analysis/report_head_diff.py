"""head_diff.html: the head-diff report as one self-contained page (inline CSS, JS and SVG, base64 PNG figures).

    write_html(result, "reports/head_diff.html", pattern_figures(matrices))

Layer x head heatmaps, one per kind, drawn by a few lines of JS from the JSON embedded in the page (colour: change
beyond the null, the change itself or -log10 corrected p; black dot: significant and direct, ring: significant and
propagated; hover a cell for its numbers), the top heads' patterns before/after on one probe, and the answers to
seed 002's questions. A Content-Security-Policy forbids every fetch: the page works from a file, offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

from analysis.capture import ModelCapture
from analysis.head_diff_stats import SCORE_FLOOR
from analysis.head_diff_summary import _fmt

FIGURE_PROBE = 0  # the probe whose before/after patterns the report draws

CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; padding: 0 16px; }
h1 { font-size: 20px; } h2 { font-size: 17px; margin-top: 28px; } .muted { color: #666; }
dl.answers dt { font-weight: 600; margin-top: 10px; } dl.answers dd { margin: 2px 0 0 0; }
.controls { margin: 8px 0; } .controls label { margin-right: 16px; }
.map { overflow-x: auto; margin-bottom: 18px; } .map svg { display: block; }
.map text { font: 9px system-ui, sans-serif; fill: #444; }
table { border-collapse: collapse; font-size: 13px; } td, th { padding: 3px 8px; border-bottom: 1px solid #eee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 12px 0; } figure img { max-width: 100%; } figcaption { font-size: 13px; color: #444; }
"""

# Colour: white -> dark red over [0, 1] (negative and zero excess are white); black marks are significant heads.
JS = r"""
(function () {
  const data = JSON.parse(document.getElementById('head-data').textContent);
  const STOPS = [[247,247,247],[253,219,199],[244,165,130],[214,96,77],[178,24,43],[103,0,31]];
  const METRICS = {
    excess: [h => h.e, 'change beyond the null'],
    score: [h => h.s, 'change (score)'],
    logp: [h => -Math.log10(Math.max(h.p, 1e-300)), '-log10 corrected p'],
  };
  function colour(t) {
    t = Math.min(1, Math.max(0, t)) * (STOPS.length - 1);
    const i = Math.min(STOPS.length - 2, Math.floor(t)), f = t - i;
    const c = STOPS[i].map((v, k) => Math.round(v + f * (STOPS[i + 1][k] - v)));
    return 'rgb(' + c.join(',') + ')';
  }
  function fmt(x) { return x === null ? '-' : (typeof x === 'number' ? x.toPrecision(3) : String(x)); }
  function scaled(v, vmax, log) {
    if (!(v > 0) || !(vmax > 0)) return 0;
    return log ? 1 + Math.log10(v / vmax) / 3 : v / vmax;  // log: three decades below the maximum
  }
  function drawMap(kind, metric, log) {
    const el = document.getElementById('map-' + kind);
    const heads = data.heads.filter(h => h.k === kind);
    if (!heads.length) { el.innerHTML = '<p class="muted">No ' + kind + ' heads in this model.</p>'; return 0; }
    const layers = Array.from(new Set(heads.map(h => h.l))).sort((a, b) => a - b);
    const row = new Map(layers.map((l, i) => [l, i]));
    const nh = Math.max(...heads.map(h => h.h)) + 1;
    const cw = Math.max(7, Math.min(20, Math.floor(860 / nh)));
    const ch = Math.max(7, Math.min(16, Math.floor(760 / layers.length)));
    const left = 44, top = 16, w = left + nh * cw + 8, hgt = top + layers.length * ch + 8;
    const value = METRICS[metric][0];
    const vmax = Math.max(0, ...heads.map(value));
    const parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="' + w + '" height="' + hgt +
      '" role="img" aria-label="' + kind + ' heads">'];
    const every = Math.ceil(10 / ch), everyCol = Math.ceil(18 / cw);
    const label = (x, y, anchor, text) =>
      '<text x="' + x + '" y="' + y + '" text-anchor="' + anchor + '">' + text + '</text>';
    layers.forEach((l, i) => {
      if (i % every === 0) parts.push(label(left - 4, top + i * ch + ch - 1, 'end', 'L' + l));
    });
    for (let j = 0; j < nh; j += everyCol) parts.push(label(left + j * cw + cw / 2, top - 4, 'middle', j));
    for (const h of heads) {
      const x = left + h.h * cw, y = top + row.get(h.l) * ch;
      const tip = h.n + ' (' + kind + ')\nchange ' + fmt(h.s) + ', null ' + fmt(h.ns) + ', beyond null ' + fmt(h.e) +
        '\nratio ' + fmt(h.r) + ', p (BH) ' + fmt(h.p) + '\n' + (h.sig ? 'significant, ' : 'not significant, ') +
        (h.d ? 'direct' : 'propagated');
      parts.push('<rect class="cell" x="' + x + '" y="' + y + '" width="' + (cw - 1) + '" height="' + (ch - 1) +
        '" fill="' + colour(scaled(value(h), vmax, log)) + '"><title>' + tip + '</title></rect>');
      if (h.sig) {
        const r = Math.max(1.5, Math.min(cw, ch) / 4);
        const mark = h.d ? 'fill="#000"' : 'fill="none" stroke="#000" stroke-width="1.2"';
        const cx = x + (cw - 1) / 2, cy = y + (ch - 1) / 2;
        parts.push('<circle class="sig" cx="' + cx + '" cy="' + cy + '" r="' + r + '" ' + mark +
          ' pointer-events="none"/>');
      }
    }
    parts.push('</svg>');
    el.innerHTML = parts.join('');
    document.getElementById('legend-' + kind).textContent =
      METRICS[metric][1] + ': white = 0, darkest = ' + fmt(vmax) + (log ? ' (log scale, three decades)' : '');
    return heads.length;
  }
  function render() {
    const t0 = performance.now();
    const metric = document.getElementById('metric').value, log = document.getElementById('scale').value === 'log';
    let cells = 0;
    for (const kind of ['attention', 'gdn']) cells += drawMap(kind, metric, log);
    document.body.dataset.cells = cells;
    document.body.dataset.renderMs = (performance.now() - t0).toFixed(1);
    document.body.dataset.ready = '1';
  }
  document.getElementById('metric').addEventListener('change', render);
  document.getElementById('scale').addEventListener('change', render);
  render();
})();
"""


def _heads_payload(result: dict) -> list[dict]:
    def num(x):
        return x if isinstance(x, (int, float)) else None  # "inf" strings from the JSON stay out of the maths

    return [{"n": h["name"], "k": h["kind"], "l": h["layer"], "h": h["head"], "s": num(h["score"]),
             "ns": num(h["null_score"]), "e": num(h["excess"]), "r": num(h["ratio_to_null"]),
             "p": h["p_corrected"], "sig": h["significant"], "d": h["direct"]} for h in result["heads"]]


def pattern_figures(items: list[dict]) -> list[dict]:
    """Base64 PNGs of before / after / after - before for each {"name", "kind", "before", "after"} (T x T arrays)."""
    if not items:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out = []
    for item in items:
        before, after = item["before"], item["after"]
        fig, axes = plt.subplots(1, 3, figsize=(9, 3))
        label = "attention pattern" if item["kind"] == "attention" else "implicit attention A"
        vmax = max(abs(before).max(), abs(after).max()) or 1.0
        cmap = "viridis" if item["kind"] == "attention" else "RdBu_r"
        vmin = 0.0 if item["kind"] == "attention" else -vmax
        for ax, matrix, title in ((axes[0], before, "base"), (axes[1], after, "tuned")):
            ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_title(f"{item['name']} {title}", fontsize=9)
        diff = after - before
        span = abs(diff).max() or 1.0
        axes[2].imshow(diff, cmap="RdBu_r", vmin=-span, vmax=span, interpolation="nearest")
        axes[2].set_title(f"tuned - base (max {span:.2g})", fontsize=9)
        for ax in axes:
            ax.set_xlabel("key position", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[0].set_ylabel("query position", fontsize=8)
        fig.suptitle(label, fontsize=9)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        out.append({"name": item["name"], "kind": item["kind"], "png": base64.b64encode(buf.getvalue()).decode()})
    return out


def _answers_html(result: dict) -> str:
    items = "".join(f"<dt>{html.escape(a['question'])}</dt><dd>{html.escape(a['answer'])}</dd>"
                    for a in result["summary"]["answers"])
    return f'<dl class="answers">{items}</dl>'


def _cell(x) -> str:
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.4g}"
    return html.escape("-" if x is None else str(x))


def _top_table(result: dict, k: int = 30) -> str:
    cols = [("name", "head"), ("kind", "kind"), ("score", "change"), ("null_score", "null"), ("excess", "beyond null"),
            ("ratio_to_null", "ratio"), ("effect_size", "effect"), ("p_corrected", "p (BH)"),
            ("significant", "significant"), ("direct", "direct"), ("weight_rel_change", "weight change")]
    if result["null"]["kind"] == "control":
        cols.insert(6, ("fold_vs_typical", "fold vs typical"))
    rows = sorted(result["heads"], key=lambda h: (not h["significant"], -(h["excess_distance"] or 0.0)))[:k]
    head = "".join(f"<th>{label}</th>" for _, label in cols)
    body = "".join("<tr>" + "".join(f'<td class="num">{_cell(h.get(key))}</td>' if key not in ("name", "kind")
                                    else f"<td>{_cell(h[key])}</td>" for key, _ in cols) + "</tr>" for h in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figures_html(result: dict, figures: list[dict]) -> str:
    if not figures:
        return '<p class="muted">No pattern figures (matplotlib missing, plotting off, or no head changed).</p>'
    probe = result.get("figure_probe", {})
    parts = [(f'<p class="muted">Probe {probe.get("index", 0) + 1}: '
              f'<code id="figure-probe">{html.escape(probe.get("text", ""))}</code></p>')]
    for f in figures:
        parts.append(f'<figure><img alt="{html.escape(f["name"])} before and after" '
                     f'src="data:image/png;base64,{f["png"]}"><figcaption>{html.escape(f["name"])} ({f["kind"]})'
                     f'</figcaption></figure>')
    return "".join(parts)


def render_html(result: dict, figures: list[dict] | None = None) -> str:
    null = result["null"]
    against = (f"the control run <code>{html.escape(str(result.get('control')))}</code>" if null["kind"] == "control"
               else "each head's propagated change (base parameters on the tuned model's inputs)")
    payload = json.dumps({"heads": _heads_payload(result)}, separators=(",", ":")).replace("</", "<\\/")
    title = f"Head diff: {result['base']} → {result['tuned']}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="muted">{result['n_prompts']} probes from <code>{html.escape(str(result['prompts']))}</code>, at most
{result['max_tokens']} tokens each. Null: {against}. Test: {html.escape(null['test'])};
{html.escape(null['correction'])} at {null['alpha']}.</p>
<h2>Answers</h2>
{_answers_html(result)}
<h2>Heads by layer</h2>
<div class="controls"><label>colour <select id="metric"><option value="excess">change beyond the null</option>
<option value="score">change</option><option value="logp">-log10 corrected p</option></select></label>
<label>scale <select id="scale"><option value="linear">linear</option><option value="log">log</option></select></label>
<span class="muted">black dot: significant and direct; ring: significant, propagated only. Hover a cell.</span></div>
<h3>Full-attention heads</h3><p class="muted" id="legend-attention"></p><div class="map" id="map-attention"></div>
<h3>GDN heads</h3><p class="muted" id="legend-gdn"></p><div class="map" id="map-gdn"></div>
<h2>Top heads</h2>
{_top_table(result)}
<h2>Top heads' patterns, before and after</h2>
{_figures_html(result, figures or [])}
<script type="application/json" id="head-data">{payload}</script>
<script>{JS}</script>
</body></html>
"""


def write_html(result: dict, path: str | Path, figures: list[dict] | None = None) -> Path:
    path = Path(path)
    path.write_text(render_html(result, figures), encoding="utf-8")
    return path


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
