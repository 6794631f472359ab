"""Which source each step draws from: warmup, phases, tiers, caps and floors, a sampler (toolkit/curriculum)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import AliasChoices, ConfigDict, Field, field_validator, model_validator

from toolkit.config.section import Section, reject_other_kinds


class PhaseConfig(Section):
    """A stretch of the run with its own sources or tiers, learning rate and dream temperature."""

    name: str
    # the step where the phase ends (exclusive): an integer step, or a fraction of train.max_steps
    # (a float in (0, 1]); the last phase may leave it out and runs to the end
    until: int | float | None = None
    sources: list[str] | None = None  # allowed source names; None: every source
    tiers: list[Annotated[int, Field(ge=1, le=3)]] | None = None  # allowed tiers; None: the tier order decides
    lr: float | Literal["adaptive"] | None = None  # absolute rate, or "adaptive" (within lr_range)
    lr_scale: float | None = Field(None, gt=0)  # or a multiple of train.lr
    lr_range: tuple[float, float] | None = None  # adaptive bounds; default (0.1 × train.lr, train.lr)
    dream_temperature: float | Literal["adaptive"] | None = None  # None: the dream section decides

    @model_validator(mode="after")
    def _one_lr(self):
        if self.lr is not None and self.lr_scale is not None:
            raise ValueError(f"phase '{self.name}' sets both lr and lr_scale; keep one")
        if isinstance(self.lr, float) and self.lr <= 0:
            raise ValueError(f"phase '{self.name}': lr must be positive")
        if self.lr_range is not None and not 0 < self.lr_range[0] <= self.lr_range[1]:
            raise ValueError(f"phase '{self.name}': lr_range must be [low, high] with 0 < low <= high")
        if isinstance(self.until, float) and not 0 < self.until <= 1:
            raise ValueError(f"phase '{self.name}': a fractional until must be in (0, 1]; write a step as an integer")
        return self


class RepetitionGuardConfig(Section):
    """Seed 000's failure: repetitive, list-shaped sources earn the best loss and a bandit feeds the
    model more of them. A source's repetition (seq-rep-n of its target tokens, 0..1) lowers its reward,
    and above `veto_above` the bandit may no longer choose it (its floor still holds)."""

    n: int = Field(4, ge=1)
    penalty: float = Field(1.0, ge=0)  # subtracted from the [0, 1] reward, times the repetition
    veto_above: float | None = Field(0.5, gt=0, le=1)  # None: never veto


SAMPLER_KEYS = {"ucb1": ("c", "window", "discount"), "exp3": ("gamma",)}
REWARD_KEYS = {"score": ("score_fn",)}


class CurriculumConfig(Section):
    """Which source each step draws from: warmup gate, phases, tier order, caps/floors, a sampler."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    # seed 000's curriculum_warmup_steps / curriculum_warmup_sources are accepted as aliases
    warmup_steps: int = Field(0, ge=0, validation_alias=AliasChoices("warmup_steps", "curriculum_warmup_steps"))
    warmup_sources: list[str] = Field(
        [], validation_alias=AliasChoices("warmup_sources", "curriculum_warmup_sources"))
    phases: list[PhaseConfig] = []
    # when tiers open (a phase's `tiers` overrides): one after another at equal shares of the run
    # (easy_to_hard, hard_to_easy, random: an order drawn from the run seed) or all at once (mixed)
    order: Literal["easy_to_hard", "hard_to_easy", "mixed", "random"] = "mixed"
    sampler: Literal["ucb1", "exp3", "weighted", "uniform"] = "weighted"
    c: float = Field(math.sqrt(2), ge=0)  # UCB1 exploration
    window: int | None = Field(None, ge=1)  # windowed UCB1: each source's last N rewards
    discount: float | None = Field(None, gt=0, lt=1)  # discounted UCB1
    gamma: float = Field(0.1, gt=0, le=1)  # EXP3 exploration
    reward: Literal["learning_progress", "neg_loss", "score"] = "learning_progress"
    score_fn: str | None = None  # "module:function" giving the reward when reward is "score"
    caps: dict[str, float] = {}  # most a source may take, as a share of draws
    floors: dict[str, float] = {}  # least a source gets while it is eligible
    share_window: int = Field(200, ge=1)  # caps and floors hold over the phase and over the last N draws
    repetition: RepetitionGuardConfig = RepetitionGuardConfig()

    @model_validator(mode="before")
    @classmethod
    def _kind_keys(cls, data):
        return reject_other_kinds(cls, reject_other_kinds(cls, data, "sampler", SAMPLER_KEYS), "reward", REWARD_KEYS)

    @field_validator("caps", "floors")
    @classmethod
    def _shares(cls, v):
        bad = {k: x for k, x in v.items() if not 0 <= x <= 1}
        if bad:
            raise ValueError(f"shares must be between 0 and 1: {bad}")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.window and self.discount:
            raise ValueError("set window or discount for UCB1, not both")
        if self.reward == "score" and not self.score_fn:
            raise ValueError("reward: score needs score_fn: 'module:function'")
        if self.warmup_steps and not self.warmup_sources:
            raise ValueError("warmup_steps is set but warmup_sources is empty")
        return self
