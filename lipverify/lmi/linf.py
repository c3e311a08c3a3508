"""l-infinity LipSDP for one output row (FORMULATIONS.md §1.4), certified as in §8.

For a scalar output ``c^T x_{L-1}``: ``|f(x) - f(y)| <= rho ||x - y||_inf`` if
``[[2 rho - 1^T tau, -c^T E_{L-1}], [., P(tau, T)]] >= 0`` with ``P`` the block-tridiagonal
LipSDP matrix whose first block is ``diag(tau) - W_1^T Gvv W_1`` and whose last block has
no output term. For fixed multipliers ``rho* = (1^T tau + c^T P^{-1} c) / 2`` (§8,
"l-infinity"), a smooth convex function minimised directly by L-BFGS-B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.optimize

from ..certify.rump import certify_pd
from ..numerics import gamma, lambda_max, round_up
from .chain import ChainLMI, assemble_tridiagonal


@dataclass(frozen=True, eq=False)
class LinfCertificate:
    ok: bool
    bound: float
    params: np.ndarray
    margin: float


def _parts(lmi: ChainLMI, params):
    n0 = lmi.sizes[0]
    return np.asarray(params[:n0], dtype=np.float64), np.asarray(params[n0:], dtype=np.float64)


def _p_matrix(lmi: ChainLMI, params, absolute: bool = False) -> np.ndarray:
    tau, t = _parts(lmi, params)
    d, b = lmi.blocks(t, 0.0, absolute=absolute, output=False)
    d[0] = d[0] + np.diag(np.abs(tau) if absolute else tau)
    return assemble_tridiagonal(d, b)


def _chat(lmi: ChainLMI) -> np.ndarray:
    c = lmi.weights[-1].ravel()
    out = np.zeros(lmi.order)
    out[lmi.order - c.size :] = c
    return out


def rho_and_grad(lmi: ChainLMI, params):
    """``rho*`` and its gradient; ``(inf, None)`` where ``P`` is not positive definite."""
    tau, t = _parts(lmi, params)
    p = _p_matrix(lmi, params)
    try:
        chol = scipy.linalg.cho_factor(p, lower=True, check_finite=False)
    except (scipy.linalg.LinAlgError, ValueError):
        return math.inf, None
    c = _chat(lmi)
    y = scipy.linalg.cho_solve(chol, c, check_finite=False)
    rho = 0.5 * (tau.sum() + float(c @ y))
    sizes = lmi.sizes
    offs = np.concatenate([[0], np.cumsum(sizes)])
    ys = [y[offs[k] : offs[k + 1]] for k in range(len(sizes))]
    # d(c^T P^-1 c)/dp = -y^T (dP/dp) y and y^T A y = -dq/dp (the QC value gradient)
    grads = [0.5 * (1.0 - ys[0] ** 2)]
    for k, qc in enumerate(lmi.qcs, start=1):
        grads.append(0.5 * qc.value_grad(lmi.weights[k - 1] @ ys[k - 1], ys[k]))
    return rho, np.concatenate(grads)


def start_params(lmi: ChainLMI) -> np.ndarray:
    """Feasible start: the l2 anchor multipliers and a uniform tau making P definite."""
    t = lmi.anchor()
    d, b = lmi.blocks(t, 0.0, output=False)
    y = d[-1]
    for k in range(len(d) - 1, 0, -1):
        sol = np.linalg.solve(y, b[k - 1].T)
        y = (b[0] @ sol - d[0]) if k == 1 else d[k - 1] - b[k - 1] @ sol
    tau = np.full(lmi.sizes[0], 2.0 * max(lambda_max((y + y.T) / 2, "l-inf start"), 1e-12))
    return np.concatenate([tau, t])


def minimize(lmi: ChainLMI, start=None, max_iter: int = 3000):
    x0 = start_params(lmi) if start is None else np.asarray(start, dtype=np.float64)
    f0, _ = rho_and_grad(lmi, x0)
    scale = f0 if math.isfinite(f0) and f0 > 0 else 1.0
    best = {"x": x0, "f": f0}

    def fun(x):
        f, g = rho_and_grad(lmi, x)
        if g is None:
            return 1e6, np.zeros_like(x)
        if f < best["f"]:
            best["x"], best["f"] = x.copy(), f
        return f / scale, g / scale

    bounds = [(0.0, None)] * lmi.sizes[0] + [
        (lo, None) for qc in lmi.qcs for lo in qc.lower_bounds()
    ]
    scipy.optimize.minimize(
        fun,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": max_iter, "ftol": 1e-15, "gtol": 1e-13, "maxcor": 30},
    )
    return best["x"], best["f"]


def certify_linf(lmi: ChainLMI, params) -> LinfCertificate:
    """§8 on the bordered matrix; ``lmi`` must have a single output row."""
    tau, t = _parts(lmi, params)
    x = np.concatenate([np.maximum(tau, 0.0), lmi.project(t)])
    rho, _ = rho_and_grad(lmi, x)
    if not math.isfinite(rho):
        return LinfCertificate(False, math.inf, x, 0.0)
    eps = 1e-12
    for _ in range(12):
        r = rho * (1.0 + eps) + eps
        if verify_linf(lmi, x, r):
            return LinfCertificate(True, round_up(r), x, eps)
        eps *= 4.0
    return LinfCertificate(False, math.inf, x, eps)


def verify_linf(lmi: ChainLMI, x, r: float) -> bool:
    """§8 on the bordered matrix of §1.4 at ``(tau, T) = x`` and bound ``r``."""
    x = np.asarray(x, dtype=np.float64)
    n0 = lmi.sizes[0]
    if (
        x.shape != (n0 + sum(lmi.param_sizes),)
        or (x[:n0] < 0).any()
        or not np.array_equal(lmi.project(x[n0:]), x[n0:])
    ):
        return False
    c = _chat(lmi)
    p = _p_matrix(lmi, x)
    a = np.block([[np.array([[2.0 * r - x[:n0].sum()]]), -c[None, :]], [-c[:, None], p]])
    p_abs = _p_matrix(lmi, x, absolute=True)
    a_abs = np.block(
        [
            [np.array([[2.0 * abs(r) + x[:n0].sum()]]), np.abs(c)[None, :]],
            [np.abs(c)[:, None], p_abs],
        ]
    )
    rad = gamma(2 * max(lmi.inner_dim, n0) + 8) * 1.01 * a_abs
    if any(rr is not None for rr in lmi.radii):
        plain = ChainLMI(lmi.weights, (None,) * len(lmi.radii), lmi.qcs, lmi.name)
        rad[1:, 1:] += p_abs - _p_matrix(plain, x, absolute=True)
        if lmi.radii[-1] is not None:  # the border is the output row itself
            rc = np.zeros(lmi.order)
            rc[lmi.order - lmi.radii[-1].size :] = lmi.radii[-1].ravel()
            rad[0, 1:] += rc
            rad[1:, 0] += rc
    return certify_pd(a, rad * (1 + 1e-12))


def best_blend(lmi: ChainLMI, params) -> LinfCertificate:
    """Certify the best point on the segment from ``params`` to the feasible start (§8 step 4).

    A solver's multipliers leave ``P`` nearly singular along inactive neurons, where
    ``c^T P^{-1} c`` is ill-conditioned; ``rho*`` is convex along the segment, so a short
    search over the blend weight finds a well-conditioned point, then L-BFGS-B polishes it.
    """
    anchor = start_params(lmi)
    if params is None:
        candidates = [anchor]
    else:
        x = np.concatenate(
            [np.maximum(params[: lmi.sizes[0]], 0.0), lmi.project(params[lmi.sizes[0] :])]
        )
        candidates = [(1 - th) * x + th * anchor for th in (0.0, *10.0 ** -np.arange(12, 0, -1))]
    values = [rho_and_grad(lmi, c)[0] for c in candidates]
    best = candidates[int(np.argmin(values))]
    polished, _ = minimize(lmi, best, max_iter=500)
    certs = [certify_linf(lmi, c) for c in (polished, best)]
    return min(certs, key=lambda c: c.bound if c.ok else math.inf)
