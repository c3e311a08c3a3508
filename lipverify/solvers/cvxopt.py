"""CVXOPT: a free primal-dual interior-point conic solver (via cvxpy)."""

from __future__ import annotations

from .base import Capabilities, ConicSolver


class CVXOPT(ConicSolver):
    name = "cvxopt"
    cvxpy_solver = "CVXOPT"
    module = "cvxopt"
    summary = "interior point (free, pure Python/C); dense, small problems only"
    capabilities = Capabilities(max_cone=100)

    def options(self, time_limit):
        # CVXOPT has no time limit; its iteration cap bounds the run instead. Its default
        # tolerances (1e-7): tighter ones made it fail on a 6-6-2 ReLU chain; cvxpy's robust
        # (LDL) KKT solver: the default one failed on an orthogonal GroupSort chain.
        return {"max_iters": 200, "kktsolver": "robust"}
