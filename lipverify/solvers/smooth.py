"""lipverify's structured solver: rho*(T) by the Schur recursion, smoothed and minimised (§2)."""

from __future__ import annotations

import math
import time

from .base import Solver, SolveResult


class Smooth(Solver):
    name = "smooth"
    summary = ("lipverify's structured solver: rho*(T) by Schur recursion, smoothed and "
               "minimised directly (§2)")

    def solve(self, lmi, start=None, time_limit=None) -> SolveResult:
        from .smooth_rho import minimize_rho

        t0 = time.perf_counter()
        params, rho, info = minimize_rho(lmi, lmi.anchor() if start is None else start,
                                         time_limit=time_limit)
        ok = math.isfinite(rho)
        return SolveResult(params if ok else None, math.sqrt(rho) if ok else None,
                           ("time limit" if info.get("timed_out") else "converged") if ok
                           else "infeasible start", self.name,
                           time.perf_counter() - t0)
