"""lipverify's interior-point solver for slope-QC LMIs (FORMULATIONS.md §1.2, §2)."""

from __future__ import annotations

import math

from .base import Capabilities, Solver, SolveResult


class InteriorPoint(Solver):
    name = "ipm"
    summary = ("lipverify's interior-point solver for slope QCs: rank-two Newton system, "
               "measured optimality gap (chosen by auto for LMIs of order <= 3000)")
    capabilities = Capabilities(qc_kinds=frozenset({"slope"}))

    def takes(self, lmi):
        from .interior import ipm_reason

        return super().takes(lmi) or ipm_reason(lmi)

    def solve(self, lmi, start=None, time_limit=None) -> SolveResult:
        from .interior import solve_chain_ipm

        res = solve_chain_ipm(lmi, start, time_limit=time_limit)
        return SolveResult(res.params, math.sqrt(max(res.rho, 0.0)), res.status, self.name,
                           res.seconds, lower=res.lower, iterations=res.iterations)
