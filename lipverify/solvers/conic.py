"""LipSDP as a cvxpy problem in chordal form (FORMULATIONS.md §3), solved by a backend.

The solver sees weights scaled to unit spectral norm (better conditioning); the
multipliers are mapped back to the original weights exactly as the substitution
``dx_k = P_k dx~_k`` dictates, then certified on the original weights (§8).
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..errors import SolverError
from ..lmi.banded import state_maps
from ..lmi.chain import ChainLMI, balance
from .base import SolveResult
from .choose import Backend


def solve_chain(
    lmi: ChainLMI, backend: Backend, time_limit: float | None = None, form: str = "chordal"
) -> SolveResult:
    """Solve min rho s.t. M(rho, p) >= 0 with ``backend``; returns multipliers for ``lmi``."""
    import cvxpy as cp

    start = time.perf_counter()
    scaled, factors, out = balance(lmi)
    rho = cp.Variable(nonneg=True, name="rho")
    params = [cp.Variable(qc.num_params(), name=f"t{k}") for k, qc in enumerate(scaled.qcs, 1)]
    cons = [c for qc, p in zip(scaled.qcs, params) for c in qc.constraints(p)]
    ws = scaled.weights
    sizes = scaled.sizes
    blocks = [qc.cvx_blocks(p) for qc, p in zip(scaled.qcs, params)]
    if form == "chordal":
        # Z_k = [[Q_{k-1} - W^T Gvv W, -W^T Gvw], [., -Gww - Q_k]] >= 0, Q_0 = rho I,
        # Q_{L-1} = W_L^T W_L (§3).
        qs = [rho * np.eye(sizes[0])]
        qs += [cp.Variable((n, n), symmetric=True) for n in sizes[1:-1]]
        qs.append(ws[-1].T @ ws[-1])
        for k, (gvv, gvw, gww) in enumerate(blocks, start=1):
            w = ws[k - 1]
            z = cp.bmat([[qs[k - 1] - w.T @ gvv @ w, -w.T @ gvw], [-(w.T @ gvw).T, -gww - qs[k]]])
            cons.append(psd(z))
    else:
        m = rho * _embed(np.eye(sizes[0]), sizes, 0, 0)
        m = m - _embed(ws[-1].T @ ws[-1], sizes, len(sizes) - 1, len(sizes) - 1)
        cons.append(psd(m + _qc_matrix(ws, blocks, sizes)))
    seconds, status = run_problem(cp.Problem(cp.Minimize(rho), cons), backend, time_limit, start)
    if rho.value is None or any(p.value is None for p in params):
        return SolveResult(None, None, status, backend.name, seconds)
    orig = np.concatenate([np.asarray(p.value, dtype=np.float64).ravel() for p in params])
    value = math.sqrt(max(float(rho.value), 0.0) * out)
    orig = orig * factors
    return SolveResult(orig, value, status, backend.name, seconds)


def _selector(sizes, i) -> np.ndarray:
    offs = np.concatenate([[0], np.cumsum(sizes)])
    out = np.zeros((offs[-1], sizes[i]))
    out[offs[i] : offs[i + 1], :] = np.eye(sizes[i])
    return out


def _embed(block, sizes, i, j):
    """Block (i, j) of a block matrix with block sizes ``sizes`` (numpy or cvxpy)."""
    return _selector(sizes, i) @ block @ _selector(sizes, j).T


def _qc_matrix(ws, blocks, sizes):
    """The QC part of the block-tridiagonal matrix by the §4 insertion rule, in cvxpy."""
    total = 0
    for k, (gvv, gvw, gww) in enumerate(blocks, start=1):
        w = ws[k - 1]
        total = total + _embed(-w.T @ gvv @ w, sizes, k - 1, k - 1)
        total = total + _embed(-w.T @ gvw, sizes, k - 1, k)
        total = total + _embed(-(w.T @ gvw).T, sizes, k, k - 1)
        total = total + _embed(-gww, sizes, k, k)
    return total


def psd(expr):
    return 0.5 * (expr + expr.T) >> 0


def run_problem(prob, backend: Backend, time_limit, start: float | None = None):
    """Compile ``prob`` for ``backend`` and solve it within ``time_limit`` seconds from
    ``start``; returns (seconds, cvxpy status).

    cvxpy's compile can take seconds on its own, so the backend is given only what is left
    of the limit after the problem was built and compiled, and of that only 80%: backends
    look at their clock between iterations only, and one iteration of a conic interior point
    can take a tenth of the budget (Clarabel on digits_maxmin: 1.6 s past a 9.9 s limit).
    If nothing is left, the solve is skipped and the status is ``user_limit`` (no values).
    """
    import warnings

    import cvxpy as cp

    start = time.perf_counter() if start is None else start
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "solution may be inaccurate": §8 decides
            data, chain, inverse = prob.get_problem_data(
                backend.cvxpy_solver, solver_opts=backend.options(time_limit))
            left = None if not time_limit else time_limit - (time.perf_counter() - start)
            if left is not None and left <= 0.05:
                return time.perf_counter() - start, "user_limit"
            solution = chain.solve_via_data(prob, data, solver_opts=backend.options(
                None if left is None else 0.8 * left))
            prob.unpack_results(solution, chain, inverse)
    except cp.error.SolverError as exc:
        raise SolverError(f"{backend.name} failed: {str(exc).splitlines()[0]}") from exc
    return time.perf_counter() - start, str(prob.status)


def solve_linf(lmi: ChainLMI, backend: Backend, time_limit: float | None = None) -> SolveResult:
    """§1.4 bordered LMI for a single output row, full form: min rho over (tau, T)."""
    import cvxpy as cp

    start = time.perf_counter()
    sizes = lmi.sizes
    n = sum(sizes)
    rho = cp.Variable(name="rho")
    tau = cp.Variable(sizes[0], nonneg=True, name="tau")
    params = [cp.Variable(qc.num_params(), name=f"t{k}") for k, qc in enumerate(lmi.qcs, 1)]
    cons = [c for qc, p in zip(lmi.qcs, params) for c in qc.constraints(p)]
    blocks = [qc.cvx_blocks(p) for qc, p in zip(lmi.qcs, params)]
    p_mat = _embed(cp.diag(tau), sizes, 0, 0) + _qc_matrix(lmi.weights, blocks, sizes)
    c = np.zeros(n)
    c[n - lmi.weights[-1].size :] = lmi.weights[-1].ravel()
    corner = cp.reshape(2 * rho - cp.sum(tau), (1, 1), order="C")
    cons.append(psd(cp.bmat([[corner, -c[None, :]], [-c[:, None], p_mat]])))
    seconds, status = run_problem(cp.Problem(cp.Minimize(rho), cons), backend, time_limit, start)
    if rho.value is None or tau.value is None or any(p.value is None for p in params):
        return SolveResult(None, None, status, backend.name, seconds)
    x = np.concatenate(
        [np.asarray(tau.value).ravel()]
        + [np.asarray(p.value, dtype=np.float64).ravel() for p in params]
    )
    return SolveResult(x, float(rho.value), status, backend.name, seconds)


def _value(lmi, params) -> float | None:
    """The solver's bound ``sqrt(rho*)`` at its (projected) multipliers."""
    rho = lmi.rho_star(lmi.project(params))
    return math.sqrt(rho) if math.isfinite(rho) else None


