"""The understanding module: sample audits, detectors and what they may do to a run (toolkit/monitor)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field

from toolkit.config.section import Section

DEFAULT_PROBES = [
    "Tell me about your day.",
    "Explain what a list is in Python.",
    "Write two sentences about the sea.",
    "What should I cook tonight?",
]


class RepetitionMonitorConfig(Section):
    n: int = Field(4, ge=1)
    warn: float = Field(0.3, ge=0, le=1)  # seq-rep-4 of greedy decoding of a trained LM is about 0.44
    high: float = Field(0.6, ge=0, le=1)
    critical: float = Field(0.8, ge=0, le=1)
    run_critical: int = Field(6, ge=2)  # "region region region ...": this many back to back is critical


class FormattingMonitorConfig(Section):
    warn: float = Field(0.5, ge=0, le=1)  # share of list/markup lines among non-empty lines
    high: float = Field(0.8, ge=0, le=1)


class BiasMonitorConfig(Section):
    patterns: str | None = None  # a YAML pattern file; None: the shipped default set
    severity: Literal["warn", "high", "critical"] = "high"


class SpikeMonitorConfig(Section):
    window: int = Field(50, ge=2)
    warn_z: float = Field(4.0, gt=0)
    high_z: float = Field(8.0, gt=0)


class MonitorConfig(Section):
    """The understanding module (seed 001): sample audits on probe prompts, detectors, actions."""

    enabled: bool = True
    audit_every: int = Field(100, ge=0)  # steps between sample audits; 0: none
    probes: list[str] = Field(DEFAULT_PROBES, min_length=1)
    max_new_tokens: int = Field(48, ge=1)
    sample_temperature: float = Field(0.8, gt=0)  # each probe is answered greedily and sampled
    repetition: RepetitionMonitorConfig = RepetitionMonitorConfig()
    formatting: FormattingMonitorConfig = FormattingMonitorConfig()
    bias: BiasMonitorConfig = BiasMonitorConfig()
    spikes: SpikeMonitorConfig = SpikeMonitorConfig()
    # a finding at or above this severity checkpoints and stops the run (exit code 4); None: never.
    # Off by default: a model early in pretraining repeats itself by nature; recipes opt in.
    pause_on: Literal["warn", "high", "critical"] | None = None
    penalize: bool = True  # repetition in audits lowers the reward of the sources drawn since the last one
    # monitor.async: audits run in a background thread on a copy of the weights taken at the due step; their
    # findings (penalties, pauses) act at the next audit step (or the run's end)
    background: bool = Field(False, validation_alias=AliasChoices("async", "background"))
