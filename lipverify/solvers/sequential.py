"""Sequential LDL^T bounds (FORMULATIONS.md §2b): multipliers chosen layer by layer.

``ldlt_fast_params`` is ECLipsE-Fast's closed form, ``ldlt_params`` solves one small SDP
per layer (ECLipsE). Both only *choose* multipliers: the bound reported is always the
certified ``rho*(T)`` of the full LMI (§8), so the alpha*beta terms are never dropped
unsoundly (the recursion here ignores them; the certificate does not).
"""

from __future__ import annotations

import numpy as np

from ..lmi.chain import ChainLMI, balance
from ..numerics import eigh_all, lambda_max, lambda_min, spectral_norm
from .choose import Backend


def _mid_slope(qc) -> float | np.ndarray:
    """``m = (alpha + beta) / 2``: a float, or one per neuron (local slopes)."""
    return (getattr(qc, "alpha", 0.0) + getattr(qc, "beta", 1.0)) / 2.0


def _curvature(m: float | np.ndarray, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``K = m W X^-1 W^T m`` (§2b), ``m`` a scalar or ``diag(m)`` for per-neuron slopes."""
    k_mat = w @ np.linalg.solve(x, w.T)
    k_mat = m * m * k_mat if np.ndim(m) == 0 else (m[:, None] * k_mat) * m[None, :]
    return (k_mat + k_mat.T) / 2.0


def _finish(lmi: ChainLMI, lambdas: list[np.ndarray], x_last: np.ndarray) -> np.ndarray:
    """Multipliers T_k = rho * Lambda_k / 2 at the recursion's own rho (§2b)."""
    w = lmi.weights[-1]
    rho = lambda_max(w @ np.linalg.solve(x_last, w.T), "ldlt (last layer)")
    params = []
    for qc, lam in zip(lmi.qcs, lambdas):
        t = rho * lam / 2.0
        params.append(t.reshape(qc.num_params(), -1).mean(axis=1))  # tied: block means
    return np.concatenate(params)


def norm_chain_params(lmi: ChainLMI, slack: float = 1e-9) -> np.ndarray:
    """Multipliers reproducing the norm product (the P = S = tau = 0 chain of §4):
    ``-Gww = lam_k I`` with ``lam_k = lam_{k+1} ||W_{k+1}||^2``, slightly inflated."""
    norm2 = [spectral_norm(w) ** 2 * (1 + slack) for w in lmi.weights]
    lam = [0.0] * len(lmi.qcs)
    lam[-1] = norm2[-1]
    for k in range(len(lmi.qcs) - 2, -1, -1):
        lam[k] = lam[k + 1] * norm2[k + 1] * lmi.qcs[k + 1].anchor_factor / 2.0
    return np.concatenate([qc.anchor_params(v / 2.0) for qc, v in zip(lmi.qcs, lam)])


def ldlt_fast_params(lmi: ChainLMI) -> np.ndarray:
    """ECLipsE-Fast: ``Lambda_k = l_k I``, ``l_k = 1 / (2 m^2 lambda_max(W_k X^-1 W_k^T))``.

    Computed on the balanced chain (every weight rescaled to unit norm, an exact congruence)
    and mapped back, so deep nets whose norm product spans many decades stay in floating
    point range. Layers without a slope QC (GroupSort) take the norm-product chain instead.
    """
    if not all(qc.slope_restricted for qc in lmi.qcs):
        return norm_chain_params(lmi)
    scaled, factors, _ = balance(lmi)
    # ECLipsE-Fast's multipliers make the last pivot singular at their own rho; scaled by
    # 1 + 2^-14 they are interior (M gains 2^-14 C^T C), which the certificate needs
    return _ldlt_fast(scaled) * factors * (1.0 + INTERIOR)


#: Relative lift of the closed-form multipliers off the boundary of the feasible set.
INTERIOR = 2.0**-14


def _ldlt_fast(lmi: ChainLMI) -> np.ndarray:
    x = np.eye(lmi.sizes[0])
    lambdas = []
    for w, qc in zip(lmi.weights[:-1], lmi.qcs):
        k_mat = _curvature(_mid_slope(qc), w, x)
        top = lambda_max(k_mat, "ldlt-fast (layer curvature)")
        ell = 1.0 / (2.0 * top) if top > 1e-150 else 1.0  # a zero layer: any ell > 0 works
        lambdas.append(np.full(w.shape[0], ell))
        x = ell * np.eye(w.shape[0]) - ell * ell * k_mat
    return _finish(lmi, lambdas, x)


def ldlt_params(lmi: ChainLMI, backend: Backend, time_limit: float | None = None) -> np.ndarray:
    """ECLipsE: per layer, max s s.t. ``[[L - s W'^T W', L K^1/2], [K^1/2 L, I]] >= 0``.

    ``time_limit`` is the budget for all layers; layers reached after it take the
    closed-form (ECLipsE-Fast) step.
    """
    import time

    import cvxpy as cp

    if not all(qc.slope_restricted for qc in lmi.qcs):
        return norm_chain_params(lmi)
    deadline = None if time_limit is None else time.perf_counter() + time_limit
    x = np.eye(lmi.sizes[0])
    lambdas = []
    for k, (w, qc) in enumerate(zip(lmi.weights[:-1], lmi.qcs)):
        left = None if deadline is None else deadline - time.perf_counter()
        k_mat = _curvature(_mid_slope(qc), w, x)
        evals, evecs = eigh_all(k_mat, "ldlt (layer curvature)")
        half = (evecs * np.sqrt(np.maximum(evals, 0.0))) @ evecs.T
        scale = max(float(evals[-1]), 1e-300)
        nxt = lmi.weights[k + 1]
        gram = nxt.T @ nxt
        gram /= max(spectral_norm(gram), 1e-300)
        n = w.shape[0]
        lam = cp.Variable(n, nonneg=True)
        s = cp.Variable()
        big = cp.bmat(
            [
                [cp.diag(lam) - s * gram, cp.diag(lam) @ (half / np.sqrt(scale))],
                [(half / np.sqrt(scale)) @ cp.diag(lam), np.eye(n)],
            ]
        )
        prob = cp.Problem(cp.Maximize(s), [0.5 * (big + big.T) >> 0])
        lam_v = None
        if left is None or left > 0.5:
            try:
                prob.solve(solver=backend.cvxpy_solver, **backend.options(left))
            except cp.error.SolverError:
                pass
            else:
                lam_v = lam.value
        if lam_v is None or not np.all(np.isfinite(lam_v)):
            top = scale
            lam_v = np.full(n, 1.0 / (2.0 * top))
        else:
            lam_v = np.maximum(np.asarray(lam_v, dtype=np.float64), 0.0) / scale
        lambdas.append(lam_v)
        x = np.diag(lam_v) - (lam_v[:, None] * k_mat) * lam_v[None, :]
        if lambda_min((x + x.T) / 2, "ldlt (pivot)") <= 0:  # keep the recursion well posed
            ell = 1.0 / (2.0 * scale)
            lambdas[-1] = np.full(n, ell)
            x = ell * np.eye(n) - ell * ell * k_mat
    return _finish(lmi, lambdas, x)
