"""Learning-rate schedules that fit a time budget (``kit.train --time-budget``).

A schedule written in epochs or iterations never reaches its decay when a time budget stops
the run first: a CPU run of 40 minutes would end at full learning rate. With a budget, the
trainers measure progress as the larger of the iteration fraction and the elapsed fraction
of the budget, so the decay lands inside the time the run has.
"""
from __future__ import annotations

import time

__all__ = ["BudgetClock", "halving_tail"]


class BudgetClock:
    """The elapsed fraction of a time budget, from the moment the clock is made.

    ``BudgetClock(None)`` is a clock without a budget: its fraction is always 0.0; a budget of
    0 seconds is spent from the start.
    """

    def __init__(self, budget_s: float | None, now: float | None = None):
        if budget_s is not None and not budget_s >= 0:
            raise ValueError(f"time budget must be >= 0 seconds, got {budget_s!r}")
        self.budget_s = budget_s
        self.start = time.time() if now is None else now

    def fraction(self, now: float | None = None) -> float:
        """Elapsed / budget in [0, 1] (1.0 once the budget is spent; 0.0 without a budget)."""
        if self.budget_s is None:
            return 0.0
        if self.budget_s == 0:
            return 1.0
        now = time.time() if now is None else now
        return min(max((now - self.start) / self.budget_s, 0.0), 1.0)

    def spent(self, now: float | None = None) -> bool:
        """True once the budget is over (never without a budget)."""
        return self.budget_s is not None and self.fraction(now) >= 1.0


def halving_tail(fraction: float, tail: float = 0.2, halvings: int = 5) -> float:
    """Multiplier of the learning rate at ``fraction`` (in [0, 1]) of a run: 1.0 before the
    last ``tail`` of it, then halved ``halvings`` times in equal steps over that tail (cellpose
    3.1's end-of-run decay, which halves every 10 of the last 100 of 500 epochs, in time)."""
    if not 0.0 < tail <= 1.0:
        raise ValueError(f"tail must be in (0, 1], got {tail!r}")
    start = 1.0 - tail
    if fraction < start:
        return 1.0
    step = tail / halvings
    k = min(halvings, 1 + int((fraction - start) / step))
    return 0.5 ** k
