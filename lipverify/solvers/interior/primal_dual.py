"""Primal-dual interior point for slope-QC LipSDP: HKM direction, Mehrotra predictor-corrector
(FORMULATIONS.md §1.2, §2; the same rank-two structure as
:mod:`lipverify.solvers.interior.potential`).

The pair of problems, with ``S(y) = sum_j y_j F_j - C^T C``, ``y = (rho, t)``, ``F_0 = E_0``,
``F_i = -U_i Q_i U_i^T``::

    (D) minimise rho  s.t.  S(y) >= 0          (P) maximise <C^T C, X>  s.t.  A(X) = e_0, X >= 0

Every dual iterate is ``S(y)`` assembled from ``y`` (exactly feasible, so a time limit still
returns certifiable multipliers); the primal ``X`` starts at ``mu S^-1`` and becomes feasible
as the steps lengthen. The HKM Schur matrix ``M_jl = tr(F_j X F_l S^-1)`` needs only the 2x2
blocks ``U_i^T X U_j`` and ``U_i^T S^-1 U_j`` (``Q_i`` sandwiches them), never an n^2 x n^2
system. Measured: 16-42 iterations where dual scaling needs 75-300 on deep nets.

Nets whose first layer narrows (``n_0 > n_1``, e.g. 784 -> 256) are solved on an exactly
equivalent smaller LMI: rotating the input by ``W_1^T = Q R`` splits ``rho I_{n_0 - n_1}`` off
as its own block, a scalar cone of multiplicity ``n_0 - n_1``
(:func:`lipverify.solvers.interior.potential.rotate`).

The optimality gap is measured, not the primal iterate's (it is only nearly feasible): once
``<C^T C, X>`` is close to rho, the dual-scaling bound of
:func:`lipverify.solvers.interior.potential.dual_bound` is taken at the current dual point,
whose primal matrix is exactly feasible.

>>> import numpy as np
>>> from lipverify import Network
>>> from lipverify.ir.activations import SlopeRestricted
>>> from lipverify.lmi.chain import ChainLMI
>>> net = Network.sequential([2 * np.eye(2), np.eye(2)], [SlopeRestricted.named("relu")])
>>> res = solve_chain_pd(ChainLMI.from_network(net))
>>> round(res.rho, 6), bool(res.gap < 1e-6)   # L = 2 exactly
(4.0, True)
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse.linalg

from ...numerics import lambda_min
from .common import (
    Blocks,
    IPMResult,
    NeuronForm,
    cholesky_factor,
    dual_bound,
    factor_inverse,
    neuron_form,
    neuron_traces,
    newton_solve,
    on_balanced,
    strict_start,
    unit_vector,
)

_log = logging.getLogger(__name__)

#: Fraction of the distance to the boundary a step may take (grows to 0.99 near the end).
STEP_FRACTION = 0.9
#: Mehrotra's centring exponent: sigma = (mu_affine / mu)^SIGMA_POWER.
SIGMA_POWER = 3.0
#: Above this order, step lengths come from Lanczos instead of a dense eigensolver.
LANCZOS_ORDER = 400


def trace_of(form: NeuronForm, z: np.ndarray) -> np.ndarray:
    """``A(Z)`` for a symmetric ``Z`` from its diagonal blocks only (no n x n products)."""
    vv, ve = np.empty(form.n), np.empty(form.n)
    for nd in form.nodes:
        blk = slice(nd.start, nd.start + nd.v.shape[0])
        own = form.n_in + np.arange(blk.start, blk.stop)
        vv[blk] = np.einsum("ij,ij->i", nd.v @ z[np.ix_(nd.cols, nd.cols)], nd.v)
        ve[blk] = np.einsum("ij,ji->i", nd.v, z[np.ix_(nd.cols, own)])
    ee = np.diag(z)[form.n_in:]
    return neuron_traces(form, np.trace(z[:form.n_in, :form.n_in]), vv, ve, ee)


def schur(form: NeuronForm, bx: Blocks, by: Blocks, chunk: int = 128) -> np.ndarray:
    """``M_jl = tr(F_j X F_l Y)`` in (rho, neuron) coordinates (before grouping).

    Per neuron pair, ``tr(Q_i A Q_j B^T)`` with ``A = U_i^T X U_j``, ``B = U_i^T Y U_j``."""
    n = form.n
    a, b, c = form.q
    m = np.empty((n + 1, n + 1))
    for r0 in range(0, n, chunk):
        r = slice(r0, min(r0 + chunk, n))
        ar, br, cr = a[r, None], b[r, None], c[r, None]
        avv, ave, aev, aee = bx.vv[r], bx.ve[r], bx.ev[r], bx.ee[r]
        bvv, bve, bev, bee = by.vv[r], by.ve[r], by.ev[r], by.ee[r]
        # sum over a, c in {v, e} of (Q_i A)[a, c] (Q_j B^T)[c, a]
        pvv, pve = br * aev, br * aee
        pev, pee = br * avv + cr * aev, br * ave + cr * aee
        rvv, rve = b * bve, b * bee
        rev, ree = b * bvv + c * bve, b * bev + c * bee
        if np.any(a):  # the alpha beta terms (zero for ReLU)
            pvv += ar * avv
            pve += ar * ave
            rvv += a * bvv
            rve += a * bev
        h = pvv * rvv + pve * rev + pev * rve + pee * ree
        m[1 + r0:1 + r.stop, 1:] = h
    # the rho row: tr(E_0 X F_j Y) = -(q11 zy_v.zx_v + q12 (zy_v.zx_e + zy_e.zx_v) + q22 zy_e.zx_e)
    dot = np.einsum
    m[0, 1:] = -(a * dot("ij,ij->j", by.zv, bx.zv)
                 + b * (dot("ij,ij->j", by.zv, bx.ze) + dot("ij,ij->j", by.ze, bx.zv))
                 + c * dot("ij,ij->j", by.ze, bx.ze))
    m[1:, 0] = m[0, 1:]
    m[0, 0] = float(np.sum(bx.z00 * by.z00))
    return m


def grouped_blocks(form: NeuronForm):
    """Sum neuron coordinates into parameter coordinates (layer / channel multipliers)."""
    if form.n_params == form.n:
        return lambda v: v, lambda m: m
    idx = np.concatenate([[0], 1 + form.group])

    def vec(v):
        return np.bincount(idx, weights=v, minlength=form.n_params + 1)

    def mat(m):
        starts = np.flatnonzero(np.r_[True, np.diff(idx) != 0])
        return np.add.reduceat(np.add.reduceat(m, starts, axis=0), starts, axis=1)

    return vec, mat


class _Cholesky:
    """Jacobi-equilibrated Cholesky of the Schur matrix, reused for both right-hand sides."""

    def __init__(self, m: np.ndarray):
        self.scale = np.sqrt(np.maximum(np.diag(m), 1e-300))
        ms = m / self.scale[:, None] / self.scale[None, :]
        self.c = scipy.linalg.cho_factor(ms, lower=True, check_finite=False, overwrite_a=True)

    def solve(self, rhs: np.ndarray, m: np.ndarray) -> np.ndarray:
        """``M^-1 rhs`` with one step of iterative refinement (M is ill-conditioned late)."""
        x = self._solve(rhs)
        return x + self._solve(rhs - m @ x)

    def _solve(self, rhs: np.ndarray) -> np.ndarray:
        return scipy.linalg.cho_solve(self.c, rhs / self.scale, check_finite=False) / self.scale


def max_step(chol: np.ndarray, d: np.ndarray) -> float:
    """Largest ``alpha`` with ``Z + alpha D >= 0`` (``chol`` = lower Cholesky factor of Z)."""
    n = d.shape[0]
    if n <= LANCZOS_ORDER:
        w = scipy.linalg.solve_triangular(chol, d, lower=True, check_finite=False)
        w = scipy.linalg.solve_triangular(chol, w.T, lower=True, check_finite=False)
        lam = lambda_min((w + w.T) / 2.0, "interior-point step length")
    else:
        def mv(v):
            u = scipy.linalg.solve_triangular(chol, v, lower=True, trans="T", check_finite=False)
            return scipy.linalg.solve_triangular(chol, d @ u, lower=True, check_finite=False)
        op = scipy.sparse.linalg.LinearOperator((n, n), matvec=mv, dtype=np.float64)
        try:
            lam = float(scipy.sparse.linalg.eigsh(op, k=1, which="SA", tol=1e-2,
                                                  return_eigenvectors=False)[0])
        except scipy.sparse.linalg.ArpackNoConvergence:
            lam = -1e300  # no estimate: the caller's Cholesky check backtracks
        lam *= 1.01  # Lanczos converges from inside: stay on the safe side
    return math.inf if lam >= 0 else -1.0 / lam


def times_fn(lmi):
    """``(Z, dS) -> Z dS``, by blocks when ``dS`` is block tridiagonal (a chain's LMI)."""
    if not lmi.kind == "chain" or len(lmi.sizes) < 3:
        return lambda z, ds: z @ ds
    offs = np.concatenate([[0], np.cumsum(lmi.sizes)])
    spans = [slice(int(a), int(b)) for a, b in zip(offs[:-1], offs[1:])]

    def times(z, ds):
        out = np.empty_like(z)
        for j, cj in enumerate(spans):
            rows = slice(spans[max(j - 1, 0)].start, spans[min(j + 1, len(spans) - 1)].stop)
            out[:, cj] = z[:, rows] @ ds[rows, cj]
        return out

    return times


def _sym(z: np.ndarray) -> np.ndarray:
    z += z.T
    z *= 0.5
    return z


def solve_pd(lmi, start=None, *, tol: float = 1e-8, time_limit: float | None = None,
             max_iter: int = 100, scalar_cone: int = 0) -> IPMResult:
    """Minimise rho over the slope-QC LMI ``lmi`` (module docstring).

    ``scalar_cone``: multiplicity ``k`` of an extra block ``rho I_k`` (from :func:`rotate`).
    ``tol``: stop when the measured gap ``(rho - lower) / rho <= tol``.
    """
    t0 = time.perf_counter()
    form = neuron_form(lmi)
    vec, mat = grouped_blocks(form)
    k = scalar_cone
    nu = form.order + k
    p, rho = strict_start(lmi, start)
    times = times_fn(lmi)
    zero = np.zeros(form.n_params)
    c0 = lmi.assemble(zero, 0.0)  # -C^T C: S(y) = c0 + sum y_j F_j

    n0 = np.arange(form.n_in)

    def slack_step(dy):  # sum_j dy_j F_j (assemble takes |rho|: F_0 = E_0 added here)
        ds = lmi.assemble(dy[1:], 0.0) - c0
        ds[n0, n0] += dy[0]
        return ds

    def factor_s(p, rho):
        if not rho > 0:
            return None
        fac = cholesky_factor(lmi.assemble(p, rho))
        return None if fac is None else fac[0]

    e0 = np.zeros(form.n_params + 1)
    e0[0] = 1.0
    ls = factor_s(p, rho)
    y_inv = factor_inverse(ls.copy())
    s = lmi.assemble(p, rho)
    mu0 = 1.0 / (np.trace(y_inv[:form.n_in, :form.n_in]) + k / rho)
    x, xk = mu0 * y_inv, mu0 / rho  # centred start, tr(E_0 X) = 1
    lx = np.linalg.cholesky(x)
    lower, it, status, stalls = None, 0, "iteration limit", 0
    ctx = PDContext(form, vec, mat, k, nu, tol)
    while it < max_iter:
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            status = "time limit"
            break
        bx, by = Blocks.of(form, x), Blocks.of(form, y_inv)
        ay, mu, lower = measure(ctx, by, bx.trace(form), float(np.sum(x * s)),
                                 -float(np.sum(c0 * x)), xk, rho, lower, (it, t0))
        if lower is not None and rho - lower <= tol * rho:
            status = "optimal"
            break
        if stalls >= 3:  # float64 precision reached: nothing left to gain
            status = "stalled"
            break
        mm, fac = newton_matrix(ctx, bx, by, xk, rho)
        del bx, by
        if fac is None:
            status = "singular Schur matrix"
            break
        it += 1
        # predictor (sigma = 0)
        dy = fac.solve(-e0, mm)
        ds = slack_step(dy)
        dx = -x - _sym(times(x, ds) @ y_inv)
        dxk = -xk - xk * dy[0] / rho
        ap, ad = _steps(lx, dx, xk, dxk, ls, ds, rho, dy[0])
        mu_a = (float(np.sum((x + ap * dx) * (s + ad * ds)))
                + k * (xk + ap * dxk) * (rho + ad * dy[0])) / nu
        sigma = min(1.0, (mu_a / mu) ** SIGMA_POWER)
        # corrector: centring sigma mu and the second-order term dX_a dS_a S^-1
        corr = _sym(times(dx, ds) @ y_inv)
        corr_k = dxk * dy[0] / rho
        rhs = sigma * mu * ay - e0
        rhs -= vec(trace_of(form, corr))
        rhs[0] -= k * corr_k
        dy = fac.solve(rhs, mm)
        ds = slack_step(dy)
        dx = sigma * mu * y_inv - x - _sym(times(x, ds) @ y_inv) - corr
        dxk = sigma * mu / rho - xk - xk * dy[0] / rho - corr_k
        ap, ad = _steps(lx, dx, xk, dxk, ls, ds, rho, dy[0])
        # take the steps; the Cholesky factors double as the feasibility checks
        ap, ad = step_fraction(ap, ad, sigma)
        ap, lxn = backtrack(lambda a, x=x, dx=dx: _cholesky_or_none(x + a * dx), ap)
        ad, lsn = backtrack(lambda a, p=p, r=rho, d=dy: factor_s(p + a * d[1:], r + a * d[0]),
                            ad)
        if lxn is None or lsn is None:
            status = f"lost {'primal' if lxn is None else 'dual'} feasibility"
            break
        xn = x + ap * dx
        stalls = stalls + 1 if max(ap, ad) < 0.2 else 0
        x, lx, xk = xn, lxn, xk + ap * dxk
        p, rho, ls = p + ad * dy[1:], rho + ad * dy[0], lsn
        s = lmi.assemble(p, rho)
        y_inv = factor_inverse(ls.copy())
    return IPMResult(p, float(rho), lower, it, time.perf_counter() - t0, status, "primal-dual")


def step_fraction(ap: float, ad: float, sigma: float) -> tuple[float, float]:
    """The fraction of the way to the boundary each step takes (longer as sigma -> 0)."""
    gamma = max(STEP_FRACTION, min(0.99, 1.0 - 10.0 * sigma))
    return min(1.0, gamma * ap), min(1.0, gamma * ad)


def backtrack(trial, step: float, shrink: float = 0.8, tries: int = 30):
    """``(step, trial(step))`` for the first step (shrinking) whose trial is not None."""
    for _ in range(tries):
        out = trial(step)
        if out is not None:
            return step, out
        step *= shrink
    return step, None


def _cholesky_or_none(z: np.ndarray) -> np.ndarray | None:
    try:
        return np.linalg.cholesky(z)
    except np.linalg.LinAlgError:
        return None


@dataclass(frozen=True)
class PDContext:
    """What every iteration of the primal-dual methods shares."""

    form: NeuronForm
    vec: object  # neuron -> parameter coordinates (vectors)
    mat: object  # ... (matrices)
    k: int  # multiplicity of the scalar cone rho >= 0
    nu: int  # barrier parameter, order + k
    tol: float

    @property
    def e0(self) -> np.ndarray:
        return unit_vector(self.form.n_params + 1)


def measure(ctx: PDContext, by: Blocks, ax_neurons, xs: float, primal: float, xk: float,
             rho: float, lower, where) -> tuple[np.ndarray, float, float | None]:
    """``(A(S^-1), mu, best dual bound)`` at an iterate (``ax_neurons = A(X)`` per neuron,
    ``xs = <X, S>``, ``primal = <C^T C, X>``); the bound is tried once the primal is nearly
    feasible and close."""
    form, k = ctx.form, ctx.k
    ax = ctx.vec(ax_neurons)
    ax[0] += k * xk
    ay = ctx.vec(by.trace(form))
    ay[0] += k / rho
    mu = (xs + k * xk * rho) / ctx.nu
    infeas = float(np.linalg.norm(ctx.e0 - ax))
    if infeas < 1e-3 and rho - primal <= 1e3 * ctx.tol * rho:
        low = _dual_bound(form, ctx.mat, by, ay, rho, ctx.nu, k)
        if low is not None:
            lower = low if lower is None else max(lower, low)
    _log.debug("it %d rho %.9e primal %.9e infeas %.2e mu %.2e lower %s at %.2f s",
               where[0], rho, primal, infeas, mu, lower, time.perf_counter() - where[1])
    return ay, mu, lower


def newton_matrix(ctx: PDContext, bx: Blocks, by: Blocks, xk: float, rho: float):
    """``(M, its factor)``, the factor None if M is numerically singular."""
    mm = ctx.mat(schur(ctx.form, bx, by))
    mm[0, 0] += ctx.k * xk / rho
    try:
        return mm, _Cholesky(_sym(mm).copy())
    except (scipy.linalg.LinAlgError, ValueError):
        return mm, None


def _steps(lx, dx, xk, dxk, ls, ds, rho, drho) -> tuple[float, float]:
    """Largest primal and dual steps to the boundary (the scalar cone included)."""
    return cone_limits(max_step(lx, dx), max_step(ls, ds), xk, dxk, rho, drho)


def cone_limits(ap: float, ad: float, xk: float, dxk: float, rho: float,
                drho: float) -> tuple[float, float]:
    """The steps ``(ap, ad)`` cut where the scalar cone ``x_k >= 0``, ``rho >= 0`` ends."""
    if dxk < 0:
        ap = min(ap, -xk / dxk)
    if drho < 0:
        ad = min(ad, -rho / drho)
    return ap, ad


def _dual_bound(form: NeuronForm, mat, by: Blocks, ay: np.ndarray, rho: float, nu: int,
                k: int) -> float | None:
    """``potential.dual_bound`` at the current dual point: the Hessian of
    ``-log det S - k log rho`` (the scalar cone included) is ``schur(S^-1, S^-1)``."""
    hess = mat(schur(form, by, by))
    hess[0, 0] += k / rho**2
    sol = newton_solve(hess, np.column_stack([-unit_vector(hess.shape[0]), ay]))
    return None if sol is None else dual_bound(hess, sol[:, 0], sol[:, 1], ay, rho, nu)


def solve_chain_pd(lmi, start=None, **options) -> IPMResult:
    """:func:`solve_pd` on the balanced (and, when the first layer narrows, rotated) chain,
    mapped back to the original multipliers."""
    return on_balanced(solve_pd, lmi, start, **options)
