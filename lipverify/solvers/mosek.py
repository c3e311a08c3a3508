"""MOSEK: a commercial interior-point conic solver (via cvxpy); needs a licence."""

from __future__ import annotations

from .base import Capabilities, ConicSolver


class Mosek(ConicSolver):
    name = "mosek"
    cvxpy_solver = "MOSEK"
    module = "mosek"
    summary = "interior point, Schur system (needs a licence)"
    capabilities = Capabilities(max_cone=3000)

    def availability(self):
        ok, why = super().availability()
        if not ok:
            return ok, why
        from ..runtime.doctor import mosek_status

        st = mosek_status()
        return st.ok, st.detail

    def options(self, time_limit):
        if not time_limit:
            return {}
        return {"mosek_params": {"MSK_DPAR_OPTIMIZER_MAX_TIME": float(time_limit)}}
