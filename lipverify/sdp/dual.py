"""A lower bound on the LipSDP optimum from the structured solver's own iterate (weak duality).

For ``M(rho, p) = rho E_0 - C^T C - sum_i p_i Q_i`` (``Q_i`` the QC of multiplier ``i``) and
any ``Z = sum_j z_j z_j^T >= 0`` with ``tr Z_00 = 1``,

    0 <= <Z, M(rho*, p*)> = rho* - D(Z) - sum_i p*_i g_i,   D = sum_j ||C z_j||^2,
    g_i = sum_j q_i(z_j)  (the gradient of F_mu at the iterate: :func:`soft_parts`),

at the optimum ``(rho*, p*)``. So ``rho* >= D - sum_{g_i < 0} p*_i |g_i|``. The optimal
multipliers are bounded by the 2x2 minors of ``M >= 0``: for a slope QC with ``alpha = 0``,
``beta^2 t_i^2 V_ij^2 <= m_jj m_ii <= d_j 2 t_i``, so ``t_i <= 2 d_j / (beta V_ij)^2`` with
``d_j = rho_up`` on input coordinates and ``2 t_j`` on hidden ones (``rho* <= rho_up``, the
certified value). ``Z`` comes from the soft maximum at the final multipliers, whose weights
make ``g`` (nearly) satisfy the KKT signs; the bound is an estimate of quality (the gap),
never part of a certificate. Free multipliers (GroupSort) and ``alpha != 0`` are not covered:
the gap is then reported as unknown.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .qc import SlopeQC


def _pre_maps(lmi):
    """Per node: (pre-activation matrix V over the global coordinates' columns, column slice)."""
    if hasattr(lmi, "pres"):  # DagLMI: V_k over all coordinates
        return [(v, slice(0, lmi.order)) for v in lmi.pres]
    offs = np.concatenate([[0], np.cumsum(lmi.sizes)])
    return [(w, slice(offs[k], offs[k + 1])) for k, w in enumerate(lmi.weights[:-1])]


def _energy(lmi, z: np.ndarray) -> float:
    if hasattr(lmi, "out"):
        return float(np.sum((lmi.out @ z) ** 2))
    return float(np.sum((lmi.weights[-1] @ z[-lmi.sizes[-1]:]) ** 2))


def multiplier_bounds(lmi, rho_up: float) -> np.ndarray | None:
    """Upper bounds on every multiplier of any feasible point with ``rho <= rho_up``."""
    if not all(isinstance(qc, SlopeQC) and qc.alpha == 0 and qc.beta > 0 for qc in lmi.qcs):
        return None
    d = np.full(lmi.order, np.inf)
    d[: lmi.sizes[0]] = rho_up
    offs = np.concatenate([[0], np.cumsum(lmi.sizes)])
    out = []
    for k, (qc, (v, cols)) in enumerate(zip(lmi.qcs, _pre_maps(lmi)), start=1):
        v2 = (qc.beta * v) ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(v2 > 0, 2.0 * d[cols][None, :] / v2, np.inf)
        b = ratio.min(axis=1)
        d[offs[k]:offs[k + 1]] = 2.0 * b  # m_jj <= 2 t_j for hidden coordinates
        out.append(b.reshape(qc.num_params(), -1).min(axis=1))
    return np.concatenate(out)


def _bilinear(lmi, z: np.ndarray) -> np.ndarray:
    """``Q[i, a, b]``: multiplier ``i``'s QC value as a bilinear form of columns ``a, b``."""
    offs = np.concatenate([[0], np.cumsum(lmi.sizes)])
    out = []
    for k, (qc, (v_map, cols)) in enumerate(zip(lmi.qcs, _pre_maps(lmi)), start=1):
        v, w = v_map @ z[cols], z[offs[k]:offs[k + 1]]
        a, b = qc.alpha, qc.beta
        q = (-2 * a * b * np.einsum("ia,ib->iab", v, v)
             + (a + b) * (np.einsum("ia,ib->iab", v, w) + np.einsum("ia,ib->iab", w, v))
             - 2 * np.einsum("ia,ib->iab", w, w))
        out.append(q.reshape(qc.num_params(), -1, *q.shape[1:]).sum(axis=1))
    return np.concatenate(out)


def lower_bound(lmi, params, rho_up: float, parts, rank: int = 24) -> float | None:
    """``rho* >=`` this, for the LMI's SDP optimum (None when not covered). ``Z`` is the best
    one supported on the top eigenvectors at ``params``: a small SDP in ``W`` (``Z = U W U^T``,
    ``tr W = 1``) maximising ``D(Z) - sum_i B_i max(0, -g_i(Z))``."""
    import cvxpy as cp

    bounds = multiplier_bounds(lmi, rho_up)
    if bounds is None:
        return None
    out = parts(params, 1e-4 * rho_up)
    if out is None:
        return None
    z = out[2]
    z = z / np.linalg.norm(z[: lmi.sizes[0]], axis=0)  # unweighted eigenvectors
    z = z[:, -rank:]
    r = z.shape[1]
    q = _bilinear(lmi, z).reshape(len(bounds), r * r)
    cz = (lmi.out @ z) if hasattr(lmi, "out") else lmi.weights[-1] @ z[-lmi.sizes[-1]:]
    w = cp.Variable((r, r), symmetric=True)
    g = q @ cp.vec(w, order="C")
    finite = np.isfinite(bounds)
    cons = [w >> 0, cp.trace(w) == 1]
    if not finite.all():
        cons.append(g[~finite] >= 0)
    obj = cp.trace((cz.T @ cz) @ w) - bounds[finite] @ cp.pos(-g[finite])
    prob = cp.Problem(cp.Maximize(obj), cons)
    try:
        with warnings.catch_warnings():  # "inaccurate" is fine: the value is re-evaluated
            warnings.simplefilter("ignore")
            prob.solve(solver="CLARABEL")
    except cp.error.SolverError:
        return None
    if w.value is None:
        return None
    # re-evaluate the bound exactly at the (PSD-projected, trace-normalised) solution
    evals, evecs = np.linalg.eigh((w.value + w.value.T) / 2)
    wm = (evecs * np.maximum(evals, 0)) @ evecs.T
    wm /= np.trace(wm)
    gv = q @ wm.ravel()
    if (gv[~finite] < 0).any():
        return None
    return float(np.sum(cz.T @ cz * wm) - np.sum(bounds[finite] * np.maximum(-gv[finite], 0)))


def gap(lmi, params, rho_up: float) -> dict:
    """``{"lower": sqrt(rho_low), "gap": relative gap of the bound}`` (or unknown)."""
    from .smooth import soft_parts

    parts = lmi.soft_parts if hasattr(lmi, "soft_parts") else (
        lambda p, mu: soft_parts(lmi, p, mu))
    try:
        low = lower_bound(lmi, params, rho_up, parts)
    except (ValueError, np.linalg.LinAlgError):
        low = None
    if low is None or low <= 0:
        return {"lower": None, "gap": None}
    up = math.sqrt(rho_up)
    lo = math.sqrt(max(low, 0.0))
    return {"lower": lo, "gap": (up - lo) / up if up > 0 else 0.0}
