"""The curriculum: every step's learning rate and source, learned from every step's loss.

    lr     = curriculum.lr(step)                 # phase rate x the train schedule's shape
    source = curriculum.pick(step)               # warmup gate, phase, tiers, floors, caps, veto, sampler
    curriculum.observe(source, loss, examples, step)   # reward, repetition, failure rate

Decisions use the curriculum's own `random.Random`, seeded by the run seed, and rewards come from
the loss reduced across processes, so every rank makes the same draw at every step. `state_dict()`
holds everything; loading it under a recipe whose curriculum changed (the polish pivot) keeps the
bandit's statistics and loss history and applies the new mix from the resume step on.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import Counter, deque

from toolkit.curriculum.plan import CurriculumPlan, Phase
from toolkit.curriculum.rewards import LOSS_EMA, RewardScaler, raw_reward
from toolkit.curriculum.samplers import build_sampler
from toolkit.chat import IGNORE
from toolkit.curriculum.shares import ShareLimiter
from toolkit.errors import ToolkitError
from toolkit.text.repetition import seq_rep_n
from toolkit.util.imports import load_function
from toolkit.util.rng import rng_state, set_rng_state, stable_seed

FAILURE_WINDOW = 20  # steps behind the adaptive learning rate's failure rate (seed 003's window)
REPETITION_SAMPLE = 4  # examples per step whose repetition is measured (a running mean needs no more)


class Curriculum:
    def __init__(self, plan: CurriculumPlan, sources: list, seed: int):
        cfg = self.cfg = plan.cfg
        self.plan = plan
        self.sources = {s.name: s for s in sources}
        self.rng = random.Random(stable_seed(seed, "curriculum"))
        self.sampler = self._new_sampler()
        self.limits = ShareLimiter(cfg.caps, cfg.floors, cfg.share_window)
        self.scaler = RewardScaler()
        self.score_fn = load_function(cfg.score_fn, "curriculum.score_fn") if cfg.reward == "score" else None
        self.draws: Counter = Counter()
        self.running_loss: dict[str, float] = {}  # per source, for learning progress
        self.repetition: dict[str, float] = {}  # per source, running seq-rep-n of its targets
        self.loss_mean: float | None = None
        self.failures: deque = deque(maxlen=FAILURE_WINDOW)
        self.external_failure_rate: float | None = None  # the dream loop's, when it runs
        self.segment: tuple | None = None  # (phase, eligible names) of the stretch being drawn
        self.transition: dict | None = None  # set by pick() when a new stretch begins
        self.sampler_chose = False  # whether pick()'s last draw was the sampler's (not a floor's)
        self.pivot: dict | None = None  # set by load_state_dict() when the recipe's curriculum changed
        self._eligible: dict[int, list[str]] = {}
        self._bounds = plan.boundaries()

    # ---------------------------------------------------------------- decisions

    def phase(self, step: int) -> Phase:
        return self.plan.phase_at(step)

    def lr(self, step: int) -> float:
        return self.plan.lr_at(step, self.failure_rate())

    def failure_rate(self) -> float:
        if self.external_failure_rate is not None:
            return self.external_failure_rate
        return sum(self.failures) / len(self.failures) if self.failures else 0.5

    def eligible(self, step: int) -> list[str]:
        start = self._bounds[max(bisect.bisect_right(self._bounds, step) - 1, 0)]
        if start not in self._eligible:  # eligibility changes only at boundaries
            self._eligible[start] = self.plan.eligible(start)
        return self._eligible[start]

    def pick(self, step: int):
        eligible = [n for n in self.eligible(step) if self._has_examples(n)]
        if not eligible:
            raise ToolkitError(f"no source eligible at step {step} has examples yet "
                               f"({', '.join(self.eligible(step))})", key="curriculum.phases",
                               hint="let a source with data be drawn while the dream source fills")
        self._enter(step, eligible)
        name = self.limits.owed(eligible)
        self.sampler_chose = name is None  # a floor's draw teaches the sampler nothing it asked for
        if name is None:
            allowed = self.limits.under_cap(eligible)
            choices = [n for n in allowed if not self.vetoed(n)] or allowed
            name = self.sampler.choose(choices, self.rng)
        self.limits.record(name)
        self.draws[name] += 1
        return self.sources[name]

    def _has_examples(self, name: str) -> bool:
        source = self.sources.get(name)  # the dream source is absent outside fine-tuning
        if source is None:
            return False
        # a streamed source answers for itself (its length is unknown); the dream source is empty until
        # the first failure lands
        return source.has_examples() if hasattr(source, "has_examples") else len(source.train) > 0

    def vetoed(self, name: str) -> bool:
        veto = self.cfg.repetition.veto_above
        return veto is not None and self.repetition.get(name, 0.0) >= veto

    def _enter(self, step: int, eligible: list[str]) -> None:
        phase = self.plan.phase_at(step)
        segment = (phase.name, tuple(eligible))
        self.transition = None
        if segment != self.segment:
            self.segment = segment
            self.limits.new_segment()  # shares count afresh: a source that just opened owes nothing
            tiers, _ = self.plan.open_tiers(step)
            self.transition = {"phase": phase.name, "eligible": list(eligible), "tiers": tiers,
                               "lr": self.lr(step), "dream_temperature": phase.dream_temperature}

    # ---------------------------------------------------------------- learning

    def observe(self, source, loss: float, examples: list, step: int, score: float | None = None) -> float | None:
        """Learn from one step: the source's reward (returned, in [0, 1]), repetition and failure rate."""
        name = source.name
        guard = self.cfg.repetition
        if guard.penalty or guard.veto_above is not None:
            self.note_repetition(name, _target_repetition(examples[:REPETITION_SAMPLE], guard.n))
        if self.score_fn is not None and score is None:
            score = float(self.score_fn(source=name, loss=loss, examples=examples, step=step))
        raw = raw_reward(self.cfg.reward, loss, self.running_loss.get(name), score)
        self.running_loss[name] = _ema(self.running_loss.get(name), loss)
        self._note_failure(loss)
        if raw is None:
            return None
        reward = min(max(self.scaler(raw) - guard.penalty * self.repetition.get(name, 0.0), 0.0), 1.0)
        if self.sampler_chose:
            self.sampler.update(name, reward)
        return reward

    def note_repetition(self, name: str, repetition: float) -> None:
        """A repetition signal (0..1) for a source: its own data's, or the monitor's samples'."""
        self.repetition[name] = _ema(self.repetition.get(name), repetition)

    def note_failure_rate(self, rate: float | None) -> None:
        """The dream loop's failure rate drives adaptive learning rates when it runs."""
        self.external_failure_rate = rate

    def _note_failure(self, loss: float) -> None:
        if self.loss_mean is not None:
            self.failures.append(loss > self.loss_mean)  # a step that did worse than the running loss
        self.loss_mean = _ema(self.loss_mean, loss)

    def summary(self) -> dict:
        """Draws per source and the sampler's current scores, for the journal and plots."""
        eligible = list(self.segment[1]) if self.segment else []
        return {"draws": dict(self.draws), "shares": self.limits.shares(),
                "scores": {n: round(v, 4) if math.isfinite(v) else str(v)
                           for n, v in (self.sampler.scores(eligible) if eligible else {}).items()},
                "repetition": {n: round(r, 4) for n, r in self.repetition.items()}}

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict:
        return {
            "config": self.cfg.model_dump(mode="json"),
            "rng": rng_state(self.rng),
            "sampler": self.sampler.state_dict(),
            "limits": self.limits.state_dict(),
            "scaler": self.scaler.state_dict(),
            "draws": dict(self.draws),
            "running_loss": dict(self.running_loss),
            "repetition": dict(self.repetition),
            "loss_mean": self.loss_mean,
            "failures": list(self.failures),
            "external_failure_rate": self.external_failure_rate,
            "segment": [self.segment[0], list(self.segment[1])] if self.segment else None,
        }

    def load_state_dict(self, state: dict) -> None:
        set_rng_state(self.rng, state["rng"])
        self.scaler.load_state_dict(state["scaler"])
        self.draws = Counter(state["draws"])
        self.running_loss = dict(state["running_loss"])
        self.repetition = dict(state["repetition"])
        self.loss_mean = state["loss_mean"]
        self.failures = deque(state["failures"], maxlen=FAILURE_WINDOW)
        self.external_failure_rate = state["external_failure_rate"]
        changes = _changes(state["config"], self.cfg.model_dump(mode="json"))
        try:
            self.sampler.load_state_dict(state["sampler"])  # a sampler of another kind starts afresh
        except ValueError as exc:  # another kind or variant: its statistics mean something else
            changes["sampler_statistics"] = ["discarded", str(exc)]
        if changes:  # the polish pivot: new mix from here; statistics and history kept
            self.pivot = changes
            self.segment = None
            return
        self.limits.load_state_dict(state["limits"])
        self.segment = (state["segment"][0], tuple(state["segment"][1])) if state["segment"] else None

    def _new_sampler(self):
        cfg = self.cfg
        weights = {name: s.weight for name, s in self.sources.items()}
        return build_sampler(cfg.sampler, weights=weights, c=cfg.c, window=cfg.window, discount=cfg.discount,
                             gamma=cfg.gamma)


def _ema(previous: float | None, value: float) -> float:
    return value if previous is None else (1 - LOSS_EMA) * previous + LOSS_EMA * value


def _target_repetition(examples: list, n: int) -> float:
    """Mean seq-rep-n over the examples' target tokens (what the model is taught to produce)."""
    reps = [seq_rep_n([t for t, label in zip(e.input_ids, e.labels) if label != IGNORE], n) for e in examples]
    return sum(reps) / len(reps) if reps else 0.0


def _changes(old: dict, new: dict, prefix: str = "curriculum") -> dict:
    """{dotted key: [old, new]} for every value that differs."""
    out = {}
    for key in sorted(set(old) | set(new)):
        a, b, dotted = old.get(key), new.get(key), f"{prefix}.{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(_changes(a, b, dotted))
        elif a != b:
            out[dotted] = [a, b]
    return out
