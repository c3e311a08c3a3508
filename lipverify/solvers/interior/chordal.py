"""Chordal primal-dual interior point for chains: the HKM method of
:mod:`lipverify.solvers.interior.primal_dual` with the primal kept only on the
block-tridiagonal pattern
(FORMULATIONS.md §3).

Every ``F_j`` and ``C^T C`` live on the pattern, so only ``X_P`` matters; ``X_P`` is feasible
when each clique ``[[X_kk, X_k,k+1], [., X_k+1,k+1]]`` is positive definite, and the method
works with its maximum-determinant completion ``X^``, whose inverse is block tridiagonal
(the completion approach of SDPA-C). Nothing costs ``N^3``: ``S^-1`` and ``X^`` come from
block recursions (``N^2 w``), the direction is needed only on the pattern (``6 N^2 w``), the
primal step length is per clique and the dual one uses the block Cholesky factor of ``S``.
The Schur matrix is the same as the dense method's. The second-order (Mehrotra) term would
need the dense direction, so the corrector only re-centres (about 40% more iterations).

>>> import numpy as np
>>> from lipverify import Network
>>> from lipverify.ir.activations import SlopeRestricted
>>> from lipverify.lmi.chain import ChainLMI
>>> ws = [2 * np.eye(2), np.eye(2), np.eye(2)]
>>> net = Network.sequential(ws, [SlopeRestricted.named("relu")] * 2)
>>> res = solve_chain_pd_chordal(ChainLMI.from_network(net))
>>> round(res.rho, 6), bool(res.gap < 1e-6)   # L = 2 exactly
(4.0, True)
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from ...lmi import blocktri
from ...lmi.chain import ChainLMI, assemble_tridiagonal
from ...numerics import eigvalsh_batched
from .common import IPMResult, neuron_form, on_balanced, strict_start
from .primal_dual import (
    LANCZOS_ORDER,
    SIGMA_POWER,
    Blocks,
    PDContext,
    backtrack,
    cone_limits,
    grouped_blocks,
    max_step,
    measure,
    newton_matrix,
    step_fraction,
    times_fn,
)

_log = logging.getLogger(__name__)


def _dot(a, b) -> float:
    """``<A, B>`` of two symmetric matrices given on the pattern as ``(d, b)``."""
    return float(sum(np.sum(x * y) for x, y in zip(a[0], b[0]))
                 + 2.0 * sum(np.sum(x * y) for x, y in zip(a[1], b[1])))


def _axpy(a, alpha, b):
    return ([x + alpha * y for x, y in zip(a[0], b[0])],
            [x + alpha * y for x, y in zip(a[1], b[1])])


def _pattern(z: np.ndarray, offs) -> tuple[list, list]:
    m = len(offs) - 1
    return ([z[offs[k]:offs[k + 1], offs[k]:offs[k + 1]].copy() for k in range(m)],
            [z[offs[k]:offs[k + 1], offs[k + 1]:offs[k + 2]].copy() for k in range(m - 1)])


def _primal_step(chols, dx) -> float:
    """Largest step keeping every clique positive definite: small cliques batched (dense
    eigenvalues), large ones by Lanczos on ``C^-1 dX C^-T`` (:func:`max_step`)."""
    d, b = dx
    groups: dict[tuple, list] = {}
    for k, c in enumerate(chols):
        groups.setdefault(c.shape, []).append(k)
    step = math.inf
    for shape, ks in groups.items():
        cliques = [np.block([[d[k], b[k]], [b[k].T, d[k + 1]]]) for k in ks]
        if shape[0] > LANCZOS_ORDER:
            step = min([step] + [max_step(chols[k], dc) for k, dc in zip(ks, cliques)])
            continue
        c, dc = np.stack([chols[k] for k in ks]), np.stack(cliques)
        c_inv = np.linalg.inv(c)  # triangular, well within a clique's conditioning
        w = c_inv @ dc @ np.swapaxes(c_inv, 1, 2)
        lam = float(eigvalsh_batched((w + np.swapaxes(w, 1, 2)) / 2.0,
                                     "chordal step length")[:, 0].min())
        if lam < 0:
            step = min(step, -1.0 / lam)
    return step


def solve_pd_chordal(lmi: ChainLMI, start=None, *, tol: float = 1e-8,
                     time_limit: float | None = None, max_iter: int = 150,
                     scalar_cone: int = 0) -> IPMResult:
    """Minimise rho over a slope-QC chain (module docstring; the arguments of
    :func:`lipverify.solvers.interior.primal_dual.solve_pd`)."""
    t0 = time.perf_counter()
    form = neuron_form(lmi)
    vec, mat = grouped_blocks(form)
    k = scalar_cone
    nu = form.order + k
    offs = np.concatenate([[0], np.cumsum(lmi.sizes)])
    times = times_fn(lmi)
    p, rho = strict_start(lmi, start)
    c0 = lmi.blocks(np.zeros(form.n_params), 0.0)  # -C^T C on the pattern
    n0 = np.arange(form.n_in)

    def slack_step(dy):  # sum_j dy_j F_j on the pattern
        d, b = lmi.blocks(dy[1:], 0.0)
        d = [x - y for x, y in zip(d, c0[0])]
        d[0][n0, n0] += dy[0]
        return d, b

    e0 = np.zeros(form.n_params + 1)
    e0[0] = 1.0
    s = lmi.blocks(p, rho)
    fs = blocktri.factor(*s)
    y_inv = blocktri.inverse(fs)
    mu0 = 1.0 / (np.trace(y_inv[:form.n_in, :form.n_in]) + k / rho)
    x = _pattern(mu0 * y_inv, offs)
    xk = mu0 / rho
    chols = blocktri.clique_factors(*x)
    lower, it, status, stalls = None, 0, "iteration limit", 0
    ctx = PDContext(form, vec, mat, k, nu, tol)
    while it < max_iter:
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            status = "time limit"
            break
        xhat = blocktri.completion(*x, chols)
        ls = blocktri.lower(fs)
        bx, by = Blocks.of(form, xhat), Blocks.of(form, y_inv)
        # A(X_P) and <C^T C, X_P>: every F_j lives on the pattern, which X^ copies exactly
        ay, mu, lower = measure(ctx, by, bx.trace(form), _dot(x, s),
                                 -float(np.sum(c0[0][-1] * x[0][-1])), xk, rho, lower, (it, t0))
        if lower is not None and rho - lower <= tol * rho:
            status = "optimal"
            break
        if stalls >= 3:
            status = "stalled"
            break
        mm, fac = newton_matrix(ctx, bx, by, xk, rho)
        del bx, by
        if fac is None:
            status = "singular Schur matrix"
            break
        it += 1

        state = (fac, mm, xhat, y_inv, x, xk, rho)
        dy, ds, dx, dxk = _direction(state, -e0, None, 0.0, slack_step, times, offs)
        ap, ad = _steps(chols, dx, xk, dxk, ls, ds, rho, dy[0])
        mu_a = (_dot(_axpy(x, ap, dx), _axpy(s, ad, ds))
                + k * (xk + ap * dxk) * (rho + ad * dy[0])) / nu
        sigma = min(1.0, (mu_a / mu) ** SIGMA_POWER)
        centre = _pattern(sigma * mu * y_inv, offs)  # corrector: re-centre on sigma mu
        rhs = sigma * mu * ay - e0
        centre_k = sigma * mu / rho
        dy, ds, dx, dxk = _direction(state, rhs, centre, centre_k, slack_step, times, offs)
        ap, ad = _steps(chols, dx, xk, dxk, ls, ds, rho, dy[0])
        ap, ad = step_fraction(ap, ad, sigma)
        ap, cn = backtrack(lambda a, x=x, dx=dx: blocktri.clique_factors(*_axpy(x, a, dx)), ap)

        def dual_trial(a, p=p, rho=rho, dy=dy):
            sn = lmi.blocks(p + a * dy[1:], rho + a * dy[0])
            fn = blocktri.factor(*sn) if rho + a * dy[0] > 0 else None
            return None if fn is None else (sn, fn)

        ad, dual = backtrack(dual_trial, ad)
        if cn is None or dual is None:
            status = f"lost {'primal' if cn is None else 'dual'} feasibility"
            break
        xn, (sn, fn) = _axpy(x, ap, dx), dual
        pn, rn = p + ad * dy[1:], rho + ad * dy[0]
        _log.debug("steps %.3f %.3f sigma %.3g", ap, ad, sigma)
        stalls = stalls + 1 if max(ap, ad) < 0.2 else 0
        x, chols, xk = xn, cn, xk + ap * dxk
        p, rho, s, fs = pn, rn, sn, fn
        y_inv = blocktri.inverse(fs)
    return IPMResult(p, float(rho), lower, it, time.perf_counter() - t0, status,
                     "primal-dual chordal")


def _direction(state, rhs, centre, centre_k: float, slack_step, times, offs):
    """HKM direction on the pattern: ``dy = M^-1 rhs``, ``dS = sum dy_j F_j``, ``dX_P = centre
    - X_P - P(sym(X^ dS S^-1))`` (``centre = P(sigma mu S^-1)``, None for the predictor)."""
    fac, mm, xhat, y_inv, x, xk, rho = state
    dy = fac.solve(rhs, mm)
    ds = slack_step(dy)
    band = blocktri.band(times(xhat, assemble_tridiagonal(*ds)), y_inv, offs)
    dx = _axpy(x, -2.0, x) if centre is None else _axpy(centre, -1.0, x)
    dx = _axpy(dx, -1.0, band)
    return dy, ds, dx, centre_k - xk - xk * dy[0] / rho


def _steps(chols, dx, xk, dxk, ls, ds, rho, drho) -> tuple[float, float]:
    """Largest steps to the boundary: per clique for ``X_P``; for ``S`` by Lanczos on
    ``L^-1 dS L^-T`` with ``L`` the (dense) block Cholesky factor ``ls``."""
    return cone_limits(_primal_step(chols, dx), max_step(ls, assemble_tridiagonal(*ds)),
                       xk, dxk, rho, drho)


def solve_chain_pd_chordal(lmi: ChainLMI, start=None, **options) -> IPMResult:
    """:func:`solve_pd_chordal` on the balanced (and rotated) chain, mapped back."""
    return on_balanced(solve_pd_chordal, lmi, start, **options)
