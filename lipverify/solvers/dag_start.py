"""Starting multipliers for a residual (DAG) LipSDP from a dual trajectory (§5a, §2)
**[derived]**.

**1. Complementary slackness.** With ``M(rho, t) = rho E_0 - C^T C - sum_i t_i A_i`` (§5a;
``z^T A_i z = q_i(z)``, multiplier ``i``'s QC value) an optimal pair has ``M z = 0`` for the
dual's trajectory ``z``. ``A_i z = grad q_i(z) / 2``: for node ``k`` with ``p = V_k z`` and
``x = z_k``, on the neurons of multiplier ``i``, ``dq/dp = -4ab p + 2(a+b) x`` and ``dq/dx =
2(a+b) p - 4x``, so ``A_i z = (V_k^T dq/dp + S_k^T dq/dx) / 2`` (zero elsewhere). So
``rho E_0 z - sum_i t_i A_i z = C^T C z`` is linear in ``(rho, t)``: solved by bounded least
squares (``t >= 0``) for the trajectory of :func:`lipverify.solvers.trajectory.trajectory_ascent`.

**2. Repair, node by node.** A fit that is not exact can leave a pivot indefinite at every
common scale. For slopes with ``a b = 0``, leaving out the output term ``-C^T C`` (which a
large common scale dominates), node ``k``'s diagonal block is ``2 T_k`` and only its coupling
to earlier nodes carries ``T_k``; its Schur complement after the earlier hidden nodes is
``S_k = 2 T_k - X_k`` with ``X_k`` quadratic in ``T_k``. Scaling ``T_k`` by
``theta = min(1, 1 / lambda_max(T_k^{-1/2} X_k T_k^{-1/2}))`` gives ``S_k(theta) = theta (2 T_k
- theta X_k) >= theta T_k``. Then the best common scale (a bounded search on ``log c`` of
``rho*(c t)``).

Measured on resnet_2b (channel multipliers, 3000 ascent steps in 5 s, fit residual 2.1%):
no finite rho* at any scale before the repair; after it, L = 176.5 at its best scale
(certified bound under ``auto`` so far: 317.7, naive 1513.4). The dense Schur complements
limit it to LMIs of order at most :data:`MAX_ORDER`.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import NotApplicableError
from ..ir.network import Network
from .smooth_rho import scale_search
from .trajectory import trajectory_ascent

#: Largest LMI order the node-by-node repair (dense Schur complements) takes.
MAX_ORDER = 16000
#: Fitted multipliers are raised to at least this fraction of the largest (a multiplier
#: near zero leaves its pivot numerically singular: measured on a residual test net, 1e-8
#: gave no finite rho* at any scale after the repair).
FLOOR = 1e-4


def kkt_multipliers(lmi, z: np.ndarray) -> tuple[float, np.ndarray] | None:
    """``(rho, t)`` fitting ``M(rho, t) z = 0`` by bounded least squares (item 1), ``t`` raised
    to :data:`FLOOR` of its largest entry."""
    import scipy.optimize

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
    system = np.hstack([e0[:, None], -np.hstack(cols)])
    rhs = lmi.out.T @ (lmi.out @ z)
    res = scipy.optimize.lsq_linear(system, rhs, bounds=(0.0, np.inf))
    t = res.x[1:]
    top = float(t.max(initial=0.0))
    if not np.isfinite(res.x).all() or not top > 0:
        return None
    return float(res.x[0]), np.maximum(t, FLOOR * top)


def repair(lmi, t: np.ndarray) -> np.ndarray | None:
    """Item 2: each node's multipliers scaled down, in order, until its pivot is positive
    definite (None if a Schur complement cannot be formed)."""
    offs, n0 = lmi.offsets, lmi.sizes[0]
    counts = [qc.num_params() for qc in lmi.qcs]
    cuts = np.cumsum(counts)[:-1]
    t = t.copy()
    hidden = lmi.out[:, n0:]
    out_term = hidden.T @ hidden  # -C^T C is left to the common scale
    for k, qc in enumerate(lmi.qcs, start=1):
        m = lmi.assemble(t, 0.0)[n0:, n0:] + out_term
        lo, hi = offs[k] - n0, offs[k + 1] - n0
        s = m[lo:hi, lo:hi]
        if lo > 0:
            try:
                s = s - m[:lo, lo:hi].T @ np.linalg.solve(m[:lo, :lo], m[:lo, lo:hi])
            except np.linalg.LinAlgError:
                return None
        own = np.repeat(np.split(t, cuts)[k - 1], qc.n // counts[k - 1])
        x = np.diag(2.0 * own) - s
        r = 1.0 / np.sqrt(own)
        lam = float(np.linalg.eigvalsh(r[:, None] * x * r[None, :]).max())
        if lam > 1.0:
            parts = np.split(t, cuts)
            parts[k - 1] = parts[k - 1] / lam
            t = np.concatenate(parts)
    return t if np.isfinite(t).all() else None


def best_scale(lmi, t: np.ndarray, evaluations: int = 25) -> tuple[float, np.ndarray] | None:
    """``(rho*(c t), c t)`` at the best common scale ``c`` (bounded search on ``log c``,
    bracketed upward from ``c = 1`` until ``rho*`` is finite)."""
    c, rho = 1.0, lmi.rho_star(t)
    for _ in range(40):
        if math.isfinite(rho):
            break
        c *= 4.0
        rho = lmi.rho_star(c * t)
    if not math.isfinite(rho):
        return None

    found = scale_search(lmi.rho_star, t, (math.log(c / 4.0), math.log(c) + 3.0), evaluations)
    best = min(found, (math.log(rho), math.log(c)))
    return math.exp(best[0]), math.exp(best[1]) * t


def dual_start(network: Network, lmi, per_neuron, *, until: float | None = None
               ) -> np.ndarray | None:
    """Multipliers for ``lmi`` (a :class:`~lipverify.lmi.dag.DagLMI` of ``network``) from
    the dual trajectory, repaired and scaled (module docstring); None where it does not
    apply (order above :data:`MAX_ORDER`, slopes with ``a b != 0``, non-slope nodes) or
    finds nothing finite."""
    if lmi.order > MAX_ORDER or not all(
            getattr(qc, "slope_restricted", False) and np.ndim(qc.alpha) == 0
            and float(qc.alpha) * float(qc.beta) == 0.0 for qc in lmi.qcs):
        return None
    try:
        found = trajectory_ascent(network, per_neuron, until=until)
    except NotApplicableError:
        return None
    if found is None:
        return None
    fit = kkt_multipliers(lmi, found[1])
    t = None if fit is None else repair(lmi, fit[1])
    scaled = None if t is None else best_scale(lmi, t)
    return None if scaled is None else scaled[1]
