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
