"""Starting multipliers for a residual (DAG) LipSDP from a dual trajectory (§5a, §2)
**[derived]**.

**1. Complementary slackness.** With ``M(rho, t) = rho E_0 - C^T C - sum_i t_i A_i`` (§5a;
``z^T A_i z = q_i(z)``, multiplier ``i``'s QC value) an optimal pair has ``M z = 0`` for the
dual's trajectory ``z``. ``A_i z = grad q_i(z) / 2``: for node ``k`` with ``p = V_k z`` and
``x = z_k``, on the neurons of multiplier ``i``, ``dq/dp = -4ab p + 2(a+b) x`` and ``dq/dx =
2(a+b) p - 4x``, so ``A_i z = (V_k^T dq/dp + S_k^T dq/dx) / 2`` (zero elsewhere). So
``rho E_0 z - sum_i t_i A_i z = C^T C z`` is linear in ``(rho, t)``: solved by bounded least
squares (``t >= 0``) for the trajectory of :func:`lipverify.solvers.trajectory.trajectory_ascent`.
With several trajectories (``Z = sum_j z_j z_j^T``, ``rank``) ``M Z = 0`` means ``M z_j = 0``
for each: their systems are stacked. A conv chain is fitted on its network's DAG form (the
same multipliers): on cifar_base_kw four trajectories give multipliers that are the channel
optimum's up to one scale per layer (L = 6.77 at the best common scale; one trajectory:
9.85; the optimum 5.7276).

**2. Repair, node by node.** A fit that is not exact can leave a pivot indefinite at every
common scale. For slopes with ``a b = 0``, leaving out the output term ``-C^T C`` (which a
large common scale dominates), node ``k``'s diagonal block is ``2 T_k`` and only its coupling
to earlier nodes carries ``T_k``; its Schur complement after the earlier hidden nodes is
``S_k = 2 T_k - X_k`` with ``X_k`` quadratic in ``T_k``. Scaling ``T_k`` by
``theta = min(1, 1 / lambda_max(T_k^{-1/2} X_k T_k^{-1/2}))`` gives ``S_k(theta) = theta (2 T_k
- theta X_k) >= theta T_k``. The pivots come from the group recursion (§5c), so every dense
matrix is one clique's size.

**3. The best common scale, along a ray.** ``M(rho, c t) = rho E_0 + c A - U U^T`` with ``A``
the QC terms at ``t`` (linear in ``t``) and ``U = C^T``. Write ``X = A_hh^{-1}`` (hidden
block, positive definite after item 2), ``G = A_0h X A_h0``, ``W = A_0h X U_h``, ``K = U_h^T
X U_h``. By Woodbury, ``(c A_hh - U_h U_h^T)^{-1} = (X + X U_h (cI - K)^{-1} U_h^T X) / c``,
positive definite exactly when ``c > c_min = lambda_max(K)``; with ``P = c A_0h - U_0 U_h^T``
the top Schur complement gives::

    rho*(c) = lambda_max(c (G - A_00) - W U_0^T - U_0 W^T + U_0 (I + K / c) U_0^T
                         + V (cI - K)^{-1} V^T / c),         V = c W - U_0 K.

One block recursion over the groups gives ``G``, ``W`` and ``K`` (``K = sum_g s_g^T s_g`` with
``s_g = L_g^{-1} r_g``, the right-hand side ``U`` carried up as ``r_{g-1} = U_{g-1} - h_g^T
s_g``); each ``c`` then costs one eigenvalue of order ``n_0``, so the bounded search on
``log c`` in ``(log c_min, log c_min + 12)`` takes seconds where one ``rho*`` per scale took
minutes (resnet_3b2: 12 s for the recursion, 10-15 s per ``rho*``).

Measured on resnet_2b (channel multipliers, 3000 ascent steps in 5 s, fit residual 2.1%):
no finite rho* at any scale before the repair; after it, L = 176.5 at its best scale
(certified bound under ``auto`` so far: 317.7, naive 1513.4). On resnet_3b2 (order 14436):
ascent 15 s, fit 3 s, repair 26 s (130 s with dense Schur complements), scale 42 s; L =
660.6 at the start against lipsdp-split's 6166.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ..errors import NotApplicableError
from ..ir.network import Network
from ..numerics import lambda_max
from .smooth_rho import scale_search
from .trajectory import trajectory_ascent

#: Fitted multipliers are raised to at least this fraction of the largest (a multiplier
#: near zero leaves its pivot numerically singular: measured on a residual test net, 1e-8
#: gave no finite rho* at any scale after the repair).
FLOOR = 1e-4


def kkt_multipliers(lmi, z: np.ndarray) -> tuple[float, np.ndarray] | None:
    """``(rho, t)`` fitting ``M(rho, t) z = 0`` by bounded least squares (item 1), ``t`` raised
    to :data:`FLOOR` of its largest entry; ``z`` one trajectory or several (columns: ``M Z =
    0`` for ``Z = z z^T`` means ``M z_j = 0`` for every column, all fitted at once)."""
    import scipy.optimize

    if z.ndim == 2:
        systems = [_kkt_system(lmi, z[:, j]) for j in range(z.shape[1])]
        system, rhs = np.vstack([a for a, _ in systems]), np.concatenate([r for _, r in systems])
    else:
        system, rhs = _kkt_system(lmi, z)
    res = scipy.optimize.lsq_linear(system, rhs, bounds=(0.0, np.inf))
    t = res.x[1:]
    top = float(t.max(initial=0.0))
    if not np.isfinite(res.x).all() or not top > 0:
        return None
    return float(res.x[0]), np.maximum(t, FLOOR * top)


def _kkt_system(lmi, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The linear system ``[E_0 z, -A_1 z, ...] (rho, t) = C^T C z`` of item 1 for one
    trajectory ``z``."""
    offs = lmi.offsets
    cols = []
    for k, (qc, v) in enumerate(zip(lmi.qcs, lmi.pres), start=1):
        a, b = float(qc.alpha), float(qc.beta)
        p, x = v @ z, z[offs[k]:offs[k + 1]]
        gp, gx = -4.0 * a * b * p + 2.0 * (a + b) * x, 2.0 * (a + b) * p - 4.0 * x
        count = qc.num_params()
        owner = np.repeat(np.arange(count), qc.n // count)
        sel_p = np.zeros((qc.n, count))
        sel_x = np.zeros((qc.n, count))
        sel_p[np.arange(qc.n), owner] = gp
        sel_x[np.arange(qc.n), owner] = gx
        col = 0.5 * (v.T @ sel_p)
        col[offs[k]:offs[k + 1]] += 0.5 * sel_x
        cols.append(col)
    e0 = np.zeros(lmi.order)
    e0[:offs[1]] = z[:offs[1]]
    return np.hstack([e0[:, None], -np.hstack(cols)]), lmi.out.T @ (lmi.out @ z)


def repair(lmi, t: np.ndarray) -> np.ndarray | None:
    """Item 2: each node's multipliers scaled down, in order, until its pivot is positive
    definite (None if a Schur complement cannot be formed). The pivots come group by group
    (§5c): with ``P_g = D_g - B_{g-1}^T P_{g-1}^{-1} B_{g-1}`` the hidden block's forward
    recursion (output term left out), node ``k``'s pivot is its Schur complement inside
    ``P_g``; scaling node ``k`` changes only clique ``g`` (its own terms), so ``P_g`` is
    formed again from clique ``g`` alone. Dense matrices stay the size of one clique."""
    t = t.copy()
    counts = [qc.num_params() for qc in lmi.qcs]
    first = np.concatenate([[0], np.cumsum(counts)])  # node k's multipliers: first[k-1]:first[k]
    bounds = [*lmi.groups, len(lmi.sizes)]
    offs = lmi.offsets
    prev = None  # Cholesky factor of P_{g-1}
    for g in range(1, len(bounds) - 1):
        n = lmi.group_sizes[g - 1]
        p = _group_pivot(lmi, t, g, n, prev)
        base = int(offs[bounds[g]])
        for k in range(bounds[g], bounds[g + 1]):
            lo, hi = int(offs[k]) - base, int(offs[k + 1]) - base
            s = p[lo:hi, lo:hi]
            if lo > 0:
                try:
                    chol = scipy.linalg.cho_factor(p[:lo, :lo], lower=True, check_finite=False)
                except (scipy.linalg.LinAlgError, ValueError):
                    return None
                s = s - p[:lo, lo:hi].T @ scipy.linalg.cho_solve(chol, p[:lo, lo:hi],
                                                                 check_finite=False)
            mine = slice(first[k - 1], first[k])
            own = np.repeat(t[mine], lmi.qcs[k - 1].n // counts[k - 1])
            r = 1.0 / np.sqrt(own)
            lam = float(np.linalg.eigvalsh(r[:, None] * (np.diag(2.0 * own) - s)
                                           * r[None, :]).max())
            if lam > 1.0:
                t[mine] /= lam
                p = _group_pivot(lmi, t, g, n, prev)
        try:
            prev = np.linalg.cholesky(p)
        except np.linalg.LinAlgError:
            return None
    return t if np.isfinite(t).all() else None


def _group_pivot(lmi, t, g: int, n: int, prev) -> np.ndarray:
    """``P_g`` of :func:`repair` from clique ``g`` (``n``: group ``g - 1``'s size, ``prev``
    the Cholesky factor of ``P_{g-1}``, None for the first hidden group)."""
    m = lmi.clique(t, g, output=False)
    if prev is None:
        return m[n:, n:]
    h = scipy.linalg.solve_triangular(prev, m[:n, n:], lower=True, check_finite=False)
    return m[n:, n:] - h.T @ h


@dataclass(frozen=True)
class Ray:
    """``c -> rho*(c t)`` along the ray of multipliers ``t`` (item 3), from one block
    recursion: ``c_min = lambda_max(K)`` (at and below it ``c A_hh - U_h U_h^T`` is not
    positive definite), ``g_mat = G``, ``w = W``, ``k_mat = K``, ``u0 = U_0`` (the input
    rows of ``U = C^T``) and ``d0 = A_00`` (the input block of the QC terms ``A`` at ``t``)."""

    c_min: float
    g_mat: np.ndarray
    w: np.ndarray
    k_mat: np.ndarray
    u0: np.ndarray
    d0: np.ndarray

    def rho(self, c: float) -> float:
        """``rho*(c t)``: the formula of item 3, infinite for ``c <= c_min``."""
        if not c > self.c_min:
            return math.inf
        w, k_mat, u0 = self.w, self.k_mat, self.u0
        eye = np.eye(len(k_mat))
        v = c * w - u0 @ k_mat
        top = c * (self.g_mat - self.d0) - w @ u0.T - u0 @ w.T + u0 @ (k_mat / c + eye) @ u0.T \
            + v @ np.linalg.solve(c * eye - k_mat, v.T) / c
        # Lanczos above order 512: it only chooses a scale; whoever takes the start
        # evaluates its rho* again
        return max(lambda_max((top + top.T) / 2.0, "rho* on a ray", iterative=True), 0.0)


def ray(lmi, t: np.ndarray) -> Ray | None:
    """The :class:`Ray` of ``t``: ``rho*(c t)`` for every common scale ``c`` from one block
    recursion (item 3), or None where a hidden pivot of ``M(0, t)`` without the output term
    is not positive definite."""
    d, b = lmi.blocks(t, 0.0, output=False)
    u = lmi.out.T
    bounds = np.concatenate([[0], np.cumsum(lmi.group_sizes)])
    part = [u[bounds[g]:bounds[g + 1]] for g in range(len(d))]
    k_mat, y, r = np.zeros((u.shape[1], u.shape[1])), d[-1], part[-1]
    for k in range(len(d) - 1, 0, -1):
        try:
            chol = np.linalg.cholesky(y)
        except np.linalg.LinAlgError:
            return None
        h = scipy.linalg.solve_triangular(chol, b[k - 1].T, lower=True, check_finite=False)
        s = scipy.linalg.solve_triangular(chol, r, lower=True, check_finite=False)
        k_mat += s.T @ s
        if k > 1:
            y, r = d[k - 1] - h.T @ h, part[k - 1] - h.T @ s
    k_mat = (k_mat + k_mat.T) / 2.0
    c_min = float(np.linalg.eigvalsh(k_mat).max(initial=0.0))
    return Ray(c_min=c_min, g_mat=h.T @ h, w=h.T @ s, k_mat=k_mat, u0=part[0], d0=d[0])


def best_scale(lmi, t: np.ndarray, evaluations: int = 50) -> tuple[float, np.ndarray] | None:
    """``(rho*(c t), c t)`` at the best common scale ``c``: a bounded search on ``log c``
    along the :class:`Ray` of :func:`ray` (None where no scale is feasible: the hidden block
    of ``M(0, t)`` without the output term is not positive definite, so ``c A_hh - C^T C``
    is not either)."""
    along = ray(lmi, t)
    if along is None:
        return None
    lo = math.log(max(along.c_min, 1e-300)) + 1e-9
    log_rho, log_c = scale_search(lambda c: along.rho(float(c[0])), np.ones(1),
                                  (lo, lo + 12.0), evaluations)
    if not log_rho < 1e3:
        return None
    return math.exp(log_rho), math.exp(log_c) * t


def dual_start(network: Network, lmi, per_neuron, *, until: float | None = None,
               rank: int = 1) -> np.ndarray | None:
    """Multipliers for ``lmi`` (a :class:`~lipverify.lmi.dag.DagLMI` of ``network``) from
    the dual trajectory, repaired and scaled (module docstring); None where it does not
    apply (slopes with ``a b != 0``, non-slope nodes) or
    finds nothing finite."""
    if not all(
            getattr(qc, "slope_restricted", False) and np.ndim(qc.alpha) == 0
            and float(qc.alpha) * float(qc.beta) == 0.0 for qc in lmi.qcs):
        return None
    try:
        found = trajectory_ascent(network, per_neuron, until=until, rank=rank)
    except NotApplicableError:
        return None
    if found is None:
        return None
    fit = kkt_multipliers(lmi, found[1])
    t = None if fit is None else repair(lmi, fit[1])
    scaled = None if t is None else best_scale(lmi, t)
    return None if scaled is None else scaled[1]
