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
make ``g`` (nearly) satisfy the KKT signs. Instead of paying for the residual violations
with the (loose) multiplier bounds, :func:`repaired_bound` rescales neuron rows of ``Z``
until every ``g_i >= 0`` exactly; the better of the two values is reported. The bound is an
estimate of quality (the gap), never part of a certificate. Free multipliers (GroupSort) are
not covered: the gap is then reported as unknown.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ..numerics import eigh_all
from ..qc import SlopeQC


def _pre_maps(lmi):
    """Per node: (pre-activation matrix V over the global coordinates' columns, column slice)."""
    if lmi.kind == "dag":  # V_k over all coordinates
        return [(v, slice(0, lmi.order)) for v in lmi.pres]
    offs = np.concatenate([[0], np.cumsum(lmi.sizes)])
    return [(w, slice(offs[k], offs[k + 1])) for k, w in enumerate(lmi.weights[:-1])]


def _energy(lmi, z: np.ndarray) -> float:
    if lmi.kind == "dag":
        return float(np.sum((lmi.out @ z) ** 2))
    return float(np.sum((lmi.weights[-1] @ z[-lmi.sizes[-1]:]) ** 2))


def multiplier_bounds(lmi, rho_up: float) -> np.ndarray | None:
    """Upper bounds on every multiplier of any feasible point with ``rho <= rho_up``."""
    if not all(isinstance(qc, SlopeQC) and np.all(qc.alpha == 0) and np.all(qc.beta >= 0)
               and np.any(qc.beta > 0) for qc in lmi.qcs):
        return None
    d = np.full(lmi.order, np.inf)
    d[: lmi.sizes[0]] = rho_up
    offs = np.concatenate([[0], np.cumsum(lmi.sizes)])
    out = []
    for k, (qc, (v, cols)) in enumerate(zip(lmi.qcs, _pre_maps(lmi)), start=1):
        v2 = (np.reshape(qc.beta, (-1, 1)) * v) ** 2  # beta_i = 0 (local slopes): no bound
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
        a, b = _rows(qc.alpha, 3), _rows(qc.beta, 3)
        q = (-2 * a * b * np.einsum("ia,ib->iab", v, v)
             + (a + b) * (np.einsum("ia,ib->iab", v, w) + np.einsum("ia,ib->iab", w, v))
             - 2 * np.einsum("ia,ib->iab", w, w))
        out.append(q.reshape(qc.num_params(), -1, *q.shape[1:]).sum(axis=1))
    return np.concatenate(out)


def lower_bound(lmi, params, rho_up: float, parts, rank: int = 24) -> float | None:
    """``rho* >=`` this, for the LMI's SDP optimum (None when not covered). ``Z`` comes from
    a small SDP in ``W`` over the top eigenvectors ``U`` at ``params`` (``Z = U W U^T``,
    ``tr W = 1``) maximising ``D(Z) - sum_i c_i max(0, -g_i(Z))`` with ``c_i = min(B_i,
    rho_up)`` (the multiplier bounds capped: well-scaled for the solver; ``rho_up`` where
    none is known, ``alpha != 0``). The candidate is then valued both ways and the better is
    returned: with the true bounds ``B_i`` (the formula above; only when known) and made
    exactly feasible by :func:`repaired_bound`."""
    import cvxpy as cp

    if not all(isinstance(qc, SlopeQC) for qc in lmi.qcs):
        return None
    bounds = multiplier_bounds(lmi, rho_up)  # None for alpha != 0: the repair alone values
    if bounds is None:
        bounds = np.full(sum(qc.num_params() for qc in lmi.qcs), np.nan)
    out = parts(params, 1e-4 * rho_up)
    if out is None:
        return None
    z = out[2]
    z = z / np.linalg.norm(z[: lmi.sizes[0]], axis=0)  # unweighted eigenvectors
    z = z[:, -rank:]
    r = z.shape[1]
    q = _bilinear(lmi, z).reshape(len(bounds), r * r)
    cz = (lmi.out @ z) if lmi.kind == "dag" else lmi.weights[-1] @ z[-lmi.sizes[-1]:]
    w = cp.Variable((r, r), symmetric=True)
    g = q @ cp.vec(w, order="C")
    finite = ~np.isposinf(bounds)
    cons = [w >> 0, cp.trace(w) == 1]
    if not finite.all():
        cons.append(g[~finite] >= 0)
    cap = np.fmin(bounds[finite], rho_up)
    prob = cp.Problem(cp.Maximize(cp.trace((cz.T @ cz) @ w) - cap @ cp.pos(-g[finite])), cons)
    try:
        with warnings.catch_warnings():  # "inaccurate" is fine: the value is re-evaluated
            warnings.simplefilter("ignore")
            prob.solve(solver="CLARABEL")
    except cp.error.SolverError:
        return None
    if w.value is None:
        return None
    # re-evaluate the bound exactly at the (PSD-projected, trace-normalised) solution
    evals, evecs = eigh_all((w.value + w.value.T) / 2, "dual eigenvector SDP")
    evals = np.maximum(evals, 0)
    wm = (evecs * evals) @ evecs.T
    wm /= np.trace(wm)
    gv = q @ wm.ravel()
    low = None
    if not (gv[~finite] < 0).any() and not np.isnan(bounds).any():
        low = float(np.sum(cz.T @ cz * wm)
                    - np.sum(bounds[finite] * np.maximum(-gv[finite], 0)))
    fixed = repaired_bound(lmi, z @ (evecs * np.sqrt(evals)))
    return low if fixed is None else (fixed if low is None else max(low, fixed))


