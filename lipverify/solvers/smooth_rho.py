"""rho*(T) of §2 as a convex function of the multipliers, minimised directly.

For fixed multipliers the backward Schur recursion gives ``S(p)`` with
``rho*(p) = lambda_max(S(p))``. ``S`` is matrix-convex in ``p`` (matrix-fractional
terms), so the soft maximum ``F_mu = mu log tr exp(S / mu)`` is a smooth convex upper
approximation: ``rho* <= F_mu <= rho* + mu log n_0``. Its gradient comes from the null
vectors ``z`` of ``M`` (forward substitution ``z_k = -Y_k^{-1} B_k^T z_{k-1}``):
``dF/dp = sum_i w_i dq/dp(z_i)``, ``q`` the layers' QC values (§1.1). Continuation in
``mu`` drives ``F_mu`` to the SDP optimum; every iterate is a multiplier candidate for the
§8 certificate, which is computed on the exact ``rho*``.
"""

from __future__ import annotations

import math
import time

import numpy as np
import scipy.linalg
import scipy.linalg.blas

from ..lmi.chain import ChainLMI, balance
from ..numerics import blas_threads, eigh_top, lambda_max


def schur_top(lmi, params):
    """Backward recursion over ``lmi.blocks`` (a chain's layers, or a DAG's groups): the top
    block as a :class:`TopBlock` and the pivot factorisations (None if infeasible)."""
    d, b = lmi.blocks(params, 0.0)
    chols = [None] * len(d)
    y = d[-1]
    for k in range(len(d) - 1, 0, -1):
        try:
            chols[k] = scipy.linalg.cho_factor(y, lower=True, check_finite=False)
        except (scipy.linalg.LinAlgError, ValueError):
            return None, None, None
        # b Y^-1 b^T = h^T h with h = L^-1 b^T: one triangular solve and a rank-k update
        h = scipy.linalg.solve_triangular(chols[k][0], b[k - 1].T, lower=True,
                                          check_finite=False)
        if k == 1:
            return TopBlock(h, d[0]), chols, b
        y = d[k - 1] - _gram(h)
    return TopBlock(None, d[0]), chols, b  # no hidden block: S = -d_0


class TopBlock:
    """The top Schur block ``S = h^T h - d_0`` (§2), kept factored. When ``d_0`` is zero (an
    input block without its own terms, e.g. a ReLU first layer) and ``h`` has fewer rows
    than columns, the nonzero spectrum of ``S`` is that of the smaller ``h h^T``, and its
    eigenvectors are ``h^T v / sqrt(lambda)`` (resnet_2b: 2048 instead of 3072)."""

    def __init__(self, h: np.ndarray | None, d0: np.ndarray):
        self.h, self.d0 = h, d0
        self.narrow = h is not None and h.shape[0] < h.shape[1] and not np.any(d0)

    def finite(self) -> bool:
        return bool(np.isfinite(self.d0).all() and (self.h is None or np.isfinite(self.h).all()))

    def matrix(self) -> np.ndarray:
        y = -self.d0 if self.h is None else _gram(self.h) - self.d0
        return (y + y.T) / 2.0

    def lambda_max(self, what: str) -> float:
        if self.narrow:
            return lambda_max(_gram(self.h.T), what)
        return lambda_max(self.matrix(), what)

    def soft_max(self, mu: float, cap: int | None = None) -> tuple[float, float, np.ndarray]:
        """:func:`soft_max_eig` of ``S`` (over its top ``cap`` eigenvalues, if given)."""
        if self.narrow:
            small = _gram(self.h.T)
            evals, evecs = top_eigh(small, mu, cap)
            lam1 = float(evals[-1])
            keep = evals >= lam1 - 40.0 * mu if mu > 0 else evals >= lam1
            if lam1 > 0 and evals[keep].min() > 40.0 * mu:  # S's zero eigenvalues weigh nothing
                w = np.exp((evals[keep] - lam1) / mu) if mu > 0 else np.ones(int(keep.sum()))
                total = float(w.sum())
                soft = lam1 + (mu * math.log(total) if mu > 0 else 0.0)
                u = self.h.T @ (evecs[:, keep] / np.sqrt(evals[keep]))
                return lam1, soft, u * np.sqrt(w / total)
        return soft_max_eig(self.matrix(), mu, cap)


