"""Choosing a solver for an LMI (the solvers themselves: :mod:`lipverify.solvers`).

``BACKENDS`` is the solver registry, in preference order; each solver declares the modules it
needs, the largest PSD cone it takes within memory, and whether it is usable *here*
(installed, and for MOSEK licensed) before any solve.
"""

from __future__ import annotations

from ..errors import SolverError, UsageError
from . import SOLVERS
from . import Solver as Backend

#: name -> solver, in preference order (the registry of :mod:`lipverify.solvers`)
BACKENDS: dict[str, Backend] = SOLVERS


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise UsageError(f"unknown solver {name!r}; choose one of: auto, {', '.join(BACKENDS)}")
    backend = BACKENDS[name]
    ok, why = backend.availability()
    if not ok:
        raise SolverError(f"solver {name} is not usable here: {why}")
    return backend


def choose_backend(max_cone: int, requested: str = "auto", conic_only: bool = False) -> Backend:
    """The first usable backend whose memory limit admits a cone of order ``max_cone``
    (``conic_only``: a cvxpy solver, for problems the structured solver does not take)."""
    if requested in ("ipm", "smooth", "lowrank") and conic_only:
        conic = [n for n, b in BACKENDS.items() if not b.structured]
        raise UsageError(
            f"solver {requested} cannot solve this problem: it needs a conic solver "
            f"({', '.join(conic)}, or auto)"
        )
    if requested in ("ipm", "lowrank"):  # the pipeline runs them itself where they apply
        requested = "smooth"
    if requested != "auto":
        backend = get_backend(requested)
        if max_cone > backend.max_cone:
            raise SolverError(
                f"solver {requested} cannot take a {max_cone}x{max_cone} PSD cone within memory "
                f"(limit {backend.max_cone}); use --solver auto or --method ldlt-fast"
            )
        return backend
    reasons = []
    for backend in BACKENDS.values():
        if (conic_only and backend.structured) or backend.name in ("ipm", "lowrank"):
            continue
        ok, why = backend.availability()
        if ok and max_cone <= backend.max_cone:
            return backend
        reasons.append(
            f"{backend.name}: " + (why if not ok else f"cone {max_cone} > {backend.max_cone}")
        )
    raise SolverError(
        "no SDP solver fits this problem ("
        + "; ".join(reasons)
        + "); use --method ldlt-fast or naive"
    )


def estimate_cone(sizes: list[int]) -> int:
    """Largest PSD cone of the chordal LipSDP form (§3): max n_{k-1} + n_k."""
    return max(a + b for a, b in zip(sizes, sizes[1:])) if len(sizes) > 1 else sizes[0]
