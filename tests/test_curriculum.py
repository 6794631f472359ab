"""The curriculum core, falsified with synthetic losses (no model, no data): the warmup gate, caps and
floors, the tier order and phases, determinism and exact resume, the polish pivot, the repetition
guard, the adaptive learning rate, recipe validation, and `toolkit curriculum explain` / `plot`.

A simulated run mirrors the training loop: lr(step), pick(step), observe(source, loss, examples, step),
with per-source loss curves plus noise from a random stream of its own.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.cli_helpers import run_in_process
from toolkit.curriculum.core import Curriculum
from toolkit.curriculum.plan import CurriculumPlan, SourceInfo
from toolkit.curriculum.rewards import RewardScaler
from toolkit.errors import ToolkitError
from toolkit.recipe import CurriculumConfig, PhaseConfig, TrainConfig, load_recipe

REPO = Path(__file__).resolve().parents[1]
FIREHOSE = REPO / "recipes" / "pretrain-firehose.yaml"
POLISH = REPO / "recipes" / "polish.yaml"
LORA = REPO / "recipes" / "lora-r64.yaml"
SAMPLERS = ["ucb1", "exp3", "weighted", "uniform"]
ORDERS = ["easy_to_hard", "hard_to_easy", "random", "mixed"]


def fuzz(n: int) -> settings:
    """Modest example counts (the whole file runs in well under a minute); no example database on disk."""
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@dataclass(frozen=True)
class Src(SourceInfo):
    """A data source as the curriculum sees it: the plan's SourceInfo holding examples (the curriculum
    draws only sources that hold examples)."""

    train: tuple = ("an example",)


@dataclass(frozen=True)
class Ex:
    """What observe() needs of an example: tokens and labels (-100: not a target)."""

    input_ids: list
    labels: list


def varied_examples(seed, count: int = 2, length: int = 32) -> list[Ex]:
    """Targets with (almost) no repeated 4-gram: a source the repetition guard must leave alone."""
    rng = random.Random(f"examples:{seed}")
    examples = []
    for _ in range(count):
        ids = [rng.randrange(1000) for _ in range(length)]
        examples.append(Ex(ids, list(ids)))
    return examples


def repetitive_examples(count: int = 2) -> list[Ex]:
    """A varied prompt (not a target), then the same 4 target tokens over and over: seed 000's lists."""
    examples = []
    for i in range(count):
        prompt = [100 + i * 10 + j for j in range(8)]
        target = [7, 8, 9, 10] * 30
        examples.append(Ex(prompt + target, [-100] * len(prompt) + target))
    return examples


def make(cfg: CurriculumConfig, sources: list[Src], max_steps: int, seed: int = 0, **train) -> Curriculum:
    train_cfg = TrainConfig(max_steps=max_steps, **train)
    plan = CurriculumPlan(cfg, [SourceInfo(s.name, s.tier, s.weight) for s in sources], train_cfg, seed)
    plan.validate()
    return Curriculum(plan, sources, seed)


def feasible(cfg: CurriculumConfig, sources: list[Src], max_steps: int, seed: int = 0) -> bool:
    try:
        make(cfg, sources, max_steps, seed)
    except ToolkitError:
        return False
    return True


class Losses:
    """Per-source loss curves f(times drawn) plus noise. Noise is per step (from the seed), so two runs
    that make the same draws see the same losses whatever the order they are asked in."""

    def __init__(self, curves: dict, seed, sigma: float = 0.02):
        self.curves, self.seed, self.sigma = curves, seed, sigma
        self.seen: Counter = Counter()

    def __call__(self, name: str, step: int) -> float:
        n = self.seen[name]
        self.seen[name] += 1
        noise = random.Random(f"{self.seed}:{step}").gauss(0.0, self.sigma)
        return max(self.curves[name](n) + noise, 1e-3)


def simulate(cur: Curriculum, start: int, stop: int, losses, examples: dict) -> list[tuple[str, float]]:
    """Drive the curriculum as the training loop does; returns (source drawn, lr) per step."""
    out = []
    for step in range(start, stop):
        lr = cur.lr(step)
        source = cur.pick(step)
        cur.observe(source, losses(source.name, step), examples[source.name], step)
        out.append((source.name, lr))
    return out


def flat(level: float):
    return lambda n: level


def falling(level: float, rate: float = 0.01):
    return lambda n: level / (1.0 + rate * n)


def rising(level: float, rate: float = 0.001):
    return lambda n: level + rate * n


# ---------------------------------------------------------------- 1a. warmup gate


@st.composite
def warmup_setups(draw):
    k = draw(st.integers(2, 6))
    tiers = draw(st.lists(st.sampled_from([None, 1, 2, 3]), min_size=k, max_size=k))
    sources = [Src(f"s{i}", tiers[i], draw(st.sampled_from([0.5, 1.0, 3.0]))) for i in range(k)]
    names = [s.name for s in sources]
    warm = draw(st.lists(st.sampled_from(names), min_size=1, max_size=k - 1, unique=True))
    floors = {n: draw(st.integers(1, 15)) / 100 for n in names if draw(st.booleans())}
    caps = {n: draw(st.integers(max(int(floors.get(n, 0) * 100), 5), 100)) / 100 for n in names
            if draw(st.booleans())}
    sampler = draw(st.sampled_from(SAMPLERS))
    cfg = CurriculumConfig(
        warmup_steps=draw(st.integers(1, 400)), warmup_sources=warm, order=draw(st.sampled_from(ORDERS)),
        sampler=sampler, window=draw(st.sampled_from([None, 50])) if sampler == "ucb1" else None,  # UCB1's key
        reward=draw(st.sampled_from(["learning_progress", "neg_loss"])), floors=floors, caps=caps)
    return cfg, sources, draw(st.integers(0, 2**16))


