"""Cost per training step of the curriculum's decisions: `pick` + `observe`, for each sampler kind.

    .venv/bin/python benchmarks/curriculum_sampler.py [STEPS]

16 sources, a warmup (4 sources), two phases (the first leaves 6 sources out), caps and floors, and
windowed UCB1 (each source's last 500 rewards), EXP3, weighted and uniform samplers. Every step
observes a global batch of 16 examples of 128 tokens (a 32-token prompt, 96 target tokens), because
`observe` measures the repetition of the targets; one source is repetitive, so the guard's veto is
exercised. Losses are synthetic (a per-source curve plus noise) and made outside the timed calls.
The baseline, timed in the same run and the same way, is `random.Random.choices` over the 16 names.
Prints ms/step (split into lr + pick and observe) and the ratio to the baseline; the goal is under
0.5 ms/step.
The last row repeats windowed UCB1 with the repetition guard off (penalty 0, veto_above null),
so the guard's share of the cost shows.

Then whether UCB1 finds the best of 5 fixed arms (Bernoulli 0/1 rewards): the best arm's share of draws
2,001-4,000, mean and worst over 10 seeds, for the sampler alone and through the whole curriculum
(`reward: score`, the 0/1 outcome as the score), each plain and with `window: 100`. Two sets of means:
0.1/0.3/0.5/0.7/0.9 (gaps of 0.2: plain UCB1 alone reaches 90% there) and 0.5..0.9 in steps of 0.1
(plain UCB1 alone stays under 90%: its ceiling). Both pass more than 80% of the draws once the best
arm leads, so the 20th and 80th percentiles of recent rewards are both 1.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass

from toolkit.curriculum.core import Curriculum
from toolkit.curriculum.plan import CurriculumPlan, SourceInfo
from toolkit.curriculum.samplers import UCB1Sampler
from toolkit.recipe import CurriculumConfig, PhaseConfig, TrainConfig

NAMES = [f"src{i:02d}" for i in range(16)]
GOAL_MS = 0.5


@dataclass(frozen=True)
class Source(SourceInfo):
    """A data source as the curriculum sees it: the plan's SourceInfo holding examples (the curriculum
    draws only sources that hold examples)."""

    train: tuple = ("an example",)


@dataclass(frozen=True)
class Example:
    input_ids: list
    labels: list


def batches(name: str, rng: random.Random, count: int = 4, size: int = 16, prompt: int = 32, length: int = 128):
    """`count` global batches of `size` examples; the targets of src15 repeat 4 tokens over and over."""
    out = []
    for _ in range(count):
        batch = []
        for _ in range(size):
            ids = [rng.randrange(32000) for _ in range(prompt)]
            target = [11, 12, 13, 14] * ((length - prompt) // 4) if name == "src15" else \
                [rng.randrange(32000) for _ in range(length - prompt)]
            batch.append(Example(ids + target, [-100] * prompt + target))
        out.append(batch)
    return out


def config(sampler: str, guard: bool = True) -> CurriculumConfig:
    return CurriculumConfig(
        warmup_steps=2000, warmup_sources=NAMES[:4],
        phases=[PhaseConfig(name="A", until=6000, sources=NAMES[:10]), PhaseConfig(name="B")],
        sampler=sampler, window=500 if sampler == "ucb1" else None, reward="learning_progress",
        caps={"src04": 0.1, "src05": 0.05, "src10": 0.1, "src11": 0.05},
        floors={"src00": 0.1, "src01": 0.05, "src15": 0.02},
        repetition={"penalty": 1.0, "veto_above": 0.5} if guard else {"penalty": 0.0, "veto_above": None})


class Losses:
    """Per-source loss curves (each falls at its own rate as it is drawn) plus noise."""

    def __init__(self, seed: int, steps: int):
        rng = random.Random(f"losses:{seed}")
        self.base = {n: 2.0 + rng.random() * 3.0 for n in NAMES}
        self.rate = {n: 0.0005 + rng.random() * 0.004 for n in NAMES}
        self.noise = [rng.gauss(0.0, 0.03) for _ in range(steps)]
        self.seen = dict.fromkeys(NAMES, 0)

    def __call__(self, name: str, step: int) -> float:
        n = self.seen[name]
        self.seen[name] = n + 1
        return self.base[name] / (1.0 + self.rate[name] * n) + self.noise[step]


def time_curriculum(sampler: str, steps: int, data: dict, guard: bool = True, seed: int = 0) -> tuple[float, float, dict]:
    sources = [Source(n) for n in NAMES]
    plan = CurriculumPlan(config(sampler, guard), [SourceInfo(n) for n in NAMES], TrainConfig(max_steps=steps), seed)
    plan.validate()
    curriculum = Curriculum(plan, sources, seed)
    losses = Losses(seed, steps)
    used = dict.fromkeys(NAMES, 0)
    clock = time.perf_counter
    in_pick = in_observe = 0.0
    for step in range(steps):
        t0 = clock()
        curriculum.lr(step)
        source = curriculum.pick(step)
        t1 = clock()
        pool = data[source.name]
        examples = pool[used[source.name] % len(pool)]
        used[source.name] += 1
        loss = losses(source.name, step)
        t2 = clock()
        curriculum.observe(source, loss, examples, step)
        in_observe += clock() - t2
        in_pick += t1 - t0
    return in_pick / steps * 1e3, in_observe / steps * 1e3, dict(curriculum.draws)


def time_baseline(steps: int, seed: int = 0) -> float:
    """ms per step of the draw a curriculum replaces, timed the way `pick` is."""
    rng = random.Random(seed)
    clock = time.perf_counter
    spent = 0.0
    for _ in range(steps):
        t0 = clock()
        rng.choices(NAMES)[0]
        spent += clock() - t0
    return spent / steps * 1e3


ARM_MEANS = {"0.1/0.3/0.5/0.7/0.9": [0.1, 0.3, 0.5, 0.7, 0.9], "0.5..0.9": [0.5, 0.6, 0.7, 0.8, 0.9]}
SHARE_SEEDS = range(10)
SHARE_DRAWS = 4000


def no_score(**_):
    raise AssertionError("the best-arm runs pass each draw's score to observe()")


def best_arm_share(means: list[float], seed: int, window: int | None, through_curriculum: bool) -> float:
    """Share of draws 2,001-4,000 that go to the arm with the highest mean."""
    arms = [f"arm{i}" for i in range(len(means))]
    outcomes = random.Random(f"outcomes:{seed}")
    if through_curriculum:
        cfg = CurriculumConfig(sampler="ucb1", window=window, reward="score", score_fn=f"{__name__}:no_score",
                               repetition={"penalty": 0.0, "veto_above": None})
        plan = CurriculumPlan(cfg, [SourceInfo(a) for a in arms], TrainConfig(max_steps=SHARE_DRAWS), seed)
        plan.validate()
        curriculum = Curriculum(plan, [Source(a) for a in arms], seed)
    else:
        sampler, rng = UCB1Sampler(window=window), random.Random(seed)
    picks = []
    for step in range(SHARE_DRAWS):
        arm = curriculum.pick(step).name if through_curriculum else sampler.choose(arms, rng)
        score = 1.0 if outcomes.random() < means[arms.index(arm)] else 0.0
        if through_curriculum:
            curriculum.observe(Source(arm), 1.0, [], step, score=score)
        else:
            sampler.update(arm, score)
        picks.append(arm)
    best = arms[means.index(max(means))]
    return picks[SHARE_DRAWS // 2:].count(best) / (SHARE_DRAWS // 2)


def print_best_arm_shares():
    print(f"\nbest of 5 fixed arms, Bernoulli 0/1 rewards: its share of draws 2,001-4,000, "
          f"mean (worst) over {len(SHARE_SEEDS)} seeds")
    print(f"{'':<54}" + "".join(f"{label:>22}" for label in ARM_MEANS))
    for through in (False, True):
        for window in (None, 100):
            label = ("through the curriculum, reward score 0/1" if through else "UCB1 sampler alone") + \
                (", window 100" if window else "")
            cells = []
            for means in ARM_MEANS.values():
                shares = [best_arm_share(means, seed, window, through) for seed in SHARE_SEEDS]
                cells.append(f"{sum(shares) / len(shares):.1%} ({min(shares):.1%})")
            print(f"{label:<54}" + "".join(f"{cell:>22}" for cell in cells))


def main(steps: int = 20_000):
    rng = random.Random(0)
    data = {n: batches(n, rng) for n in NAMES}
    baseline = min(time_baseline(steps) for _ in range(3))
    print(f"{steps:,} steps, 16 sources, global batch 16 x 128 tokens; baseline (random.Random.choices "
          f"over the names): {baseline * 1e3:.2f} us/step")
    print(f"{'sampler':<26} {'lr+pick ms':>10} {'observe ms':>11} {'ms/step':>8} {'x baseline':>11}  share of src15 (repetitive)")
    rows = [(kind, kind if kind != "ucb1" else "ucb1 (window 500)", True) for kind in ("ucb1", "exp3", "weighted", "uniform")]
    rows.append(("ucb1", "ucb1, guard off", False))
    worst = 0.0
    for kind, label, guard in rows:
        pick_ms, observe_ms, draws = time_curriculum(kind, steps, data, guard)
        total = pick_ms + observe_ms
        worst = max(worst, total)
        print(f"{label:<26} {pick_ms:10.4f} {observe_ms:11.4f} {total:8.4f} {total / baseline:10.0f}x  "
              f"{draws.get('src15', 0) / steps:.1%}")
    print(f"worst {worst:.3f} ms/step: {'within' if worst < GOAL_MS else 'OVER'} the {GOAL_MS} ms goal")
    print_best_arm_shares()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