#: Repaired rows stop this fraction short of the boundary where their QC value is 0 (toward
#: the maximum of the concave value), so rounding cannot turn a repaired value negative.
_INSIDE = 1e-6


def repaired_bound(lmi, z: np.ndarray) -> float | None:
    """``rho* >= ||C Y||^2`` for ``Y = repair(lmi, z)`` (None if it has none)."""
    y = repair(lmi, z)
    return None if y is None else _energy(lmi, y)


def repair(lmi, z: np.ndarray) -> np.ndarray | None:
    """``z`` (columns stacked over the blocks, ``Z = z z^T``) made exactly dual feasible, as
    a new array ``Y``: any ``Y`` gives ``Z = Y Y^T >= 0``, so only the input block (kept,
    normalised to ``tr Z_00 = 1``) and the signs of the QC values
    ``g_i = -2ab|v_i|^2 + 2(a+b) v_i.w_i - 2|w_i|^2`` matter. Node by node (``v_i``, the
    pre-activation row, read from the already repaired nodes), each neuron row ``w_i`` with
    ``g_i < 0`` takes the smaller of two moves that end at ``g_i >= 0``: scaling ``s w_i``
    (when a real scale exists) or blending toward ``c v_i``, ``c`` in ``(alpha, beta)``,
    whose value ``-2(c - a)(c - b)|v_i|^2`` is >= 0. Weak duality then gives
    ``rho* >= ||C Y||^2`` with no bound on the multipliers. Shared multipliers need only
    their group's sum >= 0: every neuron's value >= 0 is stricter, still valid. None for
    QCs other than slope QCs, or if the final check finds a negative value.
    """
    if not all(isinstance(qc, SlopeQC) for qc in lmi.qcs):
        return None
    y = z / np.linalg.norm(z[: lmi.sizes[0]])  # tr Z_00 = 1
    offs = np.concatenate([[0], np.cumsum(lmi.sizes)])
    for k, (qc, (v_map, cols)) in enumerate(zip(lmi.qcs, _pre_maps(lmi)), start=1):
        w = y[offs[k]:offs[k + 1]]  # a view: repaired in place
        v = v_map @ y[cols]
        vv, vw, ww = _grams(v, w)
        a, b = qc.alpha, qc.beta
        bad = np.flatnonzero(-2 * a * b * vv + 2 * (a + b) * vw - 2 * ww < 0)
        if bad.size:
            a, b = _pick(a, bad), _pick(b, bad)
            w[bad] = _closer(_scaled(w[bad], vv[bad], vw[bad], ww[bad], a, b),
                             _blended(v[bad], w[bad], vv[bad], vw[bad], a, b), w[bad])
    if not np.isfinite(y).all():
        return None
    for k, (qc, (v_map, cols)) in enumerate(zip(lmi.qcs, _pre_maps(lmi)), start=1):
        if (qc.value_grad(v_map @ y[cols], y[offs[k]:offs[k + 1]]) < 0).any():
            return None  # a pre-activation read a later node: not repaired in order
    return y


