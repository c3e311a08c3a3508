"""SCS: a first-order (ADMM) conic solver (via cvxpy)."""

from __future__ import annotations

from .base import Capabilities, ConicSolver


class SCS(ConicSolver):
    name = "scs"
    cvxpy_solver = "SCS"
    module = "scs"
    summary = "first order (ADMM); low accuracy, certified after"
    capabilities = Capabilities(max_cone=2500)

    def options(self, time_limit):
        opts = {"eps_abs": 1e-7, "eps_rel": 1e-7, "max_iters": 200_000}
        if time_limit:
            opts["time_limit_secs"] = float(time_limit)
        return opts
