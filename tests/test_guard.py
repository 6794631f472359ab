"""INV-TRAIN-005: the regime-aware divergence guard (falsifier tests from seed 004)."""

from __future__ import annotations

import math

import pytest

from toolkit.train.guard import DivergenceGuard, first_val_loss_cap


def test_cap_formula():
    assert first_val_loss_cap("finetune", 50257) == 10.0
    assert first_val_loss_cap("from_scratch", 50257) == pytest.approx(2.0 * math.log(50257))
    assert first_val_loss_cap("from_scratch", 50257) == pytest.approx(21.6497, abs=1e-3)


def test_from_scratch_accepts_near_random_first_loss():
    assert DivergenceGuard("from_scratch", 50257).check_val_loss(18.0) is None


def test_from_scratch_stops_above_twice_ln_vocab():
    reason = DivergenceGuard("from_scratch", 50257).check_val_loss(25.0)
    assert reason and "INV-TRAIN-005" in reason and "from_scratch" in reason


def test_finetune_stops_at_10_5():
    reason = DivergenceGuard("finetune", 50257).check_val_loss(10.5)
    assert reason and "10.0" in reason
    assert DivergenceGuard("finetune", 50257).check_val_loss(9.9) is None


def test_doubling_and_non_finite():
    guard = DivergenceGuard("finetune", 100)
    assert guard.check_val_loss(2.0) is None
    assert guard.check_val_loss(3.9) is None
    assert "more than double" in guard.check_val_loss(7.9)
    assert "nan" in DivergenceGuard("finetune", 100).check_val_loss(float("nan"))
    assert guard.check_train_loss(float("inf"))
    assert guard.check_train_loss(1.0) is None


def test_state_round_trip():
    guard = DivergenceGuard("finetune", 100)
    guard.check_val_loss(2.0)
    other = DivergenceGuard("finetune", 100)
    other.load_state_dict(guard.state_dict())
    assert other.check_val_loss(4.5) is not None  # remembers the previous 2.0


def test_a_failed_check_is_not_remembered_so_resume_is_judged_again():
    guard = DivergenceGuard("finetune", 100)
    assert guard.check_val_loss(50.0)
    resumed = DivergenceGuard("finetune", 100)
    resumed.load_state_dict(guard.state_dict())
    assert resumed.check_val_loss(50.0), "a resumed run must not take the failing loss as its baseline"
