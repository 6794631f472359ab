"""Held-out behavior evaluation: the run's base against its fine-tuned weights, on prompts never trained on.

    toolkit eval RUN --prompts recipes/data/directive-pairs-eval.jsonl
    # or at the end of `toolkit finetune`, when the recipe sets eval.prompts

Rows are {"prompt", "positive", "negative"}: a user message, the wanted reply and the unwanted one. Each model
(first the base, then the final weights: RUN/adapter on the base, or RUN/model) is measured the same way:

- margin = log p(positive | prompt) - log p(negative | prompt), each the summed log-probability of the reply
  as the assistant turn after the user's prompt under the chat template: exactly the tokens training puts
  loss on (`supervised_example`: the reply and the template's end-of-turn token), scored by the training
  loss itself (`token_loss_sum`). No system prompt: recipes with strip_instructions train the behavior
  without one, so this asks whether the disposition is in the weights.
- pass rate: greedy replies to each prompt (the dream loop's batched generation), judged by the recipe's
  dream evaluator, or DIRECTIVE_EVALUATOR when the recipe has none.

Reported: the mean margin of each model and the tuned - base difference with 95% t confidence intervals over
prompts (the difference is paired: the same prompts under both models), the pass rates and their paired
difference, and a few greedy replies side by side, in RUN/reports/eval.json and eval.md, and a journal event
`eval`. The run's own RUN/journal.jsonl also records an evaluation run later with `toolkit eval`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from toolkit.chat import chat_prompt, supervised_example
from toolkit.config.analysis import EvalConfig
from toolkit.config.evaluators import RulesEvaluatorConfig
from toolkit.data.batching import collate, to_device
from toolkit.data.formatting import Example
from toolkit.errors import ToolkitError
from toolkit.loss import token_loss_sum
from toolkit.util.jsonl import jsonl_rows
from toolkit.train.checkpoint import run_weights
from toolkit.weights import inference_placement

FIELDS = ("prompt", "positive", "negative")
CONFIDENCE = 0.95
# The directive behavior's rules (recipes/lora-r64.yaml's dream evaluator): acknowledge, don't counter-propose.
DIRECTIVE_EVALUATOR = RulesEvaluatorConfig(
    must_match=[r"(?i)\b(understood|sure|done|got it|will do|okay)\b"],
    must_not_match=[r"(?i)\b(instead|however|i would suggest|i suggest|i recommend|you should|better to)\b"],
)


# ---------------------------------------------------------------- inputs


def read_eval_rows(path: str | Path) -> list[dict]:
    """The rows of a pairs file; a missing file, a malformed line or a row without the three strings is an
    error naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError("held-out prompts file not found", where=str(path),
                           hint='a JSONL file of {"prompt", "positive", "negative"} rows')
    rows = []
    for where, row, problem in jsonl_rows(path):
        if problem:
            raise ToolkitError(problem, where=where)
        missing = [k for k in FIELDS if not isinstance(row.get(k), str) or not row[k].strip()]
        if missing:
            raise ToolkitError(f"the row needs a non-empty string {', '.join(repr(k) for k in missing)}", where=where,
                               hint='rows are {"prompt", "positive", "negative"}')
        rows.append({k: row[k] for k in FIELDS})
    if not rows:
        raise ToolkitError("no rows", where=str(path))
    return rows


# ---------------------------------------------------------------- measuring one model


