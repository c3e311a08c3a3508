"""Clarabel: an interior-point conic solver (via cvxpy)."""

from __future__ import annotations

from .base import Capabilities, ConicSolver


class Clarabel(ConicSolver):
    name = "clarabel"
    cvxpy_solver = "CLARABEL"
    module = "clarabel"
    summary = "interior point; dense KKT per cone, so small problems only"
    # a dense (n(n+1)/2)^2 KKT block per n x n cone (drake #20705, Clarabel.cpp #74)
    capabilities = Capabilities(max_cone=100)

    def options(self, time_limit):
        opts = {"tol_gap_abs": 1e-9, "tol_gap_rel": 1e-9, "tol_feas": 1e-9}
        if time_limit:
            opts["time_limit"] = float(time_limit)
        return opts
