"""The dream loop: scenario temperature, evaluators, what a failure becomes (toolkit/dream)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from toolkit.config.evaluators import EvaluatorConfig, reject_keys_of_other_kinds
from toolkit.config.section import Section


class TemperatureConfig(Section):
    """The scenario temperature (seed 003): adaptive = base + gain x the failure rate of the last
    `window` judged responses; schedule = [[until_progress, temperature], ...] by training progress; fixed = value."""

    mode: Literal["adaptive", "schedule", "fixed"] = "adaptive"
    base: float = Field(0.5, gt=0)
    gain: float = Field(0.7, ge=0)
    window: int = Field(20, ge=1)
    schedule: list[tuple[float, float]] = [(0.1, 1.2), (0.5, 0.9), (0.9, 0.7), (1.0, 0.5)]
    value: float = Field(0.7, gt=0)

    @field_validator("schedule")
    @classmethod
    def _increasing(cls, v):
        untils = [u for u, _ in v]
        if not v or untils != sorted(untils) or untils[-1] < 1.0 or any(t <= 0 for _, t in v):
            raise ValueError("schedule needs [until_progress, temperature] pairs in increasing order ending at 1.0, "
                             "temperatures > 0")
        return v


class FailureConfig(Section):
    """What a failed scenario becomes: `reference` (the seed's or a teacher's response), `best_of_k`
    (sample k answers, keep the best that passes: rejection sampling), `pairs` (chosen/rejected rows in
    TRL's preference format, written for later use)."""

    strategy: Literal["reference", "best_of_k", "pairs"] = "best_of_k"
    k: int = Field(4, ge=1)
    temperature: float = Field(0.8, gt=0)  # best_of_k sampling
    teacher: str | None = None  # a model dir, hub id, adapter dir or run dir answering when a seed has no reference


class DreamConfig(Section):
    """The dream loop (seed 003): the model writes scenarios from seed situations at the scenario
    temperature, answers them at the response temperature, an evaluator judges, and failures become
    training examples in a `dream` source the curriculum samples like any other."""

    enabled: bool = False
    every: int = Field(50, ge=1)  # steps between cycles during `toolkit finetune`
    seeds: str | None = None  # JSONL of {"situation", "tags", "tier", "reference"?}
    scenarios_per_cycle: int = Field(8, ge=1)
    samples_per_scenario: int = Field(2, ge=1)
    scenario_temperature: TemperatureConfig = TemperatureConfig()
    response_temperature: float = Field(0.1, gt=0)
    scenario_max_new_tokens: int = Field(48, ge=1)
    response_max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(32, ge=1)  # rows per generate call (left-padded, KV cache): a default cycle is one call
    # dream.async: the cycle runs in a background thread on a copy of the weights taken at the due step, and
    # its examples join the data at the next due step (or the run's end): training is not blocked
    background: bool = Field(False, validation_alias=AliasChoices("async", "background"))
    constitution: str | None = None  # text, or a path to a text file; in the prompt when generating only
    scenario_prompt: str = ("{constitution}Write one message a user might send in this situation: {situation}\n"
                            "Message:")
    evaluator: EvaluatorConfig | None = None
    on_failure: FailureConfig = FailureConfig()
    source: str = "dream"  # the curriculum source the new examples join
    tier: int | None = Field(None, ge=1, le=3)
    weight: float = Field(1.0, gt=0)
    pool_size: int = Field(2000, ge=1)  # most examples the dream source keeps
    retention: Literal["newest", "hardest"] = "newest"  # what stays when full: newest, or lowest pass rate
    zpd_floor: float = Field(0.1, ge=0, le=1)  # seed weight of scenarios always passed or always failed

    @field_validator("evaluator", mode="before")
    @classmethod
    def _evaluator_keys(cls, value):
        return reject_keys_of_other_kinds(value)

    @model_validator(mode="after")
    def _ready(self):
        if self.enabled and not self.seeds:
            raise ValueError("dream.enabled needs `seeds`: a JSONL file of seed situations")
        if self.enabled and self.evaluator is None:
            raise ValueError("dream.enabled needs an `evaluator`")
        return self
