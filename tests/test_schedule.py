"""Learning-rate schedules that fit a time budget (kit.models.schedule, Mask R-CNN's lr_at)."""
import math
from types import SimpleNamespace

import pytest

from kit.models.maskrcnn.train import lr_at
from kit.models.schedule import BudgetClock, halving_tail


def test_budget_clock_fraction_and_spent():
    clock = BudgetClock(100.0, now=1000.0)
    assert clock.fraction(1000.0) == 0.0
    assert clock.fraction(1025.0) == pytest.approx(0.25)
    assert not clock.spent(1099.0)
    assert clock.fraction(1500.0) == 1.0 and clock.spent(1500.0)
    free = BudgetClock(None)
    assert free.fraction() == 0.0 and not free.spent()
    assert BudgetClock(0.0).spent()  # a budget of 0 is spent from the start
    with pytest.raises(ValueError, match="time budget"):
        BudgetClock(-1.0)


def test_halving_tail_halves_over_the_last_fifth():
    assert halving_tail(0.0) == 1.0 and halving_tail(0.79) == 1.0
    assert halving_tail(0.80) == 0.5
    assert halving_tail(0.85) == 0.25
    assert halving_tail(1.0) == 0.5 ** 5
    factors = [halving_tail(f / 100) for f in range(101)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))  # never rises


def test_mask_rcnn_schedule_decays_with_the_budget():
    tcfg = SimpleNamespace(lr=0.01, schedule="cosine", steps=(0.75, 0.9), warmup_iters=0,
                           warmup_factor=0.001)
    # 10 of 1000 iterations done, but the budget is half spent: the cosine is at its middle.
    assert lr_at(10, 1000, tcfg) == pytest.approx(0.01 * 0.5 * (1 + math.cos(0.01 * math.pi)))
    assert lr_at(10, 1000, tcfg, time_fraction=0.5) == pytest.approx(0.005)
    assert lr_at(10, 1000, tcfg, time_fraction=1.0) == pytest.approx(0.0)
    # iterations ahead of time: the iterations lead
    assert lr_at(500, 1000, tcfg, time_fraction=0.1) == pytest.approx(0.005)
    step = SimpleNamespace(**{**vars(tcfg), "schedule": "step"})
    assert lr_at(0, 1000, step, time_fraction=0.8) == pytest.approx(0.001)
    assert lr_at(0, 1000, step, time_fraction=0.95) == pytest.approx(0.0001)
