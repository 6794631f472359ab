"""Multi-armed-bandit samplers: which data source a training step draws from.

Every sampler has the same shape (`Sampler`), so the curriculum can swap them by name. Arms are
source names; the set offered to `choose` may change between calls (sources open, close, get
vetoed), so statistics are kept per name and survive an arm's absence. Randomness comes only from
the `random.Random` the caller passes, and `state_dict()` is plain JSON, so a checkpoint restores
the exact sequence of choices.
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import Protocol


class Sampler(Protocol):
    kind: str

    def choose(self, arms: list[str], rng: random.Random) -> str: ...

    def update(self, arm: str, reward: float) -> None: ...

    def scores(self, arms: list[str]) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def _check_kind(sampler, state: dict) -> None:
    if state.get("kind") != sampler.kind:
        raise ValueError(f"state of a {state.get('kind')!r} sampler cannot load into a {sampler.kind!r} sampler")


def _check_reward(reward: float) -> float:
    # NaN fails this too: one NaN would poison a sum or a log-weight for the rest of the run
    if not 0.0 <= reward <= 1.0:
        raise ValueError(f"reward must be in [0, 1], got {reward!r}")
    return float(reward)


def _first_max(arms: list[str], values: dict[str, float]) -> str:
    """The arm with the highest value; ties go to the earliest in `arms` (deterministic)."""
    best = arms[0]
    for arm in arms[1:]:
        if values[arm] > values[best]:
            best = arm
    return best


class UniformSampler:
    """Every offered arm equally likely; ignores rewards."""

    kind = "uniform"

    def choose(self, arms: list[str], rng: random.Random) -> str:
        return rng.choices(arms, k=1)[0]

    def update(self, arm: str, reward: float) -> None:
        _check_reward(reward)

    def scores(self, arms: list[str]) -> dict[str, float]:
        return {arm: 1.0 / len(arms) for arm in arms}

    def state_dict(self) -> dict:
        return {"kind": self.kind}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(self, state)


class WeightedSampler:
    """Fixed weights, renormalized over the offered arms; a name without a weight counts 1.0."""

    kind = "weighted"

    def __init__(self, weights: dict[str, float]):
        bad = {name: w for name, w in weights.items() if not (0.0 <= w < math.inf)}
        if bad:
            raise ValueError(f"weights must be finite and non-negative: {bad}")
        self.weights = dict(weights)

    def _weights(self, arms: list[str]) -> list[float]:
        weights = [self.weights.get(arm, 1.0) for arm in arms]
        if sum(weights) <= 0.0:
            raise ValueError(f"every offered arm has weight 0: {arms}")
        return weights

    def choose(self, arms: list[str], rng: random.Random) -> str:
        return rng.choices(arms, weights=self._weights(arms), k=1)[0]

    def update(self, arm: str, reward: float) -> None:
        _check_reward(reward)

    def scores(self, arms: list[str]) -> dict[str, float]:
        weights = self._weights(arms)
        total = sum(weights)
        return {arm: w / total for arm, w in zip(arms, weights)}

    def state_dict(self) -> dict:
        return {"kind": self.kind}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(self, state)


class UCB1Sampler:
    """UCB1 (Auer et al. 2002): pick the highest mean + c * sqrt(ln N / n_i).

    Loss-based rewards drift as training goes, so two forgetting variants exist:
    `window` keeps each arm's last `window` rewards: its mean and n_i come from those, while N counts
    every update, so an arm left alone is retried at UCB1's own pace as N grows. The window is per
    arm, not SW-UCB's last `window` draws across arms (Garivier & Moulines 2011): there each weaker
    arm has only a few draws in the window, whose confidence terms (c * sqrt(ln 100 / 2.5) = 1.9 at
    window 100, c = sqrt(2)) outweigh any gap in [0, 1]: SW-UCB spreads its draws (48% to the best of
    5 arms 0.1/0.3/.../0.9, measured) where each arm's own window still finds it. A drawn source's
    reward drifts because it is drawn (the model learns it), and its own window follows that.
    `discount` (D-UCB) shrinks every arm's count and sum by that factor on each update: its counts
    are "effective" counts, fractional.
    """

    kind = "ucb1"

    def __init__(self, c: float = math.sqrt(2), window: int | None = None, discount: float | None = None):
        if window is not None and discount is not None:
            raise ValueError("set window or discount for UCB1, not both")
        if c < 0:
            raise ValueError(f"c must be >= 0, got {c}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if discount is not None and not 0.0 < discount < 1.0:
            raise ValueError(f"discount must be in (0, 1), got {discount}")
        self.c = c
        self.window = window
        self.discount = discount
        self._counts: dict[str, float] = {}
        self._sums: dict[str, float] = {}
        self._recent: dict[str, deque[float]] = {}  # with a window: each arm's last `window` rewards
        self._pulls: dict[str, int] = {}  # with a window: every update of each arm, for N

    @property
    def variant(self) -> str:
        return "per-arm-window" if self.window is not None else "discounted" if self.discount is not None else "plain"

    def _indices(self, arms: list[str]) -> dict[str, float]:
        totals = self._pulls if self.window is not None else self._counts
        # a total under 1 (only D-UCB's fractional counts get there) would give a negative ln
        log_total = math.log(max(sum(totals.get(arm, 0.0) for arm in arms), 1.0))
        indices = {}
        for arm in arms:
            n = self._counts.get(arm, 0.0)
            if n <= 0.0:
                indices[arm] = math.inf  # untried: try it before anything else
            else:
                indices[arm] = self._sums[arm] / n + self.c * math.sqrt(log_total / n)
        return indices

    def choose(self, arms: list[str], rng: random.Random) -> str:
        # rng unused: UCB1 is deterministic, and untried arms go first in list order via the inf index
        return _first_max(arms, self._indices(arms))

    def update(self, arm: str, reward: float) -> None:
        reward = _check_reward(reward)
        if self.discount is not None:
            for name in self._counts:
                self._counts[name] *= self.discount
                self._sums[name] *= self.discount
        elif self.window is not None:
            recent = self._recent.setdefault(arm, deque())
            while len(recent) >= self.window:
                self._forget_oldest(arm)
            recent.append(reward)
            self._pulls[arm] = self._pulls.get(arm, 0) + 1
        self._counts[arm] = self._counts.get(arm, 0.0) + 1.0
        self._sums[arm] = self._sums.get(arm, 0.0) + reward

    def _forget_oldest(self, arm: str) -> None:
        self._counts[arm] -= 1.0
        self._sums[arm] -= self._recent[arm].popleft()

    def scores(self, arms: list[str]) -> dict[str, float]:
        """The UCB index of each arm; math.inf for an arm with no (effective) pulls."""
        return self._indices(arms)

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "variant": self.variant,
            "counts": dict(self._counts),
            "sums": dict(self._sums),
            "recent": {arm: list(rewards) for arm, rewards in self._recent.items()},
            "pulls": dict(self._pulls),
        }

    def load_state_dict(self, state: dict) -> None:
        _check_kind(self, state)
        # statistics from another variant mean something else (a windowed count is not a discounted one)
        if state.get("variant") != self.variant:
            raise ValueError(f"state of a {state.get('variant')} UCB1 cannot load into a {self.variant} UCB1")
        self._counts = {arm: float(n) for arm, n in state["counts"].items()}
        self._sums = {arm: float(s) for arm, s in state["sums"].items()}
        # a plain or discounted state from before windows were per arm has neither: nothing to load
        self._recent = {arm: deque(float(r) for r in rewards) for arm, rewards in state.get("recent", {}).items()}
        self._pulls = {arm: int(n) for arm, n in state.get("pulls", {}).items()}
        for arm, recent in self._recent.items():
            while len(recent) > self.window:
                self._forget_oldest(arm)  # the recipe shrank the window since the checkpoint


class EXP3Sampler:
    """EXP3 (Auer et al. 2002): p_i = (1 - gamma) * w_i / sum(w) + gamma / K over the offered arms.

    Made for adversarial (drifting) rewards. Log-weights avoid overflow on long runs.
    """

    kind = "exp3"

    def __init__(self, gamma: float = 0.1):
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        self.gamma = gamma
        self._log_weights: dict[str, float] = {}
        # arm -> [probability, K] at its last choice: the importance weight its next update needs
        self._last_choice: dict[str, list[float]] = {}

    def _new_arm_log_weight(self) -> float:
        # optimistic: a newcomer starts level with the current leader, so it is not starved
        return max(self._log_weights.values(), default=0.0)

    def _probabilities(self, arms: list[str]) -> list[float]:
        default = self._new_arm_log_weight()
        log_weights = [self._log_weights.get(arm, default) for arm in arms]
        top = max(log_weights)
        weights = [math.exp(lw - top) for lw in log_weights]
        total = sum(weights)
        k = len(arms)
        return [(1.0 - self.gamma) * w / total + self.gamma / k for w in weights]

    def choose(self, arms: list[str], rng: random.Random) -> str:
        newcomers = [arm for arm in arms if arm not in self._log_weights]
        if newcomers:
            start = self._new_arm_log_weight()
            self._log_weights.update((arm, start) for arm in newcomers)
        probabilities = self._probabilities(arms)
        u = rng.random()
        cumulative = 0.0
        index = len(arms) - 1  # if rounding leaves the cumulative sum just under u
        for i, p in enumerate(probabilities):
            cumulative += p
            if u < cumulative:
                index = i
                break
        self._last_choice[arms[index]] = [probabilities[index], len(arms)]
        return arms[index]

    def update(self, arm: str, reward: float) -> None:
        reward = _check_reward(reward)
        if arm not in self._last_choice:
            raise ValueError(f"EXP3 update for {arm!r}, which it never chose: no probability to weight by")
        probability, k = self._last_choice[arm]
        self._log_weights[arm] += self.gamma * (reward / probability) / k

    def scores(self, arms: list[str]) -> dict[str, float]:
        """The probability each offered arm would be drawn with now."""
        return dict(zip(arms, self._probabilities(arms)))

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "log_weights": dict(self._log_weights),
            "last_choice": {arm: list(pk) for arm, pk in self._last_choice.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        _check_kind(self, state)
        self._log_weights = {arm: float(lw) for arm, lw in state["log_weights"].items()}
        self._last_choice = {arm: [float(p), int(k)] for arm, (p, k) in state["last_choice"].items()}


def build_sampler(kind: str, *, weights: dict[str, float], c: float, window: int | None,
                  discount: float | None, gamma: float) -> Sampler:
    """The sampler a recipe's `curriculum.sampler` names, with the settings that kind uses."""
    if kind == "uniform":
        return UniformSampler()
    if kind == "weighted":
        return WeightedSampler(weights)
    if kind == "ucb1":
        return UCB1Sampler(c=c, window=window, discount=discount)
    if kind == "exp3":
        return EXP3Sampler(gamma=gamma)
    raise ValueError(f"unknown sampler {kind!r}; expected one of uniform, weighted, ucb1, exp3")
