"""The solver contract: what every SDP solver declares and returns.

A solver has a ``name``, a one-line ``summary``, :class:`Capabilities` (the LMI kinds and QC
kinds it takes, the largest PSD cone it handles within memory here), an
:meth:`~Solver.availability` that says up front why it cannot run (not installed, no
licence) rather than failing deep in a solve, and :meth:`~Solver.solve`, which returns one
:class:`SolveResult` for any LMI it takes. A solver only *proposes* multipliers: the bound is
certified afterwards by the §8 check (:mod:`lipverify.certify.rump`), whatever the solver says.

Adding a solver is one file in this package and one line in ``lipverify/solvers/__init__.py``
(the registry, in preference order).
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

#: LMI kinds (FORMULATIONS.md): a feed-forward chain (§1-§3) and a residual DAG (§5).
LMI_KINDS = frozenset({"chain", "dag"})
#: QC kinds of :data:`lipverify.qc.QC_REGISTRY`.
ALL_QCS = frozenset({"slope", "groupsort", "householder", "maxpool"})


@dataclass(frozen=True, eq=False)
class SolveResult:
    """One solve: multipliers for the LMI (None if the solver found none), the solver's own
    bound ``sqrt(rho)`` in original units, its status, and what it measured."""

    params: np.ndarray | None
    value: float | None
    status: str
    solver: str
    seconds: float
    #: a dual lower bound on the optimum rho, where the solver computes one
    lower: float | None = None
    iterations: int | None = None


@dataclass(frozen=True)
class Capabilities:
    lmi_kinds: frozenset = LMI_KINDS
    qc_kinds: frozenset = ALL_QCS
    #: largest PSD cone order handled within memory here (1e9: any)
    max_cone: int = 10**9


class Solver(ABC):
    """Abstract SDP solver (module docstring)."""

    name: str = ""
    summary: str = ""
    capabilities: Capabilities = Capabilities()
    #: the cvxpy solver name of a conic solver; None for lipverify's own (structured) ones
    cvxpy_solver: str | None = None
    #: the Python module that must be importable
    module: str = "lipverify"

    @property
    def structured(self) -> bool:
        """True for lipverify's own solvers (no cvxpy: they work on rho*(T) directly)."""
        return self.cvxpy_solver is None

    @property
    def max_cone(self) -> int:
        return self.capabilities.max_cone

    def availability(self) -> tuple[bool, str]:
        """``(usable here, why)``, without solving anything."""
        if self.structured:
            return True, "built in"
        if importlib.util.find_spec(self.module) is None:
            return False, f"{self.module} is not installed"
        return True, "installed"

    def takes(self, lmi) -> str | None:
        """None if this solver takes ``lmi``, else why not."""
        kind = lmi.kind
        if kind not in self.capabilities.lmi_kinds:
            return f"{self.name} does not take {kind} LMIs"
        bad = sorted({qc.kind for qc in lmi.qcs} - self.capabilities.qc_kinds)
        if bad:
            return f"{self.name} does not take {', '.join(bad)} constraints"
        return None

    def options(self, time_limit: float | None) -> dict:
        """Keyword options for cvxpy's ``solve`` (conic solvers)."""
        return {}

    @abstractmethod
    def solve(self, lmi, start=None, time_limit: float | None = None) -> SolveResult:
        """Minimise rho over ``lmi``'s multipliers (``start``: a feasible point, if any)."""


class ConicSolver(Solver):
    """A cvxpy conic solver on the chordal chain LMI (§3) or the chained DAG LMI (§5b)."""

    def solve(self, lmi, start=None, time_limit=None) -> SolveResult:
        from .conic import solve_banded, solve_chain

        if lmi.kind == "chain":
            return solve_chain(lmi, self, time_limit)
        return solve_banded(lmi, self, time_limit)