@torch.no_grad()
def reply_logprob(model, tokenizer, prompt: str, reply: str) -> float:
    """Summed log p(reply and end-of-turn | user prompt) under the chat template: minus the training loss."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
    input_ids, labels = supervised_example(tokenizer, messages)
    batch = collate([Example(input_ids, labels, source="eval")], tokenizer.pad_token_id)
    return -float(token_loss_sum(model, to_device(batch, next(model.parameters()).device)))


def margins(model, tokenizer, rows: list[dict]) -> list[float]:
    """Per row: log p(positive | prompt) - log p(negative | prompt)."""
    return [reply_logprob(model, tokenizer, r["prompt"], r["positive"])
            - reply_logprob(model, tokenizer, r["prompt"], r["negative"]) for r in rows]


def score_model(model, tokenizer, rows: list[dict], evaluator, cfg: EvalConfig) -> dict:
    """One model's margins, greedy replies and verdicts on the rows (in eval mode: no dropout)."""
    from toolkit.text.generate import generate

    model.eval()
    prompts = [r["prompt"] for r in rows]
    chat_prompts = [chat_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    replies = generate(model, tokenizer, chat_prompts, temperature=0.0, max_new_tokens=cfg.max_new_tokens,
                       batch_size=cfg.batch_size, seed=0)
    return {"margins": margins(model, tokenizer, rows), "replies": replies,
            "verdicts": evaluator.evaluate(prompts, replies)}


# ---------------------------------------------------------------- comparing


def mean_ci(values: list[float]) -> dict:
    """Mean and its 95% t confidence interval over the values (None with fewer than two)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "ci95": None, "n": len(x)}
    sem = float(stats.sem(x))
    low, high = stats.t.interval(CONFIDENCE, len(x) - 1, loc=mean, scale=sem) if sem > 0 else (mean, mean)
    return {"mean": mean, "ci95": [float(low), float(high)], "n": len(x)}


def compare(rows: list[dict], base: dict, tuned: dict) -> dict:
    """The report's figures: margins and pass rates per model, paired tuned - base differences, per prompt."""
    base_pass = [float(v.passed) for v in base["verdicts"]]
    tuned_pass = [float(v.passed) for v in tuned["verdicts"]]
    return {
        "margin": {"base": mean_ci(base["margins"]), "tuned": mean_ci(tuned["margins"]),
                   "difference": mean_ci(np.subtract(tuned["margins"], base["margins"]).tolist())},
        "pass_rate": {"base": float(np.mean(base_pass)), "tuned": float(np.mean(tuned_pass)),
                      "difference": mean_ci(np.subtract(tuned_pass, base_pass).tolist())},
        "per_prompt": per_prompt(rows, base, tuned),
    }


def per_prompt(rows: list[dict], base: dict, tuned: dict) -> list[dict]:
    """Each prompt with both models' margin, greedy reply and verdict."""
    out = []
    for i, row in enumerate(rows):
        entry = {"prompt": row["prompt"]}
        for name, scores in (("base", base), ("tuned", tuned)):
            verdict = scores["verdicts"][i]
            entry.update({f"{name}_margin": scores["margins"][i], f"{name}_reply": scores["replies"][i],
                          f"{name}_passed": verdict.passed, f"{name}_reason": verdict.reason})
        out.append(entry)
    return out


# ---------------------------------------------------------------- reports


def _interval(stat: dict) -> str:
    ci = stat["ci95"]
    return f"{stat['mean']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")


def summary_lines(report: dict) -> list[str]:
    """The headline figures, for the terminal and the top of eval.md."""
    m, p = report["margin"], report["pass_rate"]
    source = f"{report['rows']} held-out prompts from {report['prompts']}; weights {report['weights']}"
    margin = (f"margin log p(positive) - log p(negative), mean [95% CI]: base {_interval(m['base'])}, "
              f"tuned {_interval(m['tuned'])}, tuned - base {_interval(m['difference'])}")
    passed = (f"pass rate ({report['evaluator']}): base {p['base']:.0%}, tuned {p['tuned']:.0%}, "
              f"tuned - base {_interval(p['difference'])}")
    return [source, margin, passed]


def _cell(text: str) -> str:
    """One table cell: on one line, printable, pipes escaped."""
    text = "".join(c if c.isprintable() else " " for c in text)
    return " ".join(text.split()).replace("|", "\\|") or " "


def markdown(report: dict, samples: int) -> str:
    lines = ["# Held-out evaluation", "", *[f"- {line}" for line in summary_lines(report)], ""]
    shown = report["per_prompt"][:samples]
    if shown:
        lines += [f"## Greedy replies, first {len(shown)}", "", "| prompt | base | tuned |", "|---|---|---|"]
        lines += [f"| {_cell(r['prompt'])} | {_cell(r['base_reply'])} | {_cell(r['tuned_reply'])} |" for r in shown]
    return "\n".join(lines) + "\n"


