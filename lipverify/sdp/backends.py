"""Solver backends behind one interface (STYLE.md practice 3).

Each backend declares the modules it needs, how large a PSD cone it can take
without exhausting memory, and whether it is usable *here* (installed, and for
MOSEK licensed) before any solve. ``BACKENDS`` order is the preference order.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ..errors import SolverError, UsageError


@dataclass(frozen=True)
class Backend:
    name: str
    cvxpy_solver: str | None
    module: str
    #: Largest PSD cone order the backend handles within memory here (Clarabel builds a dense
    #: (n(n+1)/2)^2 KKT block per n x n cone: drake #20705, Clarabel.cpp #74).
    max_cone: int
    summary: str

    @property
    def structured(self) -> bool:
        """True for lipverify's own solver (no cvxpy, works on rho*(T) directly)."""
        return self.cvxpy_solver is None

    def availability(self) -> tuple[bool, str]:
        if self.structured:
            return True, "built in"
        if importlib.util.find_spec(self.module) is None:
            return False, f"{self.module} is not installed"
        if self.name == "mosek":
            from ..doctor import mosek_status

            st = mosek_status()
            return st.ok, st.detail
        return True, "installed"

    def options(self, time_limit: float | None, accurate: bool = True) -> dict:
        opts: dict = {}
        if self.name == "clarabel":
            opts = {"tol_gap_abs": 1e-9, "tol_gap_rel": 1e-9, "tol_feas": 1e-9}
            if time_limit:
                opts["time_limit"] = float(time_limit)
        elif self.name == "scs":
            opts = {"eps_abs": 1e-7, "eps_rel": 1e-7, "max_iters": 200_000}
            if time_limit:
                opts["time_limit_secs"] = float(time_limit)
        elif self.name == "mosek" and time_limit:
            opts = {"mosek_params": {"MSK_DPAR_OPTIMIZER_MAX_TIME": float(time_limit)}}
        return opts


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("mosek", "MOSEK", "mosek", 3000, "interior point, Schur system (needs a licence)"),
        Backend(
            "clarabel",
            "CLARABEL",
            "clarabel",
            100,
            "interior point; dense KKT per cone, so small problems only",
        ),
        Backend(
            "ipm",
            None,
            "lipverify",
            10**9,
            "lipverify's interior-point solver for slope QCs: rank-two Newton system, "
            "measured optimality gap (chosen by auto for LMIs of order <= 3000)",
        ),
        Backend(
            "smooth",
            None,
            "lipverify",
            10**9,
            "lipverify's structured solver: rho*(T) by Schur recursion, smoothed and "
            "minimised directly (§2)",
        ),
        Backend("scs", "SCS", "scs", 2500, "first order (ADMM); low accuracy, certified after"),
    )
}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise SolverError(f"unknown solver {name!r}; known: {', '.join(BACKENDS)}")
    backend = BACKENDS[name]
    ok, why = backend.availability()
    if not ok:
        raise SolverError(f"solver {name} is not usable here: {why}")
    return backend


def choose_backend(max_cone: int, requested: str = "auto", conic_only: bool = False) -> Backend:
    """The first usable backend whose memory limit admits a cone of order ``max_cone``
    (``conic_only``: a cvxpy solver, for problems the structured solver does not take)."""
    if requested in ("ipm", "smooth") and conic_only:
        conic = [n for n, b in BACKENDS.items() if not b.structured]
        raise UsageError(
            f"solver {requested} cannot solve this problem: it needs a conic solver "
            f"({', '.join(conic)}, or auto)"
        )
    if requested == "ipm":  # the methods run the IPM themselves where it applies
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
        if (conic_only and backend.structured) or backend.name == "ipm":
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