def solve_banded(lmi, backend: Backend, time_limit: float | None = None) -> SolveResult:
    """Minimise rho over the chained (banded) LMI of a DAG (§5b) with a conic backend."""
    import cvxpy as cp

    start = time.perf_counter()
    q0, steps, c_out = state_maps(lmi)
    rho = cp.Variable(nonneg=True, name="rho")
    params = [cp.Variable(qc.num_params(), name=f"t{k}") for k, qc in enumerate(lmi.qcs, 1)]
    cons = [c for qc, p in zip(lmi.qcs, params) for c in qc.constraints(p)]
    store = rho * np.eye(q0.shape[1])  # P_0 = rho I on s_0 = Q_0^T x (||s_0|| <= ||x||)
    for k, ((a, b, h), qc, p) in enumerate(zip(steps, lmi.qcs, params), start=1):
        d_prev, n_k = a.shape[1], b.shape[1]
        nxt = (c_out.T @ c_out if k == len(steps)
               else cp.Variable((a.shape[0], a.shape[0]), symmetric=True, name=f"P{k}"))
        gvv, gvw, gww = qc.cvx_blocks(p)
        ab = np.hstack([a, b])
        r = -(ab.T @ nxt @ ab) - cp.bmat([[h.T @ gvv @ h, h.T @ gvw],
                                          [(h.T @ gvw).T, gww]])
        first = cp.bmat([[store, np.zeros((d_prev, n_k))],
                         [np.zeros((n_k, d_prev)), np.zeros((n_k, n_k))]])
        cons.append(psd(first + r))
        store = nxt
    seconds, status = run_problem(cp.Problem(cp.Minimize(rho), cons), backend, time_limit, start)
    if rho.value is None or any(p.value is None for p in params):
        return SolveResult(None, None, status, backend.name, seconds)
    x = np.concatenate([np.asarray(p.value, dtype=np.float64).ravel() for p in params])
    return SolveResult(x, _value(lmi, x), status, backend.name, seconds)


def solve_dag(lmi, backend: Backend, time_limit: float | None = None) -> SolveResult:
    """Minimise rho over the monolithic DAG LMI (§5a) with a conic backend (for checking)."""
    import cvxpy as cp

    start = time.perf_counter()
    rho = cp.Variable(nonneg=True)
    params = [cp.Variable(qc.num_params()) for qc in lmi.qcs]
    cons = [c for qc, p in zip(lmi.qcs, params) for c in qc.constraints(p)]
    n0 = lmi.sizes[0]
    e0 = np.zeros((lmi.order, lmi.order))
    e0[:n0, :n0] = np.eye(n0)
    m = rho * e0 - lmi.out.T @ lmi.out
    for k, (qc, p) in enumerate(zip(lmi.qcs, params), start=1):
        gvv, gvw, gww = qc.cvx_blocks(p)
        v, s = lmi.pres[k - 1], lmi.select(k)
        cross = v.T @ gvw @ s
        m = m - (v.T @ gvv @ v + cross + cross.T + s.T @ gww @ s)
    cons.append(psd(m))
    seconds, status = run_problem(cp.Problem(cp.Minimize(rho), cons), backend, time_limit, start)
    if rho.value is None or any(p.value is None for p in params):
        return SolveResult(None, None, status, backend.name, seconds)
    x = np.concatenate([np.asarray(p.value, dtype=np.float64).ravel() for p in params])
    return SolveResult(x, _value(lmi, x), status, backend.name, seconds)
