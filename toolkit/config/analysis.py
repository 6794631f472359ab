"""End-of-run analysis and held-out evaluation (analysis/, toolkit/evaluate.py)."""

from __future__ import annotations

from pydantic import Field, model_validator

from toolkit.config.section import Section


class AnalysisConfig(Section):
    """Analyses run at the end of `toolkit finetune` (also available as `toolkit analyze ...`)."""

    head_diff: bool = False  # base vs tuned, per attention and GDN head: RUN/reports/head_diff.{json,md,png}
    probes: str | None = None  # JSONL of probe prompts ({"prompt"} | {"messages"} | {"text"})
    max_tokens: int = Field(256, ge=8)  # probes are cut to this many tokens

    @model_validator(mode="after")
    def _probes(self):
        if self.head_diff and not self.probes:
            raise ValueError("analysis.head_diff needs `probes`: a JSONL file of probe prompts")
        return self


class EvalConfig(Section):
    """Held-out behavior evaluation at the end of `toolkit finetune` (also `toolkit eval RUN`): base vs tuned
    log-prob margins and evaluator pass rates on prompts never trained on (toolkit/evaluate.py)."""

    prompts: str | None = None  # JSONL of {"prompt", "positive", "negative"}; unset: no evaluation
    max_new_tokens: int = Field(48, ge=1)  # greedy replies the evaluator judges
    batch_size: int = Field(8, ge=1)  # generation batch
    samples: int = Field(5, ge=0)  # greedy replies shown side by side in RUN/reports/eval.md
