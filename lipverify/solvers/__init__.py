"""SDP solvers behind one contract (:mod:`lipverify.solvers.base`), in one ordered registry.

:data:`SOLVERS` maps a name to a solver instance; its order is the preference order of
``--solver auto``. ``lipverify solvers`` lists it with each solver's availability here.

>>> list(SOLVERS)[:3]
['mosek', 'clarabel', 'ipm']
"""

from __future__ import annotations

from ..errors import UsageError, check_unique
from .base import Capabilities, ConicSolver, Solver, SolveResult
from .clarabel import Clarabel
from .cvxopt import CVXOPT
from .ipm import InteriorPoint
from .lowrank import LowRank
from .mosek import Mosek
from .scs import SCS
from .smooth import Smooth

SOLVERS: dict[str, Solver] = {}


def register_solver(solver: Solver) -> Solver:
    """Add ``solver`` at the end of the preference order."""
    check_unique("solvers", solver.name, SOLVERS.get(solver.name), solver)
    SOLVERS[solver.name] = solver
    return solver


def get_solver(name: str) -> Solver:
    """The solver called ``name``; an unknown name is a usage error listing them."""
    if name not in SOLVERS:
        raise UsageError(f"unknown solver {name!r}; choose one of: auto, {', '.join(SOLVERS)}")
    return SOLVERS[name]


for _cls in (Mosek, Clarabel, InteriorPoint, LowRank, Smooth, SCS, CVXOPT):
    register_solver(_cls())

__all__ = ["SOLVERS", "Capabilities", "ConicSolver", "SolveResult", "Solver", "get_solver",
           "register_solver"]
