"""Bandit samplers: UCB1 finds the best source, the forgetting variants follow a switch, EXP3 prefers
the best source, statistics survive changing arm sets, and a JSON checkpoint continues exactly."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.curriculum.samplers import (
    EXP3Sampler,
    UCB1Sampler,
    UniformSampler,
    WeightedSampler,
    build_sampler,
)
from toolkit.data.sources import rng_state, set_rng_state

# UCB1 with the default c = sqrt(2) needs this gap to reach 90% by draw 2,000 (see the falsifier test)
MIN_GAP = 0.4


def _run_bandit(sampler, arms, means_at, seed, draws=4000):
    """Play `draws` Bernoulli rounds; means_at(t) gives the arm means at draw t (0-based)."""
    rng = random.Random(seed)
    rewards = random.Random(f"rewards-{seed}")  # separate stream: the sampler's draws don't shift rewards
    picks = []
    for t in range(draws):
        arm = sampler.choose(arms, rng)
        sampler.update(arm, 1.0 if rewards.random() < means_at(t)[arms.index(arm)] else 0.0)
        picks.append(arm)
    return picks


def _share(picks, arm, start, stop):
    """Share of `arm` among draws start+1 .. stop (1-based), i.e. picks[start:stop]."""
    window = picks[start:stop]
    return window.count(arm) / len(window)


@st.composite
def stationary_bandits(draw):
    """2-5 Bernoulli arms; best mean in [0.4, 1]; every other mean at most best - MIN_GAP."""
    best = draw(st.floats(MIN_GAP, 1.0))
    # drawn as slack below best - MIN_GAP: hypothesis favours 0, the hardest case (others at the edge)
    slacks = draw(st.lists(st.floats(0.0, best - MIN_GAP), min_size=1, max_size=4))
    others = [best - MIN_GAP - slack for slack in slacks]
    where = draw(st.integers(0, len(others)))
    means = others[:where] + [best] + others[where:]
    return means, where, draw(st.integers(0, 2**32 - 1))


def best_arm_share_ucb1(means, best, seed):
    arms = [f"source_{i}" for i in range(len(means))]
    picks = _run_bandit(UCB1Sampler(), arms, lambda t: means, seed)
    return _share(picks, arms[best], 2000, 4000)


def best_arm_share_exp3(means, best, seed):
    arms = [f"source_{i}" for i in range(len(means))]
    picks = _run_bandit(EXP3Sampler(), arms, lambda t: means, seed)
    return _share(picks, arms[best], 2000, 4000)


@settings(max_examples=150, deadline=None)
@given(stationary_bandits())
def test_ucb1_draws_the_best_arm_90_percent_after_2000_draws(bandit):
    """Falsifier from the spec: UCB1 on a stationary bandit draws the best arm >= 90% of the time
    after 2,000 draws.

    Configuration space: 2-5 Bernoulli arms, best mean in [0.4, 1.0], gap to the second best >= 0.4,
    default c = sqrt(2); the share is over draws 2,001-4,000. The claim is only true with a wide gap:
    with c = sqrt(2) a suboptimal arm keeps being drawn about 2 ln(t) / gap^2 times, so with five arms
    a gap of 0.25 gives about 88% and a gap of 0.1 about 60% (worst case: all others at best - gap).
    At gap >= 0.4 the worst case measured about 94% over thousands of seeds.
    """
    means, best, seed = bandit
    assert best_arm_share_ucb1(means, best, seed) >= 0.9


@settings(max_examples=60, deadline=None)
@given(stationary_bandits())
def test_exp3_prefers_the_best_arm(bandit):
    """Same bandits as the UCB1 falsifier. EXP3 always spends gamma on uniform exploration, so the
    best arm's share can be at most 1 - gamma + gamma / K (0.92 for five arms, gamma = 0.1); 0.9 would
    leave almost no room, so it must reach 0.8 (measured: about 0.90 in the worst case)."""
    means, best, seed = bandit
    assert best_arm_share_exp3(means, best, seed) >= 0.8


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_forgetting_ucb_tracks_a_switch_that_plain_ucb1_misses(seed):
    """The best source degrades at draw 2,000 (0.9 -> 0.4) and another becomes best (0.3 -> 0.6),
    like loss-based rewards drifting down. Plain UCB1's old mean of ~0.9 over ~2,000 draws stays
    above 0.6 for about 2,000 more draws; UCB1 with a window of each arm's last 500 rewards and D-UCB
    (discount 0.995) forget it. Over draws 2,501-4,000 (measured over 200 seeds): plain UCB1 0.09-0.47,
    windowed 0.90-0.99, D-UCB 0.66-0.81 of draws go to the new best arm."""
    arms = ["old_best", "new_best"]

    def means_at(t):
        return [0.9, 0.3] if t < 2000 else [0.4, 0.6]

    def late_share(sampler):
        return _share(_run_bandit(sampler, arms, means_at, seed), "new_best", 2500, 4000)

    plain = late_share(UCB1Sampler())
    sliding = late_share(UCB1Sampler(window=500))
    discounted = late_share(UCB1Sampler(discount=0.995))
    assert plain < 0.5
    assert sliding >= 0.6 and discounted >= 0.6
    assert min(sliding, discounted) >= plain + 0.2


def _pull(sampler, arm, rewards):
    for reward in rewards:
        sampler.update(arm, reward)


def test_ucb1_tries_untried_arms_first_in_order_and_breaks_ties_by_order():
    sampler, rng = UCB1Sampler(), random.Random(0)
    arms = ["b", "a", "c"]
    for expected in arms:
        assert sampler.choose(arms, rng) == expected
        sampler.update(expected, 0.5)
    assert sampler.choose(arms, rng) == "b"  # all indices equal: the earliest in the list


def test_ucb1_keeps_stats_of_arms_not_offered_and_tries_a_new_arm_first():
    sampler, rng = UCB1Sampler(), random.Random(0)
    _pull(sampler, "a", [1.0, 0.0, 1.0])
    _pull(sampler, "b", [0.0, 0.0])
    _pull(sampler, "c", [1.0])
    for _ in range(50):  # "c" leaves the eligible set for a while
        sampler.update(sampler.choose(["a", "b"], rng), 0.5)
    state = sampler.state_dict()
    assert state["counts"]["c"] == 1.0 and state["sums"]["c"] == 1.0
    assert sampler.choose(["a", "b", "c", "d"], rng) == "d"
    # N counts only the offered arms
    scores = sampler.scores(["a", "c"])
    n_a, n_c = state["counts"]["a"], 1.0
    log_n = math.log(n_a + n_c)
    assert scores["c"] == pytest.approx(1.0 + math.sqrt(2) * math.sqrt(log_n / n_c))
    assert scores["a"] == pytest.approx(state["sums"]["a"] / n_a + math.sqrt(2) * math.sqrt(log_n / n_a))
    assert sampler.scores(["d"]) == {"d": math.inf}


def test_window_keeps_each_arms_last_rewards_and_counts_every_draw_for_n():
    sampler = UCB1Sampler(window=3)
    _pull(sampler, "a", [1.0] * 3)
    _pull(sampler, "b", [0.2] * 9)  # "b"'s own window: it does not push "a"'s rewards out
    _pull(sampler, "a", [0.0, 0.0])  # but "a"'s own newer rewards do
    state = sampler.state_dict()
    assert state["counts"] == {"a": 3.0, "b": 3.0} and state["pulls"] == {"a": 5, "b": 9}
    assert state["recent"] == {"a": [1.0, 0.0, 0.0], "b": [0.2] * 3}
    log_n = math.log(5 + 9)  # N: every draw, so an arm left alone is retried as N grows
    assert sampler.scores(["a", "b"])["a"] == pytest.approx(1 / 3 + math.sqrt(2) * math.sqrt(log_n / 3))


@pytest.mark.parametrize("seed", range(10))
def test_window_100_draws_the_best_of_5_arms_90_percent_after_2000_draws(seed):
    """Issue 13: SW-UCB's shared window of the last 100 draws gave the best of these arms 48% of draws
    2,001-4,000 (a weaker arm's few draws in the window carry confidence terms larger than any gap).
    Means 0.1/0.3/0.5/0.7/0.9: plain UCB1 needs gaps this wide to reach 90% (MIN_GAP above).
    Measured over 200 seeds: 98.1-100%."""
    means = [0.1, 0.3, 0.5, 0.7, 0.9]
    arms = [f"source_{i}" for i in range(len(means))]
    picks = _run_bandit(UCB1Sampler(window=100), arms, lambda t: means, seed)
    assert _share(picks, arms[-1], 2000, 4000) >= 0.9


def test_discounted_counts_shrink_on_every_update():
    sampler = UCB1Sampler(discount=0.5)
    _pull(sampler, "a", [1.0])
    _pull(sampler, "b", [0.0, 1.0])
    state = sampler.state_dict()
    assert state["counts"] == {"a": 0.25, "b": 1.5}
    assert state["sums"] == {"a": 0.25, "b": 1.0}


def test_exp3_gives_a_new_arm_the_leaders_weight():
    sampler, rng = EXP3Sampler(gamma=0.2), random.Random(0)
    arms = ["a", "b"]
    for _ in range(200):
        arm = sampler.choose(arms, rng)
        sampler.update(arm, 1.0 if arm == "a" else 0.0)
    leader = max(sampler.state_dict()["log_weights"].values())
    scores = sampler.scores(["a", "b", "c"])
    assert scores["c"] == pytest.approx(scores["a"]) and scores["c"] > scores["b"]
    assert sum(scores.values()) == pytest.approx(1.0)
    sampler.choose(["a", "b", "c"], rng)
    assert sampler.state_dict()["log_weights"]["c"] == leader


def _make(kind):
    return build_sampler(kind, weights={"a": 3.0, "c": 0.5}, c=1.0, window=None, discount=None, gamma=0.2)


ALL_SAMPLERS = {
    "uniform": lambda: _make("uniform"),
    "weighted": lambda: _make("weighted"),
    "ucb1": lambda: _make("ucb1"),
    "exp3": lambda: _make("exp3"),
    "sw-ucb": lambda: UCB1Sampler(window=40),
    "d-ucb": lambda: UCB1Sampler(discount=0.97),
}


def _arms_at(step):
    """The eligible set changes: "c" opens at step 50, "b" is out for a while, "d" opens late."""
    arms = ["a", "b"] if step < 50 else ["a", "b", "c"]
    if 120 <= step < 180:
        arms.remove("b")
    return arms + ["d"] if step >= 220 else arms


def _play(sampler, rng, steps):
    choices = []
    for step in steps:
        arms = _arms_at(step)
        arm = sampler.choose(arms, rng)
        # the reward depends only on (step, arm), so both continuations see the same rewards
        sampler.update(arm, random.Random(f"{step}-{arm}").random())
        choices.append((arm, sampler.scores(arms)))
    return choices


@pytest.mark.parametrize("name", ALL_SAMPLERS)
def test_state_round_trip_through_json_continues_identically(name):
    sampler, rng = ALL_SAMPLERS[name](), random.Random(7)
    _play(sampler, rng, range(150))
    checkpoint = json.dumps({"sampler": sampler.state_dict(), "rng": rng_state(rng)}, allow_nan=False)
    expected = _play(sampler, rng, range(150, 300))

    restored, restored_rng = ALL_SAMPLERS[name](), random.Random()
    loaded = json.loads(checkpoint)
    restored.load_state_dict(loaded["sampler"])
    set_rng_state(restored_rng, loaded["rng"])
    assert _play(restored, restored_rng, range(150, 300)) == expected
    assert restored.state_dict() == sampler.state_dict()


@pytest.mark.parametrize("source", ["uniform", "weighted", "ucb1", "exp3"])
def test_loading_another_kinds_state_raises(source):
    state = json.loads(json.dumps(_make(source).state_dict()))
    assert state["kind"] == source
    for target in ["uniform", "weighted", "ucb1", "exp3"]:
        if target != source:
            with pytest.raises(ValueError):
                _make(target).load_state_dict(state)


def test_loading_another_ucb1_variants_state_raises():
    with pytest.raises(ValueError):
        UCB1Sampler(window=10).load_state_dict(UCB1Sampler(discount=0.9).state_dict())
    with pytest.raises(ValueError):
        UCB1Sampler().load_state_dict(UCB1Sampler(window=10).state_dict())


def test_a_smaller_window_on_resume_drops_each_arms_oldest_rewards():
    before = UCB1Sampler(window=10)
    _pull(before, "a", [1.0, 1.0, 0.0, 0.0])
    _pull(before, "b", [0.0] * 4)
    after = UCB1Sampler(window=3)
    after.load_state_dict(before.state_dict())
    state = after.state_dict()
    assert state["counts"] == {"a": 3.0, "b": 3.0} and state["sums"] == {"a": 1.0, "b": 0.0}
    assert state["recent"] == {"a": [1.0, 0.0, 0.0], "b": [0.0] * 3} and state["pulls"] == {"a": 4, "b": 4}


def _empirical_shares(sampler, arms, draws=10_000, seed=3):
    rng = random.Random(seed)
    picks = [sampler.choose(arms, rng) for _ in range(draws)]
    return {arm: picks.count(arm) / draws for arm in arms}


def test_weighted_shares_match_weights_renormalized_over_offered_arms():
    sampler = WeightedSampler({"a": 1.0, "b": 2.0, "c": 5.0, "gone": 100.0})
    arms = ["a", "b", "c", "d"]  # "d" has no weight: 1.0; "gone" is not offered
    expected = {"a": 1 / 9, "b": 2 / 9, "c": 5 / 9, "d": 1 / 9}
    assert sampler.scores(arms) == pytest.approx(expected)
    shares = _empirical_shares(sampler, arms)
    assert all(abs(shares[arm] - expected[arm]) <= 0.02 for arm in arms), shares
    shares = _empirical_shares(sampler, ["b", "c"])
    assert abs(shares["b"] - 2 / 7) <= 0.02 and abs(shares["c"] - 5 / 7) <= 0.02, shares


def test_uniform_shares_are_equal():
    arms = ["a", "b", "c", "d"]
    assert UniformSampler().scores(arms) == {arm: 0.25 for arm in arms}
    shares = _empirical_shares(UniformSampler(), arms)
    assert all(abs(share - 0.25) <= 0.02 for share in shares.values()), shares


def test_weighted_with_all_offered_weights_zero_raises():
    with pytest.raises(ValueError):
        WeightedSampler({"a": 0.0}).choose(["a"], random.Random(0))
    with pytest.raises(ValueError):
        WeightedSampler({"a": -1.0})


def test_build_sampler_picks_the_kind_and_passes_its_settings():
    def build(kind, **overrides):
        settings = dict(weights={"a": 2.0}, c=0.5, window=None, discount=None, gamma=0.3)
        return build_sampler(kind, **{**settings, **overrides})

    assert isinstance(build("uniform"), UniformSampler)
    assert build("weighted").weights == {"a": 2.0}
    assert build("ucb1", window=20).window == 20 and build("ucb1").c == 0.5
    assert build("ucb1", discount=0.9).discount == 0.9
    assert build("exp3").gamma == 0.3
    assert {build(k).kind for k in ["uniform", "weighted", "ucb1", "exp3"]} == {"uniform", "weighted", "ucb1", "exp3"}
    with pytest.raises(ValueError):
        build("thompson")
    with pytest.raises(ValueError):
        build("ucb1", window=20, discount=0.9)


@pytest.mark.parametrize("reward", [-0.1, 1.5, math.nan])
def test_rewards_outside_0_1_are_rejected(reward):
    sampler = UCB1Sampler()
    with pytest.raises(ValueError):
        sampler.update("a", reward)


def test_exp3_update_without_a_choice_raises():
    with pytest.raises(ValueError):
        EXP3Sampler().update("a", 1.0)
