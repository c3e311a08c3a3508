"""The typed status of a bound: an outcome plus flags, text only when printed.

Every method returns a :class:`Status`; tests and callers read its fields (``outcome``,
``gap``, ``timed_out``, ``fallback_from``, ``theta``), never substrings of its text.

>>> s = Status(Outcome.STOPPED, "interior point: iteration limit", gap=0.95)
>>> str(s)
'stopped: interior point: iteration limit; optimality gap 9.50e-01'
>>> Status.from_dict(s.to_dict()) == s
True
>>> str(Status.solved(gap=2e-9))
'optimal; optimality gap 2.00e-09'
>>> Status.solved(gap=0.3).outcome is Outcome.CONVERGED   # "optimal" needs a small gap
True
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

#: A bound is labelled optimal only when its measured relative gap is at most this.
GAP_TOLERANCE = 1e-6


class Outcome(enum.StrEnum):
    """How the method ended (the flags say what else happened)."""

    #: nothing to optimise (naive, ldlt-fast, a lower bound, ...): the method ran
    OK = "ok"
    #: an SDP solved to optimality: measured gap <= GAP_TOLERANCE, or the solver said so
    #: and no gap could be measured
    OPTIMAL = "optimal"
    #: a solver converged, but no gap within the tolerance proves it optimal (the measured
    #: gap, when there is one, is in ``Status.gap``)
    CONVERGED = "converged"
    #: the solver stopped before the optimum (iteration limit, line search, time, gap too big)
    STOPPED = "stopped"
    #: the intended method could not run; a simpler certified bound is reported
    FALLBACK = "fallback"
    #: the result is no certified bound (the multipliers failed the §8 check)
    NOT_CERTIFIED = "not certified"
    #: the method's problem has no solution (e.g. an infeasible LP)
    INFEASIBLE = "infeasible"
    #: a number that is not a bound (an estimate)
    ESTIMATE = "estimate"
    #: the bound fell below a known lower bound: a bug, never certified
    UNSOUND = "unsound"


@dataclass(frozen=True)
class Status:
    """What happened in one bound.

    ``detail`` says what the outcome alone does not (the solver's own status, why a fallback
    was needed); ``gap`` is the measured relative optimality gap of the bound,
    ``(L - L_dual) / L`` with ``L_dual`` the square root of a dual bound on rho (None: not
    measured, with ``gap_note`` saying why when known); ``theta`` the §8 repair blend toward
    the anchor; ``timed_out`` that the time limit was reached (the best certified iterate is
    reported); ``fallback_from`` the method or stage whose failure led to a fallback;
    ``notes`` any further remarks, in order.
    """

    outcome: Outcome = Outcome.OK
    detail: str = ""
    gap: float | None = None
    gap_note: str | None = None
    theta: float = 0.0
    timed_out: bool = False
    fallback_from: str | None = None
    notes: tuple[str, ...] = field(default=())

    @classmethod
    def solved(cls, detail: str = "", *, gap: float | None = None,
               solver_optimal: bool = True, **flags) -> Status:
        """An SDP stage's status: optimal only if the solver said so *and* the measured gap
        (when there is one) is within :data:`GAP_TOLERANCE`."""
        status = cls(Outcome.OPTIMAL if solver_optimal else Outcome.STOPPED, detail, **flags)
        return status.with_gap(gap) if gap is not None else status

    def with_(self, **changes) -> Status:
        """A copy with fields changed (``notes`` given as one string are appended)."""
        note = changes.pop("note", None)
        out = replace(self, **changes)
        return out if note is None else replace(out, notes=(*out.notes, note))

    def with_gap(self, gap: float | None, note: str | None = None) -> Status:
        """The measured gap recorded; an OPTIMAL outcome becomes STOPPED when it is too big."""
        out = replace(self, gap=gap, gap_note=note if gap is None else None)
        if self.outcome is Outcome.OPTIMAL and gap is not None and gap > GAP_TOLERANCE:
            out = replace(out, outcome=Outcome.CONVERGED,
                          detail=self.detail or "solver reported optimal, measured gap above "
                          "tolerance")
        return out

    @property
    def optimal(self) -> bool:
        return self.outcome is Outcome.OPTIMAL

    def __str__(self) -> str:
        head = self.outcome.value
        if self.detail:
            head = f"{head}: {self.detail}"
        parts = [head]
        if self.fallback_from:
            parts.append(f"{self.fallback_from} did not finish")
        parts.extend(self.notes)
        if self.gap is not None:
            parts.append(f"optimality gap {self.gap:.2e}")
        elif self.gap_note:
            parts.append(f"optimality gap not computed: {self.gap_note}")
        if self.theta > 0:
            parts.append(f"repaired (theta={self.theta:.3g})")
        if self.timed_out:
            parts.append("time limit reached, best certified iterate")
        return "; ".join(parts)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["outcome"] = self.outcome.value
        d["notes"] = list(self.notes)
        if d["gap"] is not None and not math.isfinite(d["gap"]):
            d["gap"] = None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | str) -> Status:
        """From :meth:`to_dict`, or from the plain text a result stored before 0.6 carried."""
        if isinstance(d, str):
            return cls.from_text(d)
        d = dict(d)
        d["outcome"] = Outcome(d.get("outcome", "ok"))
        d["notes"] = tuple(d.get("notes", ()))
        return cls(**d)

    @classmethod
    def from_text(cls, text: str) -> Status:
        """A legacy text status: its leading word picks the outcome, the rest is detail."""
        for outcome in sorted(Outcome, key=lambda o: -len(o.value)):
            if text == outcome.value:
                return cls(outcome)
            if text.startswith(outcome.value):
                return cls(outcome, text[len(outcome.value):].lstrip(":; "))
        return cls(Outcome.OK, text)


def as_status(value: Status | str) -> Status:
    """``value`` as a :class:`Status` (methods may return a bare outcome word such as "ok")."""
    return value if isinstance(value, Status) else Status.from_text(value)
