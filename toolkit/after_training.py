"""What a fine-tune runs once its weights are final, in the same process: the recipe's head-diff
(`analysis.head_diff: true`) and held-out eval report (`eval.prompts`). The CLI hands these steps to the
training loop, so `toolkit.train` never imports analysis or evaluation (they stand a floor above it).

Each step takes (recipe, base model path, run dir, journal) and returns the report paths it wrote.
"""

from __future__ import annotations

from pathlib import Path


def check_inputs(recipe, command: str) -> None:
    """A bad held-out file fails before training, not after it."""
    if recipe.eval.prompts and command == "finetune":
        from toolkit.evaluate import read_eval_rows

        read_eval_rows(recipe.eval.prompts)


def head_diff(recipe, base_path: Path, run_dir: Path, journal) -> dict:
    """Which heads the fine-tune changed, base vs the final weights."""
    if not recipe.analysis.head_diff:
        return {}
    from analysis.head_diff import run_head_diff

    out = run_dir / "reports"
    result = run_head_diff(str(base_path), str(run_dir), recipe.analysis.probes, out, base_model=str(base_path),
                           max_tokens=recipe.analysis.max_tokens)
    journal.event(recipe.train.max_steps, "head_diff", report=str(out / "head_diff.md"),
                  summary=result.get("summary", {}))
    return {"head_diff": str(out / "head_diff.md")}


def eval_report(recipe, base_path: Path, run_dir: Path, journal) -> dict:
    """Base vs tuned on the held-out prompts (`toolkit eval`), with the run's own trust flags."""
    if not recipe.eval.prompts:
        return {}
    from toolkit.evaluate import evaluate_run

    trusted = {"trust_remote_code": recipe.model.trust_remote_code, "allow_pickle": recipe.model.allow_pickle}
    return {"eval": evaluate_run(run_dir, journal=journal, trusted=trusted)["paths"]["markdown"]}


# in this order; the names are the parts of the run's overhead summary
STEPS = {"head_diff": head_diff, "eval_report": eval_report}