@fuzz(40)
@given(warmup_setups())
def test_no_source_outside_warmup_sources_is_drawn_before_warmup_steps(setup):
    cfg, sources, seed = setup
    max_steps = cfg.warmup_steps + 200
    assume(feasible(cfg, sources, max_steps, seed))
    cur = make(cfg, sources, max_steps, seed)
    # the non-warmup sources look best to every sampler: the gate alone must keep them out
    curves = {s.name: flat(1.0) if s.name in cfg.warmup_sources else falling(0.2, 0.05) for s in sources}
    examples = {s.name: varied_examples(s.name) for s in sources}
    drawn = simulate(cur, 0, max_steps, Losses(curves, seed), examples)
    early = {name for name, _ in drawn[:cfg.warmup_steps]}
    assert early <= set(cfg.warmup_sources), (cfg.warmup_steps, early)
    if cfg.sampler == "uniform" and cfg.order == "mixed" and not cfg.floors:
        # and the gate opens: after the warmup the others are drawn too
        assert {name for name, _ in drawn[cfg.warmup_steps:]} - set(cfg.warmup_sources)


# ---------------------------------------------------------------- 1b. caps and floors


@st.composite
def share_setups(draw):
    k = draw(st.integers(2, 6))
    names = [f"s{i}" for i in range(k)]
    floors = {n: draw(st.integers(1, 40)) for n in names if draw(st.booleans())}  # in percent
    total = sum(floors.values())
    if total > 80:
        floors = {n: max(f * 80 // total, 1) for n, f in floors.items()}
    caps = {n: draw(st.integers(max(floors.get(n, 0), 1), 100)) for n in names if draw(st.booleans())}
    if len(caps) == k and sum(caps.values()) < 100:
        last = names[-1]
        caps[last] += 100 - sum(caps.values())
    return dict(
        names=names, floors={n: f / 100 for n, f in floors.items()}, caps={n: c / 100 for n, c in caps.items()},
        sampler=draw(st.sampled_from(SAMPLERS)), window=draw(st.sampled_from([None, 100])),
        share_window=draw(st.sampled_from([50, 200, 1000])),
        reward=draw(st.sampled_from(["learning_progress", "neg_loss"])), seed=draw(st.integers(0, 2**16)))


@fuzz(25)
@given(share_setups())
def test_caps_and_floors_hold_within_one_percent_over_10000_draws(setup):
    names, caps, floors = setup["names"], setup["caps"], setup["floors"]
    window = setup["window"] if setup["sampler"] == "ucb1" else None
    cfg = CurriculumConfig(sampler=setup["sampler"], window=window, reward=setup["reward"], caps=caps,
                           floors=floors, share_window=setup["share_window"])
    # everything pushes towards the capped sources and away from the floored ones: the weighted sampler's
    # weights, and for the bandits the losses (capped: low and falling fast; floored: high and rising)
    sources = [Src(n, None, 50.0 if n in caps else 0.01 if n in floors else 1.0) for n in names]
    curves = {n: falling(0.3, 0.02) if n in caps else rising(5.0) if n in floors else flat(2.0) for n in names}
    cur = make(cfg, sources, 10_000, setup["seed"])
    examples = {n: varied_examples(n, count=1, length=16) for n in names}
    simulate(cur, 0, 10_000, Losses(curves, setup["seed"]), examples)
    total = sum(cur.draws.values())
    assert total == 10_000
    shares = {n: cur.draws[n] / total for n in names}
    for n, floor in floors.items():
        assert shares[n] >= floor - 0.01, (n, shares[n], floor, shares)
    for n, cap in caps.items():
        assert shares[n] <= cap + 0.01, (n, shares[n], cap, shares)
    assert cur.limits.shares() == pytest.approx({n: s for n, s in shares.items() if s})


# ---------------------------------------------------------------- 1c. tier order, phases that name tiers


def expected_opens(order_of_tiers: list[int], max_steps: int) -> dict[int, int]:
    """The tiers open one after another at equal shares of the run."""
    return {t: k * max_steps // len(order_of_tiers) for k, t in enumerate(order_of_tiers)}


@st.composite
def tier_setups(draw):
    k = draw(st.integers(2, 7))
    tiers = draw(st.lists(st.sampled_from([1, 2, 3, None]), min_size=k, max_size=k))
    assume(any(t is not None for t in tiers))
    sources = [Src(f"s{i}", tiers[i]) for i in range(k)]
    floors = {s.name: 0.05 for s in sources if draw(st.booleans())}
    return dict(sources=sources, floors=floors, order=draw(st.sampled_from(ORDERS)),
                sampler=draw(st.sampled_from(SAMPLERS)), max_steps=draw(st.integers(30, 900)),
                seed=draw(st.integers(0, 2**16)))


@fuzz(40)
@given(tier_setups())
def test_tiers_open_in_the_configured_order(setup):
    sources, order, max_steps, seed = setup["sources"], setup["order"], setup["max_steps"], setup["seed"]
    cfg = CurriculumConfig(order=order, sampler=setup["sampler"], floors=setup["floors"])
    cur = make(cfg, sources, max_steps, seed)
    plan = cur.plan
    present = sorted({s.tier for s in sources if s.tier is not None})
    if order == "mixed":
        assert set(plan.tier_opens.values()) == {0}
        assert plan.eligible(0) == [s.name for s in sources]  # every tier from step 0
    else:
        if order == "easy_to_hard":
            assert plan.tier_order == present
        elif order == "hard_to_easy":
            assert plan.tier_order == present[::-1]
        else:  # random: a permutation drawn from the run seed, the same in every process
            assert sorted(plan.tier_order) == present
            again = CurriculumPlan(cfg, [SourceInfo(s.name, s.tier) for s in sources], TrainConfig(max_steps=max_steps),
                                   seed)
            assert again.tier_order == plan.tier_order
        assert plan.tier_opens == expected_opens(plan.tier_order, max_steps)
        opening = [plan.tier_opens[t] for t in plan.tier_order]
        assert opening == sorted(opening) and opening[0] == 0
    curves = {s.name: falling(1.0 + (s.tier or 0), 0.02) for s in sources}
    drawn = simulate(cur, 0, max_steps, Losses(curves, seed), {s.name: varied_examples(s.name, 1, 8) for s in sources})
    tier_of = {s.name: s.tier for s in sources}
    first = {}
    for step, (name, _) in enumerate(drawn):
        tier = tier_of[name]
        if tier is not None:
            assert step >= plan.tier_opens[tier], (name, tier, step, plan.tier_opens)
            first.setdefault(tier, step)
    if setup["sampler"] == "ucb1" and not setup["floors"]:
        # an untried arm has an infinite index, so a tier is drawn as soon as it opens: within two draws
        # per source (a learning-progress reward needs a source's second loss before it counts as tried)
        for tier, opens in plan.tier_opens.items():
            assert opens <= first[tier] < opens + 2 * len(sources)


@st.composite
def phase_tier_setups(draw):
    k = draw(st.integers(2, 6))
    tiers = [draw(st.sampled_from([1, 2, 3, None])) for _ in range(k)]
    present = sorted({t for t in tiers if t is not None})
    assume(present)
    allowed = draw(st.lists(st.sampled_from(present), min_size=1, unique=True))
    return dict(sources=[Src(f"s{i}", tiers[i]) for i in range(k)], allowed=allowed,
                order=draw(st.sampled_from(ORDERS)), sampler=draw(st.sampled_from(SAMPLERS)),
                max_steps=draw(st.integers(40, 600)), seed=draw(st.integers(0, 2**16)))


@fuzz(30)
@given(phase_tier_setups())
def test_a_phase_that_names_tiers_overrides_the_order(setup):
    sources, allowed, max_steps = setup["sources"], setup["allowed"], setup["max_steps"]
    cfg = CurriculumConfig(order=setup["order"], sampler=setup["sampler"],
                           phases=[PhaseConfig(name="named", until=0.5, tiers=allowed), PhaseConfig(name="rest")])
    cur = make(cfg, sources, max_steps, setup["seed"])
    plan = cur.plan
    split = round(0.5 * max_steps)
    drawn = simulate(cur, 0, max_steps, Losses({s.name: flat(1.0) for s in sources}, setup["seed"]),
                     {s.name: varied_examples(s.name, 1, 8) for s in sources})
    tier_of = {s.name: s.tier for s in sources}
    # in the named phase: exactly its tiers, whatever the order says (and a source without a tier is out)
    assert {tier_of[n] for n, _ in drawn[:split]} <= set(allowed)
    assert plan.eligible(0) == [s.name for s in sources if s.tier in allowed]
    # after it: the order decides again
    for step in range(split, max_steps):
        tier = tier_of[drawn[step][0]]
        if tier is not None and setup["order"] != "mixed":
            assert step >= plan.tier_opens[tier]


# ---------------------------------------------------------------- 2. determinism and exact resume


def determinism_sources(k: int = 5) -> list[Src]:
    return [Src(f"s{i}", None, 1.0 + i) for i in range(k)]


CURVES = {f"s{i}": falling(1.0 + 0.3 * i, 0.01 * (i + 1)) for i in range(5)}
EXAMPLES = {f"s{i}": varied_examples(i, 2, 24) for i in range(5)}


@fuzz(20)
@given(seed=st.integers(0, 2**16), sampler=st.sampled_from(SAMPLERS))
def test_same_seed_and_observations_make_the_same_draws(seed, sampler):
    cfg = CurriculumConfig(sampler=sampler, warmup_steps=20, warmup_sources=["s0", "s1"], floors={"s4": 0.1})
    runs = [simulate(make(cfg, determinism_sources(), 300, seed), 0, 300, Losses(CURVES, seed), EXAMPLES)
            for _ in range(2)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("sampler", ["weighted", "exp3", "uniform"])
def test_a_different_seed_makes_different_draws(sampler):
    cfg = CurriculumConfig(sampler=sampler)
    runs = [simulate(make(cfg, determinism_sources(), 300, seed), 0, 300, Losses(CURVES, 0), EXAMPLES)
            for seed in (1, 2)]
    assert [n for n, _ in runs[0]] != [n for n, _ in runs[1]]


@st.composite
def resume_setups(draw):
    sampler = draw(st.sampled_from(SAMPLERS))
    return dict(
        sampler=sampler, window=draw(st.sampled_from([None, 16, 64])) if sampler == "ucb1" else None,
        warmup=draw(st.sampled_from([0, 30, 150])), stop=draw(st.integers(1, 299)),
        phases=draw(st.booleans()), adaptive=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


def resume_config(s: dict) -> CurriculumConfig:
    phases = []
    if s["phases"]:
        phases = [PhaseConfig(name="early", until=100, sources=["s0", "s1", "s2"]),
                  PhaseConfig(name="late", lr="adaptive" if s["adaptive"] else None, lr_range=(1e-4, 1e-3))]
    return CurriculumConfig(sampler=s["sampler"], window=s["window"], warmup_steps=s["warmup"],
                            warmup_sources=["s0", "s2"] if s["warmup"] else [], phases=phases,
                            caps={"s1": 0.4}, floors={"s3": 0.1}, share_window=25)


@fuzz(30)
@given(resume_setups())
def test_state_dict_json_round_trip_resumes_exactly(setup):
    cfg, seed, stop = resume_config(setup), setup["seed"], setup["stop"]
    whole = make(cfg, determinism_sources(), 300, seed, warmup_steps=10)
    reference = simulate(whole, 0, 300, Losses(CURVES, seed), EXAMPLES)

    first = make(cfg, determinism_sources(), 300, seed, warmup_steps=10)
    losses = Losses(CURVES, seed)
    before = simulate(first, 0, stop, losses, EXAMPLES)
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
    resumed = make(cfg, determinism_sources(), 300, seed, warmup_steps=10)
    resumed.load_state_dict(state)
    assert resumed.pivot is None
    after = simulate(resumed, stop, 300, losses, EXAMPLES)
    assert before + after == reference  # the same sources and the same learning rates, step for step
    assert json.dumps(resumed.state_dict()) == json.dumps(whole.state_dict())


# ---------------------------------------------------------------- 3. the polish pivot, in process


def recipe_curriculum(path: Path, max_steps: int) -> Curriculum:
    recipe = load_recipe(path, [f"train.max_steps={max_steps}"]).recipe
    sources = [Src(s.name, s.tier, s.weight) for s in recipe.data.sources]
    return Curriculum(CurriculumPlan.from_recipe(recipe), sources, recipe.run.seed)


FIREHOSE_CURVES = {"chat": falling(3.0, 0.002), "dialogues": rising(3.0), "prose": rising(3.5),
                   "dictionary": falling(1.0, 0.05), "docstrings": falling(1.5, 0.03), "repo-docs": falling(1.2, 0.04)}
FIREHOSE_EXAMPLES = {name: varied_examples(name, 2, 32) for name in FIREHOSE_CURVES}


def test_polish_pivot_keeps_statistics_and_applies_the_new_mix():
    run = recipe_curriculum(FIREHOSE, 2280)
    losses = Losses(FIREHOSE_CURVES, 0)
    simulate(run, 0, 280, losses, FIREHOSE_EXAMPLES)  # toolkit pretrain firehose --stop-at 280
    state = json.loads(json.dumps(run.state_dict()))

    polished = recipe_curriculum(POLISH, 2280)  # toolkit pretrain polish.yaml --resume
    polished.load_state_dict(state)
    assert polished.pivot == {
        "curriculum.warmup_steps": [80, 0],
        "curriculum.phases": [state["config"]["phases"], polished.cfg.model_dump(mode="json")["phases"]],
        "curriculum.caps.dictionary": [0.2, 0.05],
        "curriculum.caps.docstrings": [0.3, 0.1],
        "curriculum.caps.repo-docs": [0.2, 0.05],
        "curriculum.floors.chat": [0.1, 0.3],
        "curriculum.floors.dialogues": [None, 0.2],
    }  # floors.prose stays 0.1: not a change
    assert polished.sampler.state_dict() == state["sampler"]  # the bandit's statistics carry over
    assert dict(polished.draws) == state["draws"] and sum(polished.draws.values()) == 280
    assert polished.running_loss == state["running_loss"]

    simulate(polished, 280, 2280, losses, FIREHOSE_EXAMPLES)
    after = Counter({n: polished.draws[n] - state["draws"].get(n, 0) for n in FIREHOSE_CURVES})
    assert sum(after.values()) == 2000
    assert polished.plan.eligible(280) == list(FIREHOSE_CURVES)  # no warmup any more: everything at once
    for name, cap in polished.cfg.caps.items():
        assert after[name] / 2000 <= cap + 0.01, (name, after)
    for name, floor in polished.cfg.floors.items():
        assert after[name] / 2000 >= floor - 0.01, (name, after)
    # and the limit that held after the pivot is the new one: before it, dictionary (which learns fastest)
    # took far more than its new 5% cap
    assert state["draws"]["dictionary"] > 0.05 * (280 - 80) + 2


def test_loading_under_the_same_curriculum_is_no_pivot():
    run = recipe_curriculum(FIREHOSE, 400)
    simulate(run, 0, 150, Losses(FIREHOSE_CURVES, 1), FIREHOSE_EXAMPLES)
    state = json.loads(json.dumps(run.state_dict()))
    again = recipe_curriculum(FIREHOSE, 400)
    again.load_state_dict(state)
    assert again.pivot is None
    assert again.limits.state_dict() == state["limits"] and again.segment == run.segment


def test_pivot_to_another_sampler_names_it_and_starts_the_sampler_afresh():
    run = recipe_curriculum(FIREHOSE, 400)
    simulate(run, 0, 150, Losses(FIREHOSE_CURVES, 2), FIREHOSE_EXAMPLES)
    state = json.loads(json.dumps(run.state_dict()))
    recipe = load_recipe(FIREHOSE, ["curriculum.sampler=exp3", "curriculum.window=null"]).recipe
    other = Curriculum(CurriculumPlan.from_recipe(recipe), [Src(s.name) for s in recipe.data.sources], 0)
    other.load_state_dict(state)
    assert other.pivot["curriculum.sampler"] == ["ucb1", "exp3"]
    assert other.pivot["curriculum.window"] == [100, None]
    assert other.sampler.state_dict() == {"kind": "exp3", "log_weights": {}, "last_choice": {}}
    assert dict(other.draws) == state["draws"]


# ---------------------------------------------------------------- 4. repetition guard


GUARD_SOURCES = [Src("lists"), Src("a"), Src("b"), Src("c")]
GUARD_EXAMPLES = {"lists": repetitive_examples(), **{n: varied_examples(n) for n in "abc"}}
# lists: the lowest loss and the fastest fall (the best reward of both kinds); the others learn slowly
GUARD_CURVES = {"lists": falling(0.5, 0.05), "a": falling(3.0, 0.001), "b": flat(3.2), "c": rising(3.1)}


def guard_run(sampler: str, reward: str, repetition: dict, steps: int = 2000):
    cfg = CurriculumConfig(sampler=sampler, reward=reward, floors={"lists": 0.05}, repetition=repetition)
    cur = make(cfg, GUARD_SOURCES, steps, 0)
    losses = Losses(GUARD_CURVES, 3)
    by_sampler, observed = [], False
    for step in range(steps):
        source = cur.pick(step)
        if cur.sampler_chose:
            by_sampler.append((source.name, observed))
        cur.observe(source, losses(source.name, step), GUARD_EXAMPLES[source.name], step)
        observed = observed or source.name == "lists"
    return cur, by_sampler


@pytest.mark.parametrize("sampler", ["ucb1", "exp3"])
@pytest.mark.parametrize("reward", ["learning_progress", "neg_loss"])
def test_repetition_guard_vetoes_a_repetitive_source_with_the_best_reward(sampler, reward):
    guarded, by_sampler = guard_run(sampler, reward, {"n": 4, "penalty": 1.0, "veto_above": 0.5})
    assert guarded.repetition["lists"] > 0.9 and max(guarded.repetition[n] for n in "abc") < 0.05
    assert guarded.vetoed("lists") and not any(guarded.vetoed(n) for n in "abc")
    # once its targets were seen, the sampler never chose it again: only its floor draws it
    assert [n for n, seen in by_sampler if seen and n == "lists"] == []
    assert guarded.draws["lists"] / 2000 <= 0.05 + 0.01

    unguarded, _ = guard_run(sampler, reward, {"n": 4, "penalty": 0.0, "veto_above": None})
    assert "lists" not in unguarded.repetition  # guard off: not even measured
    assert unguarded.draws["lists"] > max(unguarded.draws[n] for n in "abc")  # the bandit prefers it
    assert unguarded.draws["lists"] / 2000 > 0.4


def test_repetition_penalty_alone_lowers_the_reward():
    penalized, _ = guard_run("ucb1", "neg_loss", {"n": 4, "penalty": 1.0, "veto_above": None})
    unguarded, _ = guard_run("ucb1", "neg_loss", {"n": 4, "penalty": 0.0, "veto_above": None})
    assert not penalized.vetoed("lists")
    assert penalized.draws["lists"] < unguarded.draws["lists"] / 2


def test_repetition_counts_targets_only():
    # a repetitive prompt (labels -100) under varied targets is not what the model learns to produce
    prompt = [5, 6, 7, 8] * 20
    target = list(range(200, 240))
    examples = [Ex(prompt + target, [-100] * len(prompt) + target)]
    cfg = CurriculumConfig(sampler="ucb1")
    cur = make(cfg, [Src("x"), Src("y")], 10)
    cur.pick(0)
    cur.observe(Src("x"), 1.0, examples, 0)
    assert cur.repetition["x"] == 0.0 and not cur.vetoed("x")


# ---------------------------------------------------------------- 5. adaptive learning rate


def test_adaptive_learning_rate_follows_the_failure_rate():
    cfg = CurriculumConfig(sampler="uniform", phases=[
        PhaseConfig(name="fixed", until=100, lr=5e-4),
        PhaseConfig(name="adaptive", lr="adaptive", lr_range=(1e-4, 1e-3))])
    cur = make(cfg, [Src("a"), Src("b")], 1000, 0, lr=1e-3, schedule="constant")
    low, high = 1e-4, 1e-3
    assert cur.lr(100) == pytest.approx((low + high) / 2)  # no history yet: failure rate 0.5
    ex = varied_examples(0, 1, 8)

    def run(start, stop, loss_at):
        lrs = []
        for step in range(start, stop):
            lrs.append(cur.lr(step))
            cur.observe(cur.pick(step), loss_at(step), ex, step)
        return lrs

    fixed = run(0, 100, lambda s: 10.0 - 0.01 * s)  # falling, but the phase's rate is fixed
    assert fixed == pytest.approx([5e-4] * 100)
    assert cur.failure_rate() == 0.0 and cur.lr(100) == pytest.approx(low)
    climbing = run(100, 200, lambda s: 9.0 + 0.01 * (s - 100))  # rising losses: failures
    assert all(a <= b + 1e-15 for a, b in zip(climbing, climbing[1:]))
    assert climbing[0] == pytest.approx(low) and climbing[-1] == pytest.approx(high)
    assert cur.failure_rate() == 1.0
    easing = run(200, 300, lambda s: 10.0 - 0.01 * (s - 200))  # steadily falling again: no failure
    assert all(a >= b - 1e-15 for a, b in zip(easing, easing[1:]))
    assert easing[-1] == pytest.approx(low) and cur.failure_rate() == 0.0
    assert all(low - 1e-15 <= lr <= high + 1e-15 for lr in climbing + easing)

    cur.note_failure_rate(0.25)  # the dream loop's rate overrides the loss's
    assert cur.lr(300) == pytest.approx(low + 0.25 * (high - low))
    assert cur.lr(50) == pytest.approx(5e-4)  # a fixed phase ignores it
    cur.note_failure_rate(2.0)
    assert cur.lr(300) == pytest.approx(high)  # clamped to the range
    cur.note_failure_rate(None)
    assert cur.lr(300) == pytest.approx(low)


def test_adaptive_range_defaults_and_follows_the_schedule():
    cfg = CurriculumConfig(phases=[PhaseConfig(name="only", lr="adaptive")])
    cur = make(cfg, [Src("a")], 100, 0, lr=2e-3, schedule="cosine", warmup_steps=0, min_lr_ratio=0.1)
    plan = cur.plan
    assert plan.phase_at(0).lr_range == pytest.approx((2e-4, 2e-3))  # default: 0.1 x train.lr to train.lr
    assert plan.lr_at(0, None) is None
    cur.note_failure_rate(1.0)
    assert cur.lr(0) == pytest.approx(2e-3) and cur.lr(99) < cur.lr(50) < cur.lr(0)


# ---------------------------------------------------------------- 6-8. the CLI


def cli(capsys, *args) -> tuple[int, str, str]:
    return run_in_process(capsys, *args)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolkit", *map(str, args)], capture_output=True, text=True, cwd=REPO)


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and "Traceback" not in err, err
    return err.strip()


SOURCES_YAML = """\
data:
  sources:
    - {name: chat, path: no/such/chat.jsonl, tier: 1}
    - {name: prose, path: no/such/prose.jsonl, tier: 2}
    - {name: dictionary, path: no/such/dictionary.jsonl, tier: 3}
train:
  max_steps: 1000
"""  # the curriculum section starts on line 8


INVALID = {
    "warmup-source": ("curriculum:\n  warmup_steps: 10\n  warmup_sources: [chat, dictionry]\n",
                      [":10 curriculum.warmup_sources.1", "unknown source 'dictionry'", "did you mean 'dictionary'?"]),
    "phase-source": ("curriculum:\n  phases:\n    - {name: A, until: 100, sources: [chat, prse]}\n    - {name: B}\n",
                     [":10 curriculum.phases.0.sources.1", "unknown source 'prse'", "did you mean 'prose'?"]),
    "cap-source": ("curriculum:\n  caps: {dictonary: 0.5}\n",
                   [":9 curriculum.caps.dictonary", "unknown source 'dictonary'", "did you mean 'dictionary'?"]),
    "floor-source": ("curriculum:\n  floors:\n    chatt: 0.5\n",
                     [":10 curriculum.floors.chatt", "unknown source 'chatt'", "did you mean 'chat'?"]),
    "floors-above-1": ("curriculum:\n  floors: {chat: 0.5, prose: 0.4, dictionary: 0.3}\n",
                       [":9 curriculum.floors", "sum to 1.2, above 1"]),
    "cap-below-floor": ("curriculum:\n  caps: {chat: 0.2}\n  floors: {chat: 0.3}\n",
                        [":9 curriculum.caps.chat", "cap of 'chat' (0.2) is below its floor (0.3)"]),
    "caps-below-1": ("curriculum:\n  caps: {chat: 0.3, prose: 0.3, dictionary: 0.3}\n",
                     [":9 curriculum.caps", "(chat, prose, dictionary) add up to 0.9"]),
    "caps-below-1-in-warmup": ("curriculum:\n  warmup_steps: 100\n  warmup_sources: [chat, prose]\n"
                               "  caps: {chat: 0.3, prose: 0.3}\n",
                               [":11 curriculum.caps", "steps 0-99", "(chat, prose) add up to 0.6"]),
    "empty-phase": ("curriculum:\n  phases:\n    - {name: A, until: 100, sources: []}\n    - {name: B}\n",
                    [":10 curriculum.phases.0", "no source is eligible at steps 0-99 (phase 'A')"]),
    "phase-tiers-excludes-sources": (
        "curriculum:\n  phases:\n    - {name: A, until: 100}\n    - {name: B, sources: [chat], tiers: [3]}\n",
        [":11 curriculum.phases.1", "no source is eligible at steps 100-999 (phase 'B')"]),
    "top-level-alias-source": ("curriculum_warmup_steps: 10\ncurriculum_warmup_sources: [chta]\n",
                               [":9 curriculum.warmup_sources.0", "unknown source 'chta'", "did you mean 'chat'?"]),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_validate_curriculum_mistakes_are_one_line_errors(tmp_path, capsys, case):
    body, expected = INVALID[case]
    recipe = tmp_path / f"{case}.yaml"
    recipe.write_text(SOURCES_YAML + body)
    code, _, err = cli(capsys, "validate", recipe)
    line = one_line_error(code, err)
    assert f"{recipe}:" in line
    for part in expected:
        assert part in line, (part, line)
    # explain reads the same plan and refuses the same recipe the same way
    code, _, err = cli(capsys, "curriculum", "explain", recipe, "--step", "0")
    assert one_line_error(code, err) == line


def test_validate_error_as_a_process_exits_2_with_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(SOURCES_YAML + INVALID["cap-source"][0])
    out = run_cli("validate", recipe)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == (f"error: {recipe}:9 curriculum.caps.dictonary: unknown source 'dictonary' "
                                  f"(did you mean 'dictionary'?)")


@pytest.mark.parametrize("where", ["curriculum", "top-level"])
def test_seed_000_warmup_aliases_are_accepted(tmp_path, capsys, where):
    if where == "curriculum":
        body = "curriculum:\n  curriculum_warmup_steps: 40\n  curriculum_warmup_sources: [chat, prose]\n"
    else:
        body = "curriculum_warmup_steps: 40\ncurriculum_warmup_sources: [chat, prose]\ncurriculum: {sampler: ucb1}\n"
    recipe = tmp_path / "alias.yaml"
    recipe.write_text(SOURCES_YAML + body)
    code, out, err = cli(capsys, "validate", recipe)
    assert code == 0, err
    assert "warmup_steps: 40\n  warmup_sources:\n  - chat\n  - prose\n" in out
    cfg = load_recipe(recipe).recipe.curriculum
    assert (cfg.warmup_steps, cfg.warmup_sources) == (40, ["chat", "prose"])
    code, out, _ = cli(capsys, "curriculum", "explain", recipe, "--step", "39", "--source", "dictionary")
    assert code == 0 and "no: step 39 < curriculum.warmup_steps = 40" in out
    line = 9 if where == "curriculum" else 8
    assert f"(decided by curriculum.warmup_steps, {recipe}:{line})" in out  # the alias's own line


@pytest.mark.parametrize("layer", ["--set", "child-curriculum", "child-top-level"])
def test_seed_000_alias_overrides_a_canonical_key_from_another_layer(tmp_path, layer):
    base = tmp_path / "base.yaml"
    base.write_text(SOURCES_YAML + "curriculum:\n  warmup_steps: 80\n  warmup_sources: [chat]\n")
    overrides = []
    if layer == "--set":
        recipe, overrides = base, ["curriculum.curriculum_warmup_steps=500"]
    else:
        recipe = tmp_path / "child.yaml"
        alias = ("curriculum:\n  curriculum_warmup_steps: 500\n" if layer == "child-curriculum"
                 else "curriculum_warmup_steps: 500\n")
        recipe.write_text("extends: base.yaml\n" + alias)
    assert load_recipe(recipe, overrides).recipe.curriculum.warmup_steps == 500


def test_phases_past_the_end_of_a_shortened_run_are_dropped():
    # phase A ends at 80 and B at 400: a 50-step run is all phase A
    recipe = load_recipe(FIREHOSE, ["train.max_steps=50", "curriculum.phases.1.until=400"]).recipe
    assert [(p.name, p.start, p.end) for p in CurriculumPlan.from_recipe(recipe).phases] == [("A", 0, 50)]


def test_an_open_ended_last_phase_past_the_end_of_a_shortened_run_is_dropped():
    recipe = load_recipe(FIREHOSE, ["train.max_steps=50"]).recipe
    assert [(p.name, p.start, p.end) for p in CurriculumPlan.from_recipe(recipe).phases] == [("A", 0, 50)]


SEED_000 = ["--set", "train.max_steps=200000", "--set", "curriculum.curriculum_warmup_steps=20000",
            "--set", "curriculum.phases.0.until=20000"]


def test_explain_answers_seed_000s_question():
    out = run_cli("curriculum", "explain", FIREHOSE.relative_to(REPO), *SEED_000, "--step", "18400",
                  "--source", "dictionary")
    assert out.returncode == 0, out.stderr
    answer = out.stdout.strip().splitlines()[-1]
    assert answer.startswith("can 'dictionary' be drawn at step 18400? no: ")
    assert "curriculum.warmup_steps = 20000" in answer and "'dictionary' is not in curriculum.warmup_sources" in answer
    assert "phase 'A' (steps 0-19999" in out.stdout


def test_explain_json_and_after_the_warmup(capsys):
    code, out, err = cli(capsys, "curriculum", "explain", FIREHOSE, *SEED_000, "--step", "18400",
                         "--source", "dictionary", "--json")
    assert code == 0, err
    info = json.loads(out)  # one object, nothing else on stdout
    assert info["step"] == 18400 and info["phase"] == "A"
    assert info["eligible_sources"] == ["chat", "dialogues", "prose"]
    assert isinstance(info["lr"], float) and 0 < info["lr"] <= 3e-3
    assert info["source"]["can_draw"] is False
    assert info["source"]["decided_by"] == "curriculum.warmup_steps"
    assert "curriculum.warmup_steps = 20000" in info["source"]["reason"]

    code, out, _ = cli(capsys, "curriculum", "explain", FIREHOSE, *SEED_000, "--step", "30000",
                       "--source", "dictionary", "--json")
    info = json.loads(out)
    assert code == 0 and info["phase"] == "B" and info["source"]["can_draw"] is True
    assert "dictionary" in info["eligible_sources"] and not info["warmup"]["active"]
    code, out, _ = cli(capsys, "curriculum", "explain", FIREHOSE, *SEED_000, "--step", "30000",
                       "--source", "dictionary")
    assert code == 0 and "can 'dictionary' be drawn at step 30000? yes" in out


def test_explain_tiers_and_an_adaptive_phase(capsys):
    code, out, _ = cli(capsys, "curriculum", "explain", LORA, "--step", "10", "--source", "tier2", "--json")
    info = json.loads(out)
    assert code == 0 and info["phase"] == "bootstrap" and info["eligible_sources"] == ["tier1"]
    assert info["source"]["can_draw"] is False and info["source"]["decided_by"] == "curriculum.phases.0.tiers"
    code, out, _ = cli(capsys, "curriculum", "explain", LORA, "--step", "190", "--json")
    info = json.loads(out)
    assert code == 0 and info["phase"] == "maintenance" and info["lr_mode"] == "adaptive"
    low, high = info["lr_at_range_ends"]
    assert isinstance(info["lr"], float) and low < info["lr"] < high
    assert info["eligible_sources"] == ["tier1", "tier2", "tier3", "dream"]  # the dream loop's source, tier 2
    assert info["dream_source"] == "dream"


@pytest.mark.parametrize("args, expected", [
    (["--step", "200000"], "error: --set train.max_steps=200000: step 200000 is outside the run (steps 0-199999)"),
    (["--step", "-1"], "error: --set train.max_steps=200000: step -1 is outside the run (steps 0-199999)"),
    (["--step", "5", "--source", "dictonary"],
     "error: --source: unknown source 'dictonary' (did you mean 'dictionary'?)"),
])
def test_explain_user_errors(capsys, args, expected):
    code, _, err = cli(capsys, "curriculum", "explain", FIREHOSE, *SEED_000, *args)
    assert one_line_error(code, err) == expected


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_a_png_and_overlays_a_runs_draws(tmp_path, capsys):
    out = tmp_path / "plain.png"
    code, stdout, err = cli(capsys, "curriculum", "plot", FIREHOSE, "--out", out)
    assert code == 0, err
    assert stdout.strip() == str(out)
    plain = out.read_bytes()
    assert plain.startswith(PNG_SIGNATURE) and len(plain) > 20_000

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [{"step": s + 1, "loss": 2.0, "source": ["chat", "prose", "dialogues"][s % 3] if s < 80 else
             ["dictionary", "docstrings", "repo-docs", "chat"][s % 4]} for s in range(0, 400, 2)]
    rows.insert(3, {"step": 7, "eval_loss": 2.5})  # rows without a source are not draws
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, stdout, err = cli(capsys, "curriculum", "plot", FIREHOSE, "--run", run_dir)
    assert code == 0, err
    drawn = run_dir / "reports" / "curriculum.png"
    assert stdout.strip() == str(drawn)
    overlay = drawn.read_bytes()
    assert overlay.startswith(PNG_SIGNATURE) and len(overlay) > 20_000 and overlay != plain


def test_plot_of_a_directory_without_metrics_is_a_one_line_error(tmp_path, capsys):
    code, _, err = cli(capsys, "curriculum", "plot", FIREHOSE, "--run", tmp_path, "--out", tmp_path / "x.png")
    assert one_line_error(code, err) == f"error: {tmp_path}: no metrics.jsonl: is this a run directory?"
    assert not (tmp_path / "x.png").exists()


def judge_score(source: str, loss: float, examples: list, step: int) -> float:
    """A teacher's verdict for the `score` reward: it likes source b, whatever the loss says."""
    return 0.9 if source == "b" else 0.1


def test_a_score_callback_supplies_the_reward():
    cfg = CurriculumConfig(sampler="ucb1", reward="score", score_fn=f"{__name__}:judge_score",
                           repetition={"veto_above": None, "penalty": 0})
    curriculum = make(cfg, [Src("a"), Src("b"), Src("c")], max_steps=2000)
    for step in range(2000):
        source = curriculum.pick(step)
        reward = curriculum.observe(source, 1.0, varied_examples(step), step)
        assert reward is not None and 0.0 <= reward <= 1.0
    assert curriculum.draws["b"] > 0.8 * 2000  # the bandit follows the callback, not the (equal) losses
    with pytest.raises(ToolkitError, match="cannot import") as err:
        make(cfg.model_copy(update={"score_fn": "no_such_module:fn"}), [Src("a")], max_steps=10)
    assert err.value.key == "curriculum.score_fn"


def test_pass_fail_scores_keep_their_signal_when_the_percentiles_meet():
    """Issue 13: with more than 80% passes the 20th and 80th percentiles are both 1, and every reward
    became 0.5. The full recent range stands in: a pass stays 1 and a fail 0."""
    scaler = RewardScaler()
    rewards = [scaler(1.0 if i % 10 else 0.0) for i in range(1, 200)]  # 90% pass
    assert set(rewards) == {0.0, 1.0}
    judge = RewardScaler()  # a judge's 0-10 scale, mostly 10: the range keeps the spacing
    assert [judge(x) for x in [10.0] * 8 + [0.0, 5.0]][-2:] == [0.0, 0.5]
    same = RewardScaler()  # every recent reward equal: nothing to rank by; one in [0, 1] stands
    assert [same(0.25) for _ in range(5)] == [0.25] * 5 and RewardScaler()(-3.0) == 0.5


@pytest.mark.parametrize("window", [None, 100])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ucb1_through_the_curriculum_finds_the_best_of_5_arms_from_pass_fail_scores(window, seed):
    """Issue 13's falsifier through the whole curriculum (pick / observe, reward: score 0/1): the best
    of 5 sources takes >= 90% of draws 2,001-4,000. Pass rates 0.1/0.3/0.5/0.7/0.9 (plain UCB1 alone
    needs gaps this wide for 90%); once the best leads, more than 80% pass, which collapsed the
    scaling. Measured over 20 seeds, before: 51-81% plain, 45-52% with window 100; after: 93-98% and
    99-100%."""
    means = {"s0": 0.1, "s1": 0.3, "s2": 0.5, "s3": 0.7, "s4": 0.9}
    cfg = CurriculumConfig(sampler="ucb1", window=window, reward="score", score_fn=f"{__name__}:judge_score",
                           repetition={"veto_above": None, "penalty": 0})
    curriculum = make(cfg, [Src(name) for name in means], max_steps=4000, seed=seed)
    outcomes = random.Random(f"outcomes:{seed}")
    late = Counter()
    for step in range(4000):
        source = curriculum.pick(step)
        score = 1.0 if outcomes.random() < means[source.name] else 0.0
        curriculum.observe(source, 1.0, [], step, score=score)
        late[source.name] += step >= 2000
    assert late["s4"] >= 0.9 * 2000