def write_reports(out: Path, report: dict, samples: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "eval.json", "markdown": out / "eval.md"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["markdown"].write_text(markdown(report, samples))
    return {k: str(v) for k, v in paths.items()}


# ---------------------------------------------------------------- a run directory


def base_model_path(recipe, run_dir: Path) -> str:
    """What the run trained from: RUN/base-model for tiny-hybrid, else the recipe's model."""
    from toolkit.model import TINY_HYBRID, resolve_model_path

    base_dir = run_dir / "base-model"
    if recipe.model.name_or_path == TINY_HYBRID and not (base_dir / "config.json").is_file():
        raise ToolkitError("the run's tiny-hybrid base is missing", where=str(base_dir))
    return resolve_model_path(recipe.model, base_dir, lambda: iter(()), recipe.run.seed)


def build_eval_evaluator(recipe, run_dir: Path):
    """(evaluator, what it is): the recipe's dream evaluator, else the directive rules."""
    from toolkit.dream.evaluators import build_evaluator

    cfg = recipe.dream.evaluator
    if cfg is not None:
        return build_evaluator(cfg, run_dir, recipe.model), f"the {cfg.kind} evaluator of dream.evaluator"
    return build_evaluator(DIRECTIVE_EVALUATOR, run_dir), "the default directive rules"


def score_base_and_tuned(model_cfg, base_path: str, weights: Path, rows: list[dict], evaluator,
                         cfg: EvalConfig) -> tuple[dict, dict]:
    """`score_model` of the base, then of the trained weights (an adapter on that same base, or a full model)."""
    from toolkit.lora import load_adapter
    from toolkit.model import load_model, load_tokenizer

    device, dtype = inference_placement()
    tokenizer = load_tokenizer(base_path, model_cfg)  # the tokenizer training used
    model = load_model(base_path, model_cfg, dtype=dtype).to(device)
    base = score_model(model, tokenizer, rows, evaluator, cfg)
    if weights.name == "adapter":
        model = load_adapter(model, weights, allow_pickle=model_cfg.allow_pickle)  # onto the base just scored
    else:
        del model
        model = load_model(str(weights), model_cfg, dtype=dtype).to(device)
    return base, score_model(model, tokenizer, rows, evaluator, cfg)


def evaluate_run(run_dir: str | Path, prompts: str | Path | None = None, journal=None, trusted: dict | None = None,
                 **settings) -> dict:
    """Evaluate a run directory's weights against its base on held-out prompts; write RUN/reports/eval.{json,md}
    and journal an `eval` event (into `journal`, else RUN/journal.jsonl). `prompts` and `settings` (EvalConfig
    fields) override the run recipe's eval section. `trusted` ({trust_remote_code, allow_pickle}) comes from
    the caller: the command line, or the training run's own recipe; None keeps both off, whatever the run
    directory's resolved recipe says (anyone who can write there would choose what code runs)."""
    from toolkit.journal import Journal
    from toolkit.recipe import load_recipe

    run_dir = Path(run_dir)
    if not (run_dir / "resolved_recipe.yaml").is_file():
        raise ToolkitError("not a run directory (no resolved_recipe.yaml)", where=str(run_dir))
    recipe = load_recipe(run_dir / "resolved_recipe.yaml").recipe
    cfg = recipe.eval.model_copy(update=settings)
    prompts = prompts or cfg.prompts
    if not prompts:
        raise ToolkitError("no held-out prompts: pass --prompts P.jsonl or set eval.prompts in the recipe",
                           where=str(run_dir))
    rows = read_eval_rows(prompts)
    weights, step = run_weights(run_dir)
    evaluator, evaluator_name = build_eval_evaluator(recipe, run_dir)
    base_path = base_model_path(recipe, run_dir)
    trusted = trusted or {"trust_remote_code": False, "allow_pickle": False}
    model_cfg = recipe.model.model_copy(update=trusted)
    base, tuned = score_base_and_tuned(model_cfg, base_path, weights, rows, evaluator, cfg)
    report = {"run": str(run_dir), "prompts": str(prompts), "rows": len(rows), "base": base_path,
              "weights": str(weights), "step": step, "evaluator": evaluator_name, "confidence": CONFIDENCE,
              **compare(rows, base, tuned)}
    report["paths"] = write_reports(run_dir / "reports", report, cfg.samples)
    journal = journal or Journal(run_dir / "journal.jsonl")
    journal.event(step or 0, "eval", **journal_data(report))
    return report


def journal_data(report: dict) -> dict:
    """The `eval` event: headline figures first (`toolkit journal` shows one line an event), then where from."""
    m, p = report["margin"], report["pass_rate"]
    return {"margin_difference": m["difference"]["mean"], "margin_difference_ci95": m["difference"]["ci95"],
            "margin_base": m["base"]["mean"], "margin_tuned": m["tuned"]["mean"], "pass_rate_base": p["base"],
            "pass_rate_tuned": p["tuned"], "rows": report["rows"], "prompts": report["prompts"],
            "weights": report["weights"], "evaluator": report["evaluator"], "report": report["paths"]["markdown"]}
