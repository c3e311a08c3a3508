"""Structured interior-point solver for LipSDP with slope QCs (FORMULATIONS.md §1.2, §2, §5a).

The problem, in the multipliers ``y = (rho, t)``::

    minimise rho  s.t.  S(y) = rho E_0 - C^T C - sum_i t_g(i) U_i Q_i U_i^T >= 0,  t >= 0,

with ``U_i = [v_i, e_i]`` (neuron ``i``'s pre-activation row and its own coordinate) and
``Q_i = [[-2ab, a+b], [a+b, -2]]`` (§1.1). Every multiplier is a rank-two term, so the
Newton matrix of the log-det barrier, ``H_jl = tr(S^-1 F_j S^-1 F_l)``, needs only the
2x2 blocks ``U_i^T S^-1 U_j``: three n x n matrices (``V X V^T``, ``V X E^T``, ``E X E^T``)
built from one dense inverse and the weights, never an SDP solver's O(N^4) Schur system.

Dual-scaling potential reduction (the DSDP scheme): Newton steps on ``rho / mu - log det S``
with ``mu = (rho - lower) / (q N)``, line search on ``q N log(rho - lower) - log det S``.
``t >= 0`` needs no barrier: ``S_ii = 2 t_i`` on each neuron's own coordinate. One
factorisation of the Newton matrix serves every ``mu`` (``d(mu) = d1 / mu + d2``).

The optimality gap is *measured*: from the
Newton step ``d`` at ``y``, ``Z = mu (S^-1 - S^-1 dS S^-1)`` satisfies ``tr(Z E_0) = 1`` and
``<Z, A_j> = 0`` exactly, and is PSD when ``y - d`` is feasible (guaranteed when the Newton
decrement is below 1, the Dikin ellipsoid). Weak duality then gives
``rho_opt >= <Z, C^T C> = rho - mu (N - sum_j d_j s_j)``, maximised over ``mu``. Every iterate is
strictly feasible, so a time limit still returns certifiable multipliers; certification is
the caller's (§8), on the exact weights.

>>> import numpy as np
>>> from lipverify import Network
>>> from lipverify.ir.activations import SlopeRestricted
>>> from lipverify.solvers.interior import solve_chain_ipm
>>> net = Network.sequential([2 * np.eye(2), np.eye(2)], [SlopeRestricted.named("relu")])
>>> res = solve_chain_ipm(ChainLMI.from_network(net))
>>> round(res.rho, 6), bool(res.gap < 1e-6)   # L = 2 exactly
(4.0, True)
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from ...lmi.chain import ChainLMI
from .common import (
    IPMResult,
    NeuronForm,
    assemble_newton,
    cholesky_factor,
    dual_bound,
    factor_inverse,
    neuron_form,
    newton_solve,
    newton_system,
    strict_start,
    unit_vector,
)

#: First trial step of the potential-reduction line search, over the Newton decrement.
STEP = 2.0


#: Per-iteration trace at DEBUG level (logger ``lipverify.solvers.interior.potential``).
_log = logging.getLogger(__name__)


class FullBarrier:
    """``-log det S`` through one dense Cholesky of the whole LMI (any slope-QC LMI)."""

    def __init__(self, lmi, form: NeuronForm):
        self.lmi, self.form = lmi, form

    def factor(self, p, rho):
        return cholesky_factor(self.lmi.assemble(p, rho))

    def newton(self, chol, p, rho):
        return newton_system(self.form, factor_inverse(chol))


class ReducedBarrier:
    """Chains whose input block is ``rho I`` (no ``alpha beta`` term on layer 1, e.g. ReLU):
    eliminate it, ``det S = rho^n0 det S'`` with ``S' = S_hh - B^T B / rho`` of order N - n0
    (§2 forward recursion, first step). Everything the Newton system needs from ``S^-1``
    follows from ``P = S'^-1`` and ``G = W_1 W_1^T``, so a 784-input net costs like its
    hidden layers alone."""

    def __init__(self, lmi: ChainLMI, form: NeuronForm):
        self.lmi, self.form = lmi, form
        self.w1 = lmi.weights[0]
        self.n0, self.n1 = self.w1.shape[1], self.w1.shape[0]
        self.g = self.w1 @ self.w1.T
        self.c1 = form.q[1, : self.n1]  # a + b of layer 1, per neuron

    @staticmethod
    def applies(lmi, form: NeuronForm) -> bool:
        return lmi.kind == "chain" and form.n_in == lmi.weights[0].shape[1] and \
            not np.any(form.q[0, : lmi.weights[0].shape[0]]) and \
            lmi.weights[0].shape[1] > lmi.weights[0].shape[0]

    def _tau(self, p):
        return self.c1 * self.lmi.qcs[0].expand(self.lmi.split(p)[0])

    def factor(self, p, rho):
        if not rho > 0:
            return None
        n0, n1 = self.n0, self.n1
        s = self.lmi.assemble(p, rho)[n0:, n0:]
        tau = self._tau(p)
        s[:n1, :n1] -= (tau[:, None] * self.g * tau[None, :]) / rho
        fac = cholesky_factor(s)
        if fac is None:
            return None
        return fac[0], fac[1] + n0 * math.log(rho)

    def newton(self, chol, p, rho):
        form, n0, n1, g = self.form, self.n0, self.n1, self.g
        pm = factor_inverse(chol)  # P = S'^-1 = X_hh
        n = pm.shape[0]
        tau = self._tau(p)
        f = tau[:, None] * pm[:n1]  # F = diag(tau) P_1. ; X_0h = W_1^T F / rho
        k = f[:, :n1] * tau[None, :]  # K = diag(tau) P_11 diag(tau)
        gve = np.empty((n, n))
        gve[:n1] = (g @ f) / rho
        for nd in form.nodes[1:]:
            cols = nd.cols - n0
            gve[nd.start:nd.start + nd.v.shape[0]] = nd.v @ pm[cols]
        gvv = np.empty((n, n))
        kg = k @ g
        gvv[:n1, :n1] = g / rho + (g @ kg) / rho**2
        for nd in form.nodes[1:]:  # columns of later layers: gve[:, block] W^T
            blk = slice(nd.start, nd.start + nd.v.shape[0])
            gvv[:, blk] = gve[:, nd.cols - n0] @ nd.v.T
        gvv[n1:, :n1] = gvv[:n1, n1:].T
        # input-block terms: X_00 = I/rho + W1^T K W1 / rho^2, z^v = W1^T R, z^e = W1^T F / rho
        tr_kg = float(np.sum(k * g))
        fro00 = n0 / rho**2 + 2.0 * tr_kg / rho**3 + float(np.sum(kg * kg.T)) / rho**4
        tr00 = n0 / rho + tr_kg / rho**2
        r = np.empty((n1, n))
        r[:, :n1] = np.eye(n1) / rho + kg / rho**2
        for nd in form.nodes[1:]:
            blk = slice(nd.start, nd.start + nd.v.shape[0])
            r[:, blk] = (f[:, nd.cols - n0] @ nd.v.T) / rho
        re = f / rho
        gr, gre = g @ r, g @ re
        parts = (tr00, fro00, np.einsum("ij,ij->j", r, gr), np.einsum("ij,ij->j", r, gre),
                 np.einsum("ij,ij->j", re, gre))
        return assemble_newton(form, gvv, gve, pm, parts)


def solve_ipm(lmi, start=None, *, tol: float = 1e-8, time_limit: float | None = None,
              max_iter: int = 300, reach: float = 1.1, reduce: bool = True) -> IPMResult:
    """Minimise rho over the slope-QC LMI by potential reduction (module docstring).

    ``tol``: stop when ``(rho - lower) / rho <= tol`` (the measured gap, in rho).
    ``start``: multipliers to start near (blended with the anchor to be strictly inside).
    """
    t0 = time.perf_counter()
    form = neuron_form(lmi)
    p, rho = strict_start(lmi, start)
    nu = form.order  # barrier parameter of -log det S
    lower, it, status = None, 0, "iteration limit"
    e0 = unit_vector(form.n_params + 1)
    bar = ReducedBarrier(lmi, form) if reduce and ReducedBarrier.applies(lmi, form) \
        else FullBarrier(lmi, form)
    fac = None
    while it < max_iter:
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            status = "time limit"
            break
        if fac is None:  # the accepted line-search trial already factored S (reused)
            fac = bar.factor(p, rho)
        if fac is None:  # pragma: no cover - iterates stay strictly feasible
            status = "lost feasibility"
            break
        logdet = fac[1]
        s, hess = bar.newton(fac[0], p, rho)
        fac = None
        w = s  # -(gradient of -log det S); t >= 0 is implied: S_ii = 2 t_i (-Gww = 2T)
        # one factorisation gives the Newton step for every mu: d(kappa) = kappa d1 + d2
        sol = newton_solve(hess, np.column_stack([-e0, w]))
        if sol is None:
            status = "singular Newton system"
            break
        d1, d2 = sol[:, 0], sol[:, 1]
        q11, q12, q22 = -float(d1[0]), -float(d2[0]), float(d2 @ w)
        it += 1
        low = dual_bound(hess, d1, d2, w, rho, nu)
        if low is not None:
            lower = low if lower is None else max(lower, low)
        if lower is not None and rho - lower <= tol * rho:
            status = "optimal"
            break
        # potential reduction (DSDP): phi = q log(rho - lb) - log det S, q = reach * nu;
        # its gradient is the barrier gradient at mu = (rho - lb) / q
        lb = max(lower if lower is not None else 0.0, 0.0)
        q = reach * nu
        kappa = q / max(rho - lb, 1e-300 * rho)
        if not kappa < 1e150:  # rho has reached ~0 (a network with a zero layer)
            status = "optimal" if rho < 1e-100 else "stalled"
            break
        d = kappa * d1 + d2
        lam = math.sqrt(max(kappa * kappa * q11 + 2 * kappa * q12 + q22, 0.0))
        if not lam > 0:  # no descent direction left (a degenerate QC, slopes alpha = beta)
            status = "stalled"
            break
        step = min(1.0, STEP / lam)
        del hess
        f0 = q * math.log(rho - lb) - logdet
        for _ in range(40):
            rn, pn = rho + step * d[0], p + step * d[1:]
            f1 = None
            if rn > lb:
                fac = bar.factor(pn, rn)
                f1 = None if fac is None else q * math.log(rn - lb) - fac[1]
            if f1 is not None and f1 <= f0 - 1e-4 * step * lam * lam:
                break
            step *= 0.5
        else:
            status = "line search failed"
            break
        rho, p = rn, pn
        _log.debug("it %d rho %.6e lower %s step %.3g decrement %.3g kappa %.3g",
                   it, rho, lower, step, lam, kappa)
    return IPMResult(p, float(rho), lower, it, time.perf_counter() - t0, status)
