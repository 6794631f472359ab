"""head-diff's null, measured on the demo: how many heads each criterion calls changed (a benchmark, not a test).

Needs the demo's runs and a control: a LoRA fine-tune of the same recipe and length on neutral text (Python
docstrings) with the dream loop off. From the repository root:

    toolkit demo                                   # runs/demo-pretrain/model (base), runs/demo (fine-tune)
    CONTROL=(--set 'data.sources=[{name: tier1, builtin: python-docs, tier: 1}]' --set dream.enabled=false
             --set 'curriculum.caps={}' --set analysis.head_diff=false)
    toolkit finetune recipes/demo.yaml --set run.name=demo-control --set run.output_dir=runs/demo-control \
        "${CONTROL[@]}"
    toolkit finetune recipes/demo.yaml --set run.name=demo-control-seed1 --set run.output_dir=runs/demo-control-seed1 \
        --set run.seed=1 "${CONTROL[@]}"           # optional: a second control, for control-vs-control
    .venv/bin/python benchmarks/head_diff.py [--runs runs] [--timing]

Prints, on the demo's probes (recipes/data/directive-eval.jsonl):
- heads called changed in the demo fine-tune and in the control fine-tune: before (z = mean / standard error
  over probes >= 3 and score > 1e-6, the old noise floor, recomputed from the same per-probe scores) and after
  (significant against the propagated null; against the control);
- the control seed 1 against control seed 0 as its control: every significant head there is a false positive;
- planted heads on the demo's base (L3.H1 query rows replaced by 3x-std noise, L1.H1 A_log - 6, as
  issue 13 measured): how many of the 14 untouched heads each criterion calls changed;
- the demo fine-tune with the same two heads planted on top, against the control: are they, and only they, found;
- with --timing, the wall time of a full run_head_diff of 64 probes x 128 tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from analysis.capture import attention_head_slices, capture_model, load_capture_model, prompt_text, read_prompts
from analysis.head_diff import capture_against, diff_captures, run_head_diff

PROBES = Path("recipes/data/directive-eval.jsonl")
PLANTED = {"L3.H1", "L1.H1"}
TIMING_PROMPTS, TIMING_TOKENS = 64, 128


def old_above_noise(cap, name: str) -> bool:
    """The old criterion: z = mean / (std / sqrt(n)) >= 3 and mean > 1e-6 of the per-probe scores."""
    scores = np.array([p["change"][name]["score"] for p in cap.prompts])
    se = scores.std(ddof=1) / math.sqrt(len(scores))
    return bool(scores.mean() / (se + 1e-12) >= 3.0 and scores.mean() > 1e-6)


def plant(model) -> None:
    with torch.no_grad():
        attn = model.model.layers[3].self_attn
        rows = attention_head_slices(attn, 1)["q_proj"][:attn.head_dim]
        rows.copy_(torch.randn(rows.shape, generator=torch.Generator().manual_seed(2)) * rows.std() * 3)
        model.model.layers[1].linear_attn.A_log[1] -= 6.0


def count(result: dict, names=None) -> str:
    heads = [h for h in result["heads"] if names is None or h["name"] in names]
    sig = [h["name"] for h in heads if h["significant"]]
    return f"{len(sig)}/{len(heads)}" + (f" ({', '.join(sig[:6])}{' ...' if len(sig) > 6 else ''})" if sig else "")


def old_count(cap, names) -> str:
    hits = [n for n in names if old_above_noise(cap, n)]
    return f"{len(hits)}/{len(names)}"


def top(result: dict, k: int = 5) -> list[str]:
    return [h["name"] for h in sorted(result["heads"], key=lambda h: -h["score"])[:k]]


def spearman(a: dict, b: dict) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr([h["score"] for h in a["heads"]], [h["score"] for h in b["heads"]]).statistic)


def measure(runs: Path) -> None:
    base_dir = runs / "demo-pretrain" / "model"
    model, tokenizer = load_capture_model(str(base_dir))
    texts = [prompt_text(r, tokenizer) for r in read_prompts(PROBES)]
    base = capture_model(model, texts, tokenizer, keep_mixers=True)
    del model
    names = [h.name for h in base.heads]

    def cap(path_or_model):
        return capture_against(path_or_model, base, texts, tokenizer, base_model=str(base_dir), swap_in=base.mixers)

    start = time.perf_counter()
    demo, control = cap(str(runs / "demo")), cap(str(runs / "demo-control"))
    seed1 = cap(str(runs / "demo-control-seed1")) if (runs / "demo-control-seed1").is_dir() else None
    planted_model, _ = load_capture_model(str(base_dir))
    plant(planted_model)
    planted = cap(planted_model)
    demo_model, _ = load_capture_model(str(runs / "demo"), base=str(base_dir))
    plant(demo_model)
    planted_demo = cap(demo_model)
    seconds = time.perf_counter() - start

    demo_r, control_r = diff_captures(base, demo), diff_captures(base, control)
    print(f"probes: {len(texts)} ({PROBES}); heads: {len(names)}; captures took {seconds:.0f} s\n")
    print("heads called changed                          before (z >= 3)   after")
    print(f"  demo fine-tune, no control                  {old_count(demo, names):>8}          {count(demo_r)}")
    print(f"  control fine-tune (python-docs), no control {old_count(control, names):>8}          "
          f"{count(control_r)}")
    with_control = diff_captures(base, demo, control)
    print(f"  demo fine-tune, --control demo-control      {'-':>8}          {count(with_control)}")
    if seed1 is not None:
        print(f"  control seed 1, --control demo-control      {old_count(seed1, names):>8}          "
              f"{count(diff_captures(base, seed1, control))}  (false positives)")
    untouched = [n for n in names if n not in PLANTED]
    planted_r = diff_captures(base, planted)
    print(f"  planted L1.H1 + L3.H1: untouched heads      {old_count(planted, untouched):>8}          "
          f"{count(planted_r, untouched)}")
    print(f"  planted L1.H1 + L3.H1: planted heads        {old_count(planted, sorted(PLANTED)):>8}          "
          f"{count(planted_r, PLANTED)}")
    print(f"  demo + the same planted heads, --control     {old_count(planted_demo, names):>8}          "
          f"{count(diff_captures(base, planted_demo, control))}")
    direct = {h["name"] for h in planted_r["heads"] if h["direct"]}
    print(f"\nplanted: direct heads {sorted(direct)}; demo: {demo_r['summary']['n_direct']}/{len(names)} direct")
    print(f"demo vs control: Spearman of per-head scores {spearman(demo_r, control_r):.2f}; "
          f"top-5 by score demo {top(demo_r)}, control {top(control_r)}")
    print(f"run-to-run (demo vs control): typical ratio {with_control['null']['run_to_run']['typical_ratio']:.2f}, "
          f"spread x/{with_control['null']['run_to_run']['ratio_spread']:.2f}")
    for a in with_control["summary"]["answers"]:
        print(f"- {a['question']} {a['answer']}")


def timing(runs: Path) -> None:
    from toolkit.model import load_tokenizer
    from toolkit.recipe import ModelConfig

    base = runs / "demo-pretrain" / "model"
    tokenizer = load_tokenizer(str(base), ModelConfig(name_or_path=str(base)))
    rows = [json.loads(line) for line in Path("recipes/data/directive-tier1.jsonl").read_text().splitlines()]
    words = " ".join(m["content"] for r in rows for m in r["messages"] if m["role"] != "system").split()
    texts = [" ".join(words[i * 7:] + words[:i * 7]) for i in range(TIMING_PROMPTS)]
    ids = [tokenizer(text)["input_ids"][:TIMING_TOKENS] for text in texts]
    probes = [{"text": tokenizer.decode(row)} for row in ids]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probes.jsonl"
        path.write_text("".join(json.dumps(p) + "\n" for p in probes))
        start = time.perf_counter()
        result = run_head_diff(str(base), str(runs / "demo"), path, Path(tmp) / "out", base_model=str(base),
                               max_tokens=TIMING_TOKENS, plot=False)
        seconds = time.perf_counter() - start
    print(f"\nhead-diff of {result['n_prompts']} prompts x {TIMING_TOKENS} tokens on tiny-hybrid "
          f"({len(result['heads'])} heads): {seconds:.1f} s wall")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="where demo-pretrain, demo, demo-control are")
    parser.add_argument("--timing", action="store_true", help="also time a 64 x 128-token run_head_diff")
    args = parser.parse_args()
    needed = [args.runs / "demo-pretrain" / "model" / "config.json", args.runs / "demo" / "adapter",
              args.runs / "demo-control" / "adapter"]
    if missing := [str(p) for p in needed if not p.exists()]:
        sys.exit(f"missing {', '.join(missing)}: build the demo and the control first (see this file's docstring)")
    measure(args.runs)
    if args.timing:
        timing(args.runs)


if __name__ == "__main__":
    main()