def _gram(h: np.ndarray) -> np.ndarray:
    """``h^T h`` (symmetric) by one BLAS ``syrk``: half the flops of a product; the lower
    triangle is copied from the upper one in panels (no full-size temporaries)."""
    g = scipy.linalg.blas.dsyrk(1.0, h, trans=1, lower=0)
    n, step = g.shape[0], 256
    for j in range(0, n, step):
        e = min(j + step, n)
        g[e:, j:e] = g[j:e, e:].T
        blk = g[j:e, j:e]
        g[j:e, j:e] = np.triu(blk) + np.triu(blk, 1).T
    return g


def top_eigh(a: np.ndarray, mu: float, cap: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of symmetric ``a`` within ``40 mu`` of the largest (all that the soft
    maximum weighs above e^-40): a partial decomposition, widened until it covers them, or
    to ``cap`` pairs (then the soft maximum is that of the top ``cap`` eigenvalues: still a
    smooth upper bound on lambda_max, with its own exact gradient)."""
    n = a.shape[0] if cap is None else min(a.shape[0], cap)
    k = min(n, 32)
    while True:
        evals, evecs = eigh_top(a, k, "smooth solver (top eigenpairs)")
        if k == n or evals[0] < evals[-1] - 40.0 * mu:
            return evals, evecs
        k = min(n, 4 * k)


def soft_max_eig(top: np.ndarray, mu: float, cap: int | None = None
                 ) -> tuple[float, float, np.ndarray]:
    """``(lambda_max, mu log tr exp(top / mu), U)`` with ``U U^T`` the gradient of the soft
    maximum (top eigenvectors scaled by the square roots of their softmax weights; the top
    ``cap`` only, if given: :func:`top_eigh`)."""
    evals, evecs = top_eigh(top, mu, cap)
    lam1 = float(evals[-1])
    keep = evals >= lam1 - 40.0 * mu if mu > 0 else evals >= lam1
    w = np.exp((evals[keep] - lam1) / mu) if mu > 0 else np.ones(int(keep.sum()))
    total = float(w.sum())
    soft = lam1 + (mu * math.log(total) if mu > 0 else 0.0)
    return lam1, soft, evecs[:, keep] * np.sqrt(w / total)


def soft_rho(lmi: ChainLMI, params, mu: float) -> tuple[float, float, np.ndarray | None]:
    """``(rho*, F_mu, grad F_mu)``; ``(inf, inf, None)`` outside the domain."""
    out = soft_parts(lmi, params, mu)
    if out is None:
        return math.inf, math.inf, None
    lam1, soft, _, grad = out
    return max(lam1, 0.0), soft, grad


def soft_parts(lmi: ChainLMI, params, mu: float):
    """``(lambda_max, F_mu, Z, grad)`` with ``Z`` the weighted null vectors stacked over the
    blocks (``Z Z^T`` is the gradient of ``F_mu`` with respect to ``M``: a dual candidate,
    see :mod:`lipverify.solvers.gap`); None outside the domain."""
    top, chols, b = schur_top(lmi, params)
    if top is None or not top.finite():
        return None
    lam1, soft, u = top.soft_max(mu)
    z = [u]  # weighted null vectors, one column each
    grads = []
    for k, qc in enumerate(lmi.qcs, start=1):
        z.append(-scipy.linalg.cho_solve(chols[k], b[k - 1].T @ z[-1], check_finite=False))
        grads.append(qc.value_grad(lmi.weights[k - 1] @ z[k - 1], z[k]))
    return lam1, soft, np.vstack(z), np.concatenate(grads)


#: Below this block order BLAS threads only cost (and collapse under load): run single-threaded.
SMALL_BLOCK = 600


def minimize_rho(lmi, start, *, balanced: bool = True, **kwargs):
    """Minimise ``rho*`` (see :func:`_minimize_rho`), single-threaded BLAS on small blocks.

    A chain is solved balanced (:func:`lipverify.lmi.chain.balance`, §2): every weight of unit
    norm, so the multipliers of all layers are of one scale for L-BFGS-B (measured: the
    bench's 64x16 net 282.0 instead of 648.1, both runs to the iteration limits;
    784-1024x8-10 at a 600 s limit 14.65 instead of 27.66). The result is
    mapped back; its ``rho`` is the balanced LMI's, a congruence of the original up to the
    rounding of the scales (the caller certifies the multipliers on the original weights).
    """
    if balanced and lmi.kind == "chain" and len(lmi.qcs) > 1:
        scaled, factors, out = balance(lmi)
        params, rho, info = minimize_rho(scaled, np.asarray(start) / factors, balanced=False,
                                         **kwargs)
        return params * factors, rho * out, info
    if balanced and lmi.kind == "dag" and len(lmi.qcs) > 1:
        # balanced (measured, from the anchor in 100 s: resnet_2b 1222 against 2322 unscaled,
        # which L-BFGS-B could not leave; the three small residual nets
        # of tests/test_residual.py 7.4583 / 9.0831 / 11.8382 against 7.5038 / 9.1002 /
        # 11.8382 unbalanced), then polished in the original coordinates with what is left
        t0 = time.perf_counter()
        if kwargs.get("time_limit") is not None and lmi.order > LARGE_DAG_ORDER:
            # a few dozen evaluations fit the time: from mu = 1e-3 rho (resnet_2b in 300 s:
            # 319.5 against 440.6 from 1e-2, whose smoothed optimum it never left)
            kwargs["rel_mu"] = from_large_start(kwargs.get("rel_mu", REL_MU))
        scaled, factors, out = balance_dag(lmi)
        params, rho, info = minimize_rho(scaled, np.asarray(start) * factors, balanced=False,
                                         **kwargs)
        params, rho = params / factors, rho * out
        limit = kwargs.pop("time_limit", None)
        spent = time.perf_counter() - t0
        left = None if limit is None else limit - spent
        # the polish costs one rho* before its first step: only with room for a few steps
        step = spent / (info.get("evaluations", 0) + 1)
        if math.isfinite(rho) and (left is None or left > 3.0 * step):
            mus = kwargs.get("rel_mu", REL_MU)
            kwargs["rel_mu"] = tuple(m for m in mus if m <= 1e-6) or mus[-1:]
            p2, rho2, _ = minimize_rho(lmi, params, balanced=False, time_limit=left, **kwargs)
            if rho2 < rho:
                params, rho = p2, rho2
        return params, rho, info
    if max(lmi.sizes) <= SMALL_BLOCK:
        with blas_threads(1):
            return _minimize_rho(lmi, start, **kwargs)
    return _minimize_rho(lmi, start, **kwargs)


def scale_search(rho_star, t: np.ndarray, bounds: tuple[float, float],
                 evaluations: int = 40) -> tuple[float, float]:
    """``(log rho*(c t), log c)`` at the best common scale ``c`` of the multipliers ``t``: a
    bounded scalar search over ``log c`` in ``bounds`` (``rho*`` is homogeneous only up to
    the output term, so the scale matters); infeasible scales count as ``log rho = 1e3``."""
    import scipy.optimize

    def f(logc):
        rho = rho_star(math.exp(logc) * t)
        return math.log(rho) if math.isfinite(rho) and rho > 0 else 1e3

    res = scipy.optimize.minimize_scalar(f, bounds=bounds, method="bounded",
                                         options={"xatol": 1e-2, "maxiter": evaluations})
    return float(res.fun), float(res.x)


def balance_dag(lmi):
    """A residual network's LMI rescaled to unit-norm maps (§2's balancing, for any DAG):
    node ``k``'s output scaled by ``s_k`` (a power of two, ``s_0 = 1``, ``s_k ~ ||[W_kj
    s_j]_j||``) is the congruence ``D M D``, ``D = blkdiag(s_k I)``: the LMI of the network
    with ``W'_kj = W_kj s_j / s_k`` and ``C' = C D``, multipliers ``t'_k = s_k^2 t_k``, the same
    ``rho``. Dividing it by ``c^2 ~ ||C D||^2`` makes the output map unit-norm too:
    ``rho' = rho / c^2``, ``t'_k = s_k^2 t_k / c^2``. Returns ``(scaled lmi, per-parameter
    factor s_k^2 / c^2, c^2)``; for solvers only (the certificate is on the original
    weights)."""
    from dataclasses import replace

    from ..ir.linear import Dense, power_iteration

    offs = lmi.offsets
    s = np.ones(len(lmi.sizes))
    cols = np.ones(lmi.order)
    pres = []
    for k, v in enumerate(lmi.pres, start=1):
        scaled = v * cols
        norm = power_iteration(Dense(scaled), iters=30, tol=1e-3)
        s[k] = 2.0 ** round(math.log2(norm)) if norm > 0 and math.isfinite(norm) else 1.0
        pres.append(scaled / s[k])
        cols[offs[k]:offs[k + 1]] = s[k]
    out = lmi.out * cols
    norm = power_iteration(Dense(out), iters=30, tol=1e-3)
    c = 2.0 ** round(math.log2(norm)) if norm > 0 and math.isfinite(norm) else 1.0
    scaled = replace(lmi, pres=tuple(pres), pre_radii=(None,) * len(pres), out=out / c,
                     out_radius=None)
    factors = np.concatenate([np.full(qc.num_params(), s[k] ** 2 / c ** 2)
                              for k, qc in enumerate(lmi.qcs, start=1)])
    return scaled, factors, c ** 2


#: The smoothing schedule, mu / rho.
REL_MU = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9)
#: Residual LMIs above this order, solved with a time limit, start at LARGE_DAG_MU (so do
#: dual-started conv chains: :func:`lipverify.methods.pipeline.run`).
LARGE_DAG_ORDER = 3000
LARGE_DAG_MU = 1e-3


def from_large_start(mus: tuple[float, ...]) -> tuple[float, ...]:
    """The smoothing schedule ``mus`` from :data:`LARGE_DAG_MU` on (its last stage if none
    is that small): where only a few dozen evaluations fit the time limit."""
    return tuple(m for m in mus if m <= LARGE_DAG_MU) or mus[-1:]


def _minimize_rho(
    lmi: ChainLMI,
    start,
    *,
    rel_mu: tuple[float, ...] = REL_MU,
    max_iter: int = 500,
    time_limit: float | None = None,
):
    """Minimise ``rho*`` by L-BFGS-B on ``F_mu`` with decreasing ``mu``.

    Returns ``(best_params, best_rho, info)``; ``best_rho`` is the exact ``rho*`` of the
    best iterate seen (not the smoothed value), ``inf`` when ``start`` has no finite ``rho*``
    (``info["infeasible_start"]``: nothing to descend from).
    """
    import scipy.optimize  # lazily: listing methods stays fast

    soft = lmi.soft_rho
    x = lmi.project(start)
    rho0 = lmi.rho_star(x)
    if not math.isfinite(rho0):  # no descent from outside the domain: the caller keeps its
        return x, math.inf, {"evaluations": 0, "stages": 0, "timed_out": False,  # certified start
                             "infeasible_start": True}
    best = {"x": x.copy(), "rho": rho0}
    deadline = None if time_limit is None else time.perf_counter() + time_limit
    bounds = [(lo, None) for qc in lmi.qcs for lo in qc.lower_bounds()]
    evals = 0
    stages = 0
    timed_out = False
    last = 0.0  # seconds of the last evaluation
    for rel in rel_mu:
        mu = rel * best["rho"]
        scale = max(best["rho"], 1e-300)

        def fun(p, mu=mu, scale=scale):
            nonlocal evals, last
            evals += 1
            now = time.perf_counter()
            if deadline is not None and now + last > deadline:  # it would end past it
                raise TimeoutError
            rho, value, g = soft(p, mu)
            last = time.perf_counter() - now
            if g is None:
                return 1e3, np.zeros_like(p)
            if rho < best["rho"]:
                best["x"], best["rho"] = p.copy(), rho
            return value / scale, g / scale

        try:
            res = scipy.optimize.minimize(
                fun,
                best["x"],
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={"maxiter": max_iter, "ftol": 1e-12, "gtol": 1e-12, "maxcor": 20},
            )
            del res
        except TimeoutError:
            timed_out = True
            break
        stages += 1
    return best["x"], best["rho"], {"evaluations": evals, "stages": stages, "timed_out": timed_out,
                                    "evaluation_seconds": round(last, 3)}
