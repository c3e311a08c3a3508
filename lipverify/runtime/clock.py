"""A time budget shared by every stage of one bound (``--time-limit``).

The limit covers everything: the solver, the certification after it and the optimality gap.
Stages ask for what is left after a *reserve* (the measured cost of one certification),
so the last certificate always fits and the best certified bound found so far is returned.

>>> clock = Clock(None)
>>> clock.left() is None, clock.expired()
(True, False)
>>> clock = Clock(10.0)
>>> 0.0 < clock.left(reserve=2.0) <= 8.0
True
"""

from __future__ import annotations

import time

#: Smallest time handed to a stage (it returns its start at once when this is all it gets).
FLOOR = 1e-3


class Clock:
    """Wall-clock budget; ``limit=None`` means unlimited (every query returns None / False)."""

    def __init__(self, limit: float | None):
        self.limit = limit
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self, reserve: float = 0.0, share: float = 1.0) -> float | None:
        """Seconds a stage may take: ``share`` of what remains after ``reserve``."""
        if self.limit is None:
            return None
        return max(share * (self.limit - self.elapsed() - reserve), FLOOR)

    def expired(self, reserve: float = 0.0) -> bool:
        return self.limit is not None and self.elapsed() + reserve >= self.limit

    @property
    def deadline(self) -> float | None:
        """Absolute ``time.perf_counter()`` value at which the budget ends."""
        return None if self.limit is None else self.start + self.limit
