"""LipSDP as a cvxpy problem in chordal form (FORMULATIONS.md §3), solved by a backend.

The solver sees weights scaled to unit spectral norm (better conditioning); the
multipliers are mapped back to the original weights exactly as the substitution
``dx_k = P_k dx~_k`` dictates, then certified on the original weights (§8).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ..errors import SolverError
from .backends import Backend
from .chain import ChainLMI


@dataclass(frozen=True, eq=False)
class SolveResult:
    params: np.ndarray | None
    value: float | None  # the solver's own bound sqrt(rho), in original units
    status: str
    solver: str
    seconds: float


def _scales(lmi: ChainLMI) -> np.ndarray:
    return np.array([max(float(np.linalg.norm(w, 2)), 1e-300) for w in lmi.weights])


def solve_chain(
    lmi: ChainLMI, backend: Backend, time_limit: float | None = None, form: str = "chordal"
) -> SolveResult:
    """Solve min rho s.t. M(rho, p) >= 0 with ``backend``; returns multipliers for ``lmi``."""
    import cvxpy as cp

    s = _scales(lmi)
    scaled = ChainLMI(
        tuple(w / sk for w, sk in zip(lmi.weights, s)), (None,) * len(s), lmi.qcs, lmi.name
    )
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
            cons.append(0.5 * (z + z.T) >> 0)
    else:
        n = sum(sizes)
        offs = np.concatenate([[0], np.cumsum(sizes)])
        m = rho * _embed(np.eye(sizes[0]), offs, 0, 0, n)
        m = m - _embed(ws[-1].T @ ws[-1], offs, len(sizes) - 1, len(sizes) - 1, n)
        for k, (gvv, gvw, gww) in enumerate(blocks, start=1):
            w = ws[k - 1]
            m = m + _embed_expr(-w.T @ gvv @ w, offs, k - 1, k - 1, n)
            m = m + _embed_expr(-w.T @ gvw, offs, k - 1, k, n)
            m = m + _embed_expr(-(w.T @ gvw).T, offs, k, k - 1, n)
            m = m + _embed_expr(-gww, offs, k, k, n)
        cons.append(0.5 * (m + m.T) >> 0)
    prob = cp.Problem(cp.Minimize(rho), cons)
    start = time.perf_counter()
    try:
        prob.solve(solver=backend.cvxpy_solver, **backend.options(time_limit))
    except cp.error.SolverError as exc:
        raise SolverError(f"{backend.name} failed: {str(exc).splitlines()[0]}") from exc
    seconds = time.perf_counter() - start
    if rho.value is None or any(p.value is None for p in params):
        return SolveResult(None, None, str(prob.status), backend.name, seconds)
    # map back: t_k = t~_k * prod_{j>k} s_j^2, rho = rho~ * prod_j s_j^2
    tail = np.array([np.prod(s[k + 1 :] ** 2) for k in range(len(params))])
    orig = np.concatenate(
        [np.asarray(p.value, dtype=np.float64).ravel() * tail[k] for k, p in enumerate(params)]
    )
    value = math.sqrt(max(float(rho.value), 0.0) * float(np.prod(s**2)))
    return SolveResult(orig, value, str(prob.status), backend.name, seconds)


def _embed(block: np.ndarray, offs, i, j, n) -> np.ndarray:
    out = np.zeros((n, n))
    out[offs[i] : offs[i + 1], offs[j] : offs[j + 1]] = block
    return out


def _embed_expr(expr, offs, i, j, n):
    left = np.zeros((n, offs[i + 1] - offs[i]))
    left[offs[i] : offs[i + 1], :] = np.eye(offs[i + 1] - offs[i])
    right = np.zeros((offs[j + 1] - offs[j], n))
    right[:, offs[j] : offs[j + 1]] = np.eye(offs[j + 1] - offs[j])
    return left @ expr @ right


def solve_linf(lmi: ChainLMI, backend: Backend, time_limit: float | None = None) -> SolveResult:
    """§1.4 bordered LMI for a single output row, full form: min rho over (tau, T)."""
    import cvxpy as cp

    sizes = lmi.sizes
    n = sum(sizes)
    offs = np.concatenate([[0], np.cumsum(sizes)])
    rho = cp.Variable(name="rho")
    tau = cp.Variable(sizes[0], nonneg=True, name="tau")
    params = [cp.Variable(qc.num_params(), name=f"t{k}") for k, qc in enumerate(lmi.qcs, 1)]
    cons = [c for qc, p in zip(lmi.qcs, params) for c in qc.constraints(p)]
    p_mat = _embed_expr(cp.diag(tau), offs, 0, 0, n)
    for k, (qc, p) in enumerate(zip(lmi.qcs, params), start=1):
        gvv, gvw, gww = qc.cvx_blocks(p)
        w = lmi.weights[k - 1]
        p_mat = p_mat + _embed_expr(-w.T @ gvv @ w, offs, k - 1, k - 1, n)
        p_mat = p_mat + _embed_expr(-w.T @ gvw, offs, k - 1, k, n)
        p_mat = p_mat + _embed_expr(-(w.T @ gvw).T, offs, k, k - 1, n)
        p_mat = p_mat + _embed_expr(-gww, offs, k, k, n)
    c = np.zeros(n)
    c[n - lmi.weights[-1].size :] = lmi.weights[-1].ravel()
    corner = cp.reshape(2 * rho - cp.sum(tau), (1, 1), order="C")
    big = cp.bmat([[corner, -c[None, :]], [-c[:, None], p_mat]])
    cons.append(0.5 * (big + big.T) >> 0)
    prob = cp.Problem(cp.Minimize(rho), cons)
    start = time.perf_counter()
    try:
        prob.solve(solver=backend.cvxpy_solver, **backend.options(time_limit))
    except cp.error.SolverError as exc:
        raise SolverError(f"{backend.name} failed: {str(exc).splitlines()[0]}") from exc
    seconds = time.perf_counter() - start
    if rho.value is None or tau.value is None or any(p.value is None for p in params):
        return SolveResult(None, None, str(prob.status), backend.name, seconds)
    x = np.concatenate(
        [np.asarray(tau.value).ravel()]
        + [np.asarray(p.value, dtype=np.float64).ravel() for p in params]
    )
    return SolveResult(x, float(rho.value), str(prob.status), backend.name, seconds)