def _scaled(w, vv, vw, ww, a, b) -> np.ndarray:
    """``s w``, ``s`` the scale nearest 1 where the (concave) value ``-2ab vv + 2(a+b) vw s
    - 2 ww s^2`` is >= 0, moved the fraction :data:`_INSIDE` toward its maximum (then the
    value is >= _INSIDE times that maximum). NaN rows where no real scale exists."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mid = (a + b) * vw / (2 * ww)
        root = np.sqrt(mid * mid - a * b * vv / ww)  # NaN: no real scale
        far = mid + np.copysign(root, mid)  # the root away from zero (no cancellation)
        near = np.where(far != 0, (a * b * vv / ww) / far, 0.0)  # product of the roots
        lo, hi = np.minimum(near, far), np.maximum(near, far)
        s = np.clip(1.0, lo, hi)
        s = s + _INSIDE * (mid - s)
    return w * s[:, None]


def _blended(v, w, vv, vw, a, b) -> np.ndarray:
    """``c v + m (w - c v)`` at the largest ``m`` in [0, 1) where the value is >= 0, shrunk
    by the fraction :data:`_INSIDE` (concave in ``m``: the value stays >= _INSIDE times its
    value at ``m = 0``, ``-2 (c - a)(c - b)|v|^2 > 0``); ``c`` the least-squares slope
    ``v.w / |v|^2`` kept inside ``(alpha, beta)``. Solved in ``m``, not ``1 - m``: rows far
    larger than their pre-activation keep their precision."""
    inner = 1e-3 * (b - a)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.clip(np.where(vv > 0, vw / vv, (a + b) / 2), a + inner, b - inner)
    u = c[:, None] * v
    e = w - u
    ee = np.einsum("ij,ij->i", e, e)
    g_u = -2 * (c - a) * (c - b) * vv  # value at m = 0, >= 0
    half = (a + b) * np.einsum("ij,ij->i", v, e) - 2 * np.einsum("ij,ij->i", u, e)
    # g(m) = g_u + 2 half m - 2 ee m^2: its positive root, in the form without cancellation
    disc = np.sqrt(half * half + 2 * ee * g_u)
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.where(half > 0, (half + disc) / (2 * ee), g_u / (disc - half))
    m = np.where(np.isfinite(m), np.minimum(m, 1.0), 0.0) * (1 - _INSIDE)
    return u + m[:, None] * e


def _closer(first, second, w) -> np.ndarray:
    """Per row, whichever of two candidate rows (NaN: unavailable) is closer to ``w``."""
    d1 = np.linalg.norm(first - w, axis=1)
    d2 = np.linalg.norm(second - w, axis=1)
    take = (d2 < d1) | (np.isnan(d1) & ~np.isnan(d2))  # NaN distances lose
    return np.where(take[:, None], second, first)


def _rows(x, ndim: int):
    """Per-neuron slopes shaped to broadcast along the leading (neuron) axis; floats as
    they are."""
    return x if np.ndim(x) == 0 else np.reshape(x, (-1,) + (1,) * (ndim - 1))


def _pick(x, idx: np.ndarray):
    """The slopes of neurons ``idx`` (a float stays a float)."""
    return x if np.ndim(x) == 0 else x[idx]


def _grams(v: np.ndarray, w: np.ndarray):
    """Per row: ``|v_i|^2, v_i.w_i, |w_i|^2``."""
    return np.einsum("ij,ij->i", v, v), np.einsum("ij,ij->i", v, w), np.einsum("ij,ij->i", w, w)


def gap(lmi, params, rho_up: float) -> dict:
    """``{"lower": sqrt(rho_low), "gap": relative gap of the bound}`` (or unknown)."""
    from .smooth_rho import soft_parts

    parts = lmi.soft_parts if lmi.kind == "dag" else (
        lambda p, mu: soft_parts(lmi, p, mu))
    try:
        low = lower_bound(lmi, params, rho_up, parts)
    except (ValueError, np.linalg.LinAlgError):
        low = None
    if low is None or low <= 0:
        return {"lower": None, "gap": None}
    up = math.sqrt(rho_up)
    lo = math.sqrt(min(low, rho_up))
    return {"lower": lo, "gap": (up - lo) / up if up > 0 else 0.0}
