"""The chained (banded) LMI for residual / skip networks (FORMULATIONS.md §5b), generalised to
any network in affine normal form.

Process the nodes in topological order. After node ``k`` the rest of the network reads the
input and nodes ``1..k`` only through the rows ``F_k`` of every later pre-activation and of the
output, restricted to those columns; the *state* ``s_k = Q_k^T z_{<=k}`` (``Q_k`` an
orthonormal basis of the row space of ``F_k``) carries exactly that information. Because the
future of ``k`` is part of the future of ``k-1``,

    s_k = A_k s_{k-1} + B_k w_k,    v_k = H_k s_{k-1},    y = C~ s_K,

so with storage matrices ``P_k`` (``P_0 = rho I``, ``P_K = C~^T C~``) each step is one LMI

    R_k = [[P_{k-1}, 0], [0, 0]] - [A_k B_k]^T P_k [A_k B_k] - [[H_k, 0], [0, I]]^T Gamma_k [..]
        >= 0,

and the quadratic forms telescope to ``||dy||^2 <= rho ||dx||^2`` (§5b: ``s_k = x_k``,
``A_k = I``, ``B_k = G_k`` for blocks ``x + G phi(H x)``; a chain gives the chordal form of §3).
The cones have order ``dim s_{k-1} + n_k`` instead of the whole network.

Only the multipliers leave this module: they are certified on the monolithic LMI (§5a, §8),
which is built from the exact weights, so the floating-point state bases cannot affect
soundness.
"""

from __future__ import annotations

import numpy as np

from ..numerics import row_basis
from .dag import DagLMI


def state_maps(lmi: DagLMI):
    """``(Q_0, [(A_k, B_k, H_k)], C~)`` of the chained form."""
    offs = np.concatenate([[0], np.cumsum(lmi.sizes)])
    k_last = len(lmi.qcs)
    bases = []
    for k in range(k_last + 1):
        future = [lmi.pres[j][:, : offs[k + 1]] for j in range(k, k_last)]
        bases.append(row_basis(np.vstack([*future, lmi.out[:, : offs[k + 1]]])))
    steps = []
    for k in range(1, k_last + 1):
        q_prev, q = bases[k - 1], bases[k]
        a = q[: offs[k]].T @ q_prev  # restriction of s_k to z_{<k}, in the basis of s_{k-1}
        b = q[offs[k] :].T
        h = lmi.pres[k - 1][:, : offs[k]] @ q_prev
        steps.append((a, b, h))
    return bases[0], steps, lmi.out @ bases[-1]


def max_cone(lmi: DagLMI) -> int:
    """Largest PSD cone of the chained form (without building it)."""
    _, steps, _ = state_maps(lmi)
    return max(a.shape[1] + b.shape[1] for a, b, _ in steps)


def solve_chained(lmi: DagLMI, backend, time_limit=None):
    """Minimise rho over the chained LMI with a conic backend; returns (multipliers, status)."""
    import cvxpy as cp

    from ..solvers.conic import psd, run_problem

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
    _, status = run_problem(cp.Problem(cp.Minimize(rho), cons), backend, time_limit)
    if rho.value is None or any(p.value is None for p in params):
        return None, status
    return np.concatenate([np.asarray(p.value, dtype=np.float64).ravel() for p in params]), status
