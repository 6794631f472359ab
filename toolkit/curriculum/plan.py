"""What the recipe alone says about every step: the phase, its learning rate and dream temperature,
which sources may be drawn, and which recipe value decides it.

No data is read and no model is loaded, so `toolkit curriculum explain`, `toolkit curriculum plot`,
recipe validation and the training loop all answer from this one code path.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from toolkit.errors import ToolkitError, did_you_mean
from toolkit.curriculum.schedule import lr_multiplier


@dataclass(frozen=True)
class SourceInfo:
    name: str
    tier: int | None = None
    weight: float = 1.0


@dataclass(frozen=True)
class Phase:
    name: str
    index: int
    start: int  # first step (inclusive)
    end: int  # last step + 1
    lr: float | None  # base rate before the schedule's shape; None when adaptive
    lr_range: tuple[float, float] | None  # adaptive bounds
    dream_temperature: float | str | None
    key: str  # where the recipe sets it ("curriculum.phases.1"; "train.lr" for the implicit phase)


@dataclass(frozen=True)
class Gate:
    """Whether a source can be drawn at a step, why, and the recipe key that decides it."""

    allowed: bool
    reason: str
    key: str | None


class CurriculumPlan:
    def __init__(self, curriculum, sources: list[SourceInfo], train, seed: int):
        self.cfg = curriculum
        self.train = train
        self.sources = list(sources)
        self.names = [s.name for s in self.sources]
        self._by_name = {s.name: s for s in self.sources}
        self.max_steps = train.max_steps
        self.notes: list[dict] = []  # recipe settings the plan set aside (the loop journals them)
        self._check_names()
        self.phases = self._build_phases()
        self.tier_order, self.tier_opens = self._tier_schedule(seed)

    @classmethod
    def from_recipe(cls, recipe) -> "CurriculumPlan":
        infos = [SourceInfo(s.name, s.tier, s.weight) for s in recipe.data.sources]
        curriculum, notes = recipe.curriculum, []
        if recipe.dream.enabled:  # the dream loop's examples are a source like any other, of its own
            if recipe.dream.source in {s.name for s in infos}:
                raise ToolkitError(f"'{recipe.dream.source}' is already a data source's name", key="dream.source",
                                   hint="the dream loop's examples need a source of their own")
            infos.append(SourceInfo(recipe.dream.source, recipe.dream.tier, recipe.dream.weight))
        else:  # `--set dream.enabled=false` on a recipe whose caps/floors name the dream source: drop them
            curriculum, notes = _without_source(curriculum, recipe.dream.source, {s.name for s in infos})
        plan = cls(curriculum, infos, recipe.train, recipe.run.seed)
        plan.notes = notes + plan.notes
        return plan

    # ---------------------------------------------------------------- per step

    def phase_at(self, step: int) -> Phase:
        for phase in self.phases:
            if step < phase.end:
                return phase
        return self.phases[-1]

    def gate(self, name: str, step: int) -> Gate:
        """The first recipe rule that keeps `name` out at `step`, or why it is in."""
        cfg, source, phase = self.cfg, self._by_name[name], self.phase_at(step)
        in_warmup = step < cfg.warmup_steps
        if in_warmup and name not in cfg.warmup_sources:
            return Gate(False, f"step {step} < curriculum.warmup_steps = {cfg.warmup_steps} and '{name}' is not "
                               f"in curriculum.warmup_sources", "curriculum.warmup_steps")
        if phase.index >= 0 and self.cfg.phases[phase.index].sources is not None \
                and name not in self.cfg.phases[phase.index].sources:
            return Gate(False, f"phase '{phase.name}' (steps {phase.start}-{phase.end - 1}) does not list '{name}' "
                               f"in its sources", f"{phase.key}.sources")
        tiers, tiers_key = self.open_tiers(step)
        if tiers is not None and source.tier is None and tiers_key != "curriculum.order":
            return Gate(False, f"phase '{phase.name}' allows tiers {tiers} and '{name}' has no tier", tiers_key)
        if tiers is not None and source.tier is not None and source.tier not in tiers:
            opens = self.tier_opens.get(source.tier)
            why = (f"tier {source.tier} opens at step {opens} (curriculum.order: {cfg.order})"
                   if tiers_key == "curriculum.order" else f"phase '{phase.name}' allows tiers {tiers}")
            return Gate(False, f"'{name}' is tier {source.tier}; {why}", tiers_key)
        if cfg.caps.get(name) == 0:
            return Gate(False, f"curriculum.caps.{name} is 0", f"curriculum.caps.{name}")
        if in_warmup:
            return Gate(True, f"step {step} < curriculum.warmup_steps = {cfg.warmup_steps} and '{name}' is in "
                              f"curriculum.warmup_sources", "curriculum.warmup_sources")
        reason = f"phase '{phase.name}' allows it"
        if cfg.warmup_steps:
            reason = f"step {step} >= curriculum.warmup_steps = {cfg.warmup_steps}; " + reason
        return Gate(True, reason, phase.key)

    def eligible(self, step: int) -> list[str]:
        return [name for name in self.names if self.gate(name, step).allowed]

    def open_tiers(self, step: int) -> tuple[list[int] | None, str]:
        """Tiers allowed at `step` (None: no tier rule applies) and the key that sets them."""
        phase = self.phase_at(step)
        if phase.index >= 0 and self.cfg.phases[phase.index].tiers is not None:
            return sorted(self.cfg.phases[phase.index].tiers), f"{phase.key}.tiers"
        if self.cfg.order == "mixed" or not self.tier_order:
            return None, "curriculum.order"
        return sorted(t for t, opens in self.tier_opens.items() if opens <= step), "curriculum.order"

    def lr_at(self, step: int, failure_rate: float | None = None) -> float | None:
        """The learning rate at `step`: the phase's base rate times the train schedule's shape.
        Adaptive phases move between lr_range's ends with the failure rate (None: unknown)."""
        phase = self.phase_at(step)
        base = phase.lr
        if base is None:
            if failure_rate is None:
                return None
            low, high = phase.lr_range
            base = low + (high - low) * min(max(failure_rate, 0.0), 1.0)
        t = self.train
        return base * lr_multiplier(step, t.schedule, t.warmup_steps, t.max_steps, t.min_lr_ratio)

    def boundaries(self) -> list[int]:
        """Steps where the eligible set or phase may change: 0, the warmup's end, phase starts, tier openings."""
        steps = {0, self.cfg.warmup_steps, *(p.start for p in self.phases), *self.tier_opens.values()}
        return sorted(s for s in steps if 0 <= s < self.max_steps)

    # ---------------------------------------------------------------- building

    def _build_phases(self) -> list[Phase]:
        if not self.cfg.phases:
            return [Phase("all", -1, 0, self.max_steps, self.train.lr, None, None, "train.lr")]
        phases, start, prev_fraction = [], 0, 0.0
        for i, p in enumerate(self.cfg.phases):
            key, last = f"curriculum.phases.{i}", i == len(self.cfg.phases) - 1
            if phases and start >= self.max_steps:
                break  # a run shortened below this phase's start never reaches it
            if p.until is None and not last:
                raise ToolkitError(f"phase '{p.name}' needs `until` (only the last phase may leave it out)", key=key)
            end = self.max_steps if p.until is None else self._step_of(p.until)
            if isinstance(p.until, float) and p.until > prev_fraction and end <= start and not last:
                # a fraction of a short run rounds onto the previous phase's end: the phase is empty, not an
                # error (a 3-step smoke test of a 4-phase recipe is valid); a longer run gives it its steps
                prev_fraction = p.until
                self.notes.append({"note": "phase_empty", "phase": p.name, "key": f"{key}.until",
                                   "message": f"phase '{p.name}' (until {p.until}) gets no steps of a "
                                              f"{self.max_steps}-step run"})
                continue
            if isinstance(p.until, float):
                prev_fraction = p.until
            if end <= start:
                raise ToolkitError(f"phase '{p.name}' ends at step {end}, not after its start {start}",
                                   key=f"{key}.until", hint="phases are listed in order, each ending after the last")
            if last and end < self.max_steps:
                raise ToolkitError(f"the last phase ends at step {end} but train.max_steps is {self.max_steps}",
                                   key=f"{key}.until", hint="leave the last phase's until out to run to the end")
            lr, lr_range = self._phase_lr(p)
            phases.append(Phase(p.name, i, start, min(end, self.max_steps), lr, lr_range, p.dream_temperature, key))
            start = end
        return phases

    def _phase_lr(self, p) -> tuple[float | None, tuple[float, float] | None]:
        if p.lr == "adaptive":
            return None, tuple(p.lr_range or (0.1 * self.train.lr, self.train.lr))
        if p.lr is not None:
            return float(p.lr), None
        return self.train.lr * (p.lr_scale or 1.0), None

    def _step_of(self, until: int | float) -> int:
        return round(until * self.max_steps) if isinstance(until, float) else int(until)

    def _tier_schedule(self, seed: int) -> tuple[list[int], dict[int, int]]:
        tiers = sorted({s.tier for s in self.sources if s.tier is not None})
        order = self.cfg.order
        if order == "hard_to_easy":
            tiers.reverse()
        elif order == "random":
            random.Random(f"{seed}:tier-order").shuffle(tiers)  # str seeds hash with sha512: same everywhere
        if order == "mixed":
            return tiers, {t: 0 for t in tiers}
        return tiers, {t: k * self.max_steps // len(tiers) for k, t in enumerate(tiers)}

    # ---------------------------------------------------------------- validation

    def _check_names(self) -> None:
        cfg = self.cfg
        named = [(n, f"curriculum.warmup_sources.{j}") for j, n in enumerate(cfg.warmup_sources)]
        for i, p in enumerate(cfg.phases):
            named += [(n, f"curriculum.phases.{i}.sources.{j}") for j, n in enumerate(p.sources or [])]
        named += [(n, f"curriculum.caps.{n}") for n in cfg.caps]
        named += [(n, f"curriculum.floors.{n}") for n in cfg.floors]
        for name, key in named:
            if name not in self._by_name:
                hint = did_you_mean(name, self.names) or f"the sources are: {', '.join(self.names) or '(none)'}"
                raise ToolkitError(f"unknown source '{name}'", key=key, hint=hint)
        for name, floor in cfg.floors.items():
            if name in cfg.caps and cfg.caps[name] < floor:
                raise ToolkitError(f"the cap of '{name}' ({cfg.caps[name]}) is below its floor ({floor})",
                                   key=f"curriculum.caps.{name}")

    def validate(self) -> None:
        """Every stretch of the run must have a source to draw and caps and floors that can all hold."""
        if not self.sources:
            return  # the loop reports a recipe without sources
        bounds = self.boundaries()
        for start, end in zip(bounds, bounds[1:] + [self.max_steps]):
            eligible, phase = self.eligible(start), self.phase_at(start)
            span = f"steps {start}-{end - 1} (phase '{phase.name}')"
            if not eligible:
                raise ToolkitError(f"no source is eligible at {span}", key=phase.key,
                                   hint="check the phase's sources and tiers, the tier order and the warmup sources")
            floors = sum(self.cfg.floors.get(n, 0.0) for n in eligible)
            if floors > 1 + 1e-9:
                raise ToolkitError(f"the floors of the sources eligible at {span} sum to {floors:g}, above 1",
                                   key="curriculum.floors")
            caps = sum(self.cfg.caps.get(n, 1.0) for n in eligible)
            if caps < 1 - 1e-9:
                raise ToolkitError(f"the caps of the sources eligible at {span} ({', '.join(eligible)}) add up to "
                                   f"{caps:g}, so no mix can fill the draws", key="curriculum.caps",
                                   hint="raise a cap, or let another source be drawn then")


def _without_source(curriculum, name: str, sources: set[str]):
    """The curriculum without caps/floors naming `name` (the disabled dream loop's source), and a note each."""
    if name in sources:
        return curriculum, []
    caps = {k: v for k, v in curriculum.caps.items() if k != name}
    floors = {k: v for k, v in curriculum.floors.items() if k != name}
    dropped = [f"curriculum.{kind}.{name}" for kind, d in (("caps", curriculum.caps), ("floors", curriculum.floors))
               if name in d]
    if not dropped:
        return curriculum, []
    notes = [{"note": "dropped", "key": key, "message": f"{key} is ignored: dream.enabled is false, so there is "
                                                         f"no '{name}' source"} for key in dropped]
    return curriculum.model_copy(update={"caps": caps, "floors": floors}), notes


def check_curriculum(recipe) -> None:
    """Recipe-load check: raises a ToolkitError naming the key of the first problem."""
    CurriculumPlan.from_recipe(recipe).validate()
