"""Minimising rho* of the per-frequency LipSDP (:mod:`lipverify.lmi.spectral`), and its dual.

The solver is §2's smooth route: ``rho*(t)`` is convex in the channel multipliers, its soft
maximum ``F_mu = mu log tr exp(H(t) / mu)`` is a smooth upper approximation, and L-BFGS-B
descends it with ``mu`` decreasing, on the balanced LMI (every ``P_k`` of unit norm).
Gradients come from the envelope formula (:meth:`SpectralLMI.evaluate`).

:func:`dual_bound` measures the gap: any Hermitian ``Z >= 0`` (in DFT coordinates) with
``tr(Z E_0) = 1`` and ``tr(Z A_i) <= 0`` for every multiplier's matrix ``A_i`` gives
``rho_opt >= tr(Z U U^H)`` (weak duality: ``M >= 0`` implies ``0 <= tr(Z M) = rho -
tr(Z U U^H) + sum_i t_i tr(Z A_i)``). ``Z = Y X Y^H`` with ``Y`` the worst-case trajectories of
the top eigenvectors of ``H`` at the final multipliers, and the small ``X >= 0`` chosen by a
conic solve; weak duality holds for any such ``X``, so the bound is a true lower bound on the
formulation's optimum whatever the solve's accuracy, once its constraints are rechecked.
It is tight where the primal has converged. :func:`ascent_bound` needs no primal point: it
ascends over trajectories that satisfy every channel's constraint by construction, and is
what measures the gap on deep chains the primal has not converged on.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np

from ..lmi.spectral import SpectralLMI
from .smooth_rho import scale_search
from .trajectory import ascend

#: Smoothing continuation of the per-layer warm start: ``mu = rel * rho`` for each stage.
LAYER_MU = (1e-2, 1e-3, 1e-4)
#: ... and of the per-channel stage (repeated while it still gains).
CHANNEL_MU = (1e-3, 1e-4, 1e-5, 1e-6)
#: Share of the time limit the per-layer warm start may take.
LAYER_SHARE = 0.8
#: A channel cycle that gains less than this (relative) ends the solve.
MIN_GAIN = 1e-6
#: Share of the time limit the dual start's trajectory ascent may take.
ASCENT_SHARE = 0.15
#: Adam steps (at most) and step size of :func:`trajectory_ascent`.
ASCENT_STEPS = 3000
ASCENT_RATE = 0.05


def minimize(lmi: SpectralLMI, start=None, *, time_limit: float | None = None,
             max_iter: int = 500, dual_start: bool = True) -> tuple[np.ndarray, float, dict]:
    """``(t, rho*(t), info)`` minimising rho* on the balanced LMI, in ``log t``.

    1. A start: with ``dual_start``, :func:`trajectory_ascent` (at most ``ASCENT_SHARE`` of
       the time) and the multipliers its trajectory's complementary slackness implies
       (:func:`kkt_multipliers`); otherwise, or if that fails, ECLipsE-Fast's layer
       multipliers (:meth:`SpectralLMI.forward_start`); each at its best common scale.
       ``info["dual"]`` keeps the ascent's lower bound on the optimum.
    2. One scale per layer on the start's channel profile (a few dozen variables).
    3. One multiplier per channel, in cycles of decreasing ``mu`` while a cycle still gains.

    Measured on the 32-channel, depth-16 chain of the conv sweep (``results/conv_sweep.py``):
    from the forward start, stages 2-3 in 250 s reach 1.869e5; from the dual start 1.4080e5
    in 250 s, against the ascent's lower bound 1.4021e5. On 8 x 16, 200 s: 1.732e5 from the
    forward start, 65396 from the dual start (its raw KKT multipliers have no finite rho*
    at any common scale; :meth:`SpectralLMI.forward_repair` restores the pivots)."""
    scaled, factors, out = lmi.balanced()
    now = time.perf_counter()
    deadline = None if time_limit is None else now + time_limit
    info = {"evaluations": 0, "stages": 0, "timed_out": False, "dual": None, "start": None}
    x = None
    if start is not None:
        x = np.maximum(np.asarray(start) / factors, 0.0)
        x = x if (x > 0).all() and math.isfinite(scaled.rho_star(x)) else None
    elif dual_start:
        until = None if deadline is None else now + ASCENT_SHARE * time_limit
        found = trajectory_ascent(scaled, until=until)
        if found is not None:
            info["dual"] = found[0] * out
            kkt = kkt_multipliers(scaled, found[1])
            x = None if kkt is None else _best_scale(scaled, scaled.forward_repair(kkt))
            info["start"] = None if x is None else "dual"
    if x is None:
        forward = scaled.forward_start()
        x = None if forward is None else _best_scale(scaled, forward)
        info["start"] = "forward" if x is not None else "anchor"
        x = scaled.anchor() if x is None else x
    best = {"x": x.copy(), "rho": scaled.rho_star(x)}
    sizes = scaled.channels[1:]
    layer_of = np.repeat(np.arange(len(sizes)), sizes)

    def run(mus, per_layer, until):
        for rel in mus:
            if _descend(scaled, best, info, rel, per_layer, layer_of, until, max_iter):
                return True
        return False

    try:
        if start is None:
            until = None if deadline is None else \
                time.perf_counter() + LAYER_SHARE * (deadline - time.perf_counter())
            run(LAYER_MU, True, until)
        while True:
            before = best["rho"]
            if run(CHANNEL_MU, False, deadline):
                info["timed_out"] = True
                break
            if not best["rho"] < before * (1.0 - MIN_GAIN):
                break
    except _Timeout:
        info["timed_out"] = True
    return best["x"] * factors, best["rho"] * out, info


def kkt_multipliers(lmi: SpectralLMI, xs: list[np.ndarray]) -> np.ndarray | None:
    """The multipliers that complementary slackness pairs with the trajectory ``xs``
    (``x_0 ... x_d``, DFT coordinates), by least squares channel by channel; None if not
    finite and positive somewhere.

    **Derivation.** At an optimal pair, ``M(rho, t) z = 0`` for the dual trajectory ``z``.
    With ``p_k = P_k x_{k-1}``, ``l_k = 2 x_k - (a_k + b_k) p_k`` and the blocks of the
    module docstring of :mod:`lipverify.lmi.spectral`, block row ``d`` reads ``T_d l_d = U
    sum_w U_w^H x_d(w)`` and block row ``k < d`` reads ``T_k l_k = P_{k+1}^H T_{k+1} ((a_{k+1}
    + b_{k+1}) x_{k+1} - 2 a_{k+1} b_{k+1} p_{k+1})``. Solving these from the output back,
    each channel's ``t`` is the real least-squares fit ``Re<l, r> / |l|^2`` over its
    frequencies; multipliers below ``1e-8`` of the largest are raised to it."""
    rhs = lmi.output.value @ np.einsum("fcm,fcj->mj", lmi.output.value.conj(), xs[-1])[None]
    out = [None] * lmi.depth
    for k in range(lmi.depth, 0, -1):
        a, b = lmi.slopes[k - 1]
        p = lmi.transfers[k - 1].value @ xs[k - 1]
        lhs = 2.0 * xs[k] - (a + b) * p
        den = (np.abs(lhs) ** 2).sum(axis=(0, 2))
        out[k - 1] = (lhs.conj() * rhs).real.sum(axis=(0, 2)) / np.where(den > 0, den, 1.0)
        if k > 1:
            rhs = lmi.transfers[k - 1].value.conj().transpose(0, 2, 1) @ (
                out[k - 1][None, :, None] * ((a + b) * xs[k] - 2.0 * a * b * p))
    t = np.concatenate(out)
    top = float(t.max(initial=0.0))
    if not np.isfinite(t).all() or not top > 0:
        return None
    return np.maximum(t, 1e-8 * top)


def _best_scale(lmi: SpectralLMI, t: np.ndarray | None) -> np.ndarray | None:
    """``c t`` at the best common scale (a bounded search on ``log c`` of ``rho*(c t)``,
    from the anchor's scale), if better than the anchor; else None."""
    if t is None:
        return None
    anchor = lmi.anchor()
    base = float(np.mean(np.log(anchor / t)))  # the anchor's scale: feasible side
    log_rho, log_c = scale_search(lmi.rho_star, t, (base - 20.0, base + 20.0))
    if not log_rho < math.log(max(lmi.rho_star(anchor), 1e-300)):
        return None
    return math.exp(log_c) * t


class _Timeout(Exception):
    pass


def _descend(lmi, best, info, rel, per_layer, layer_of, until, max_iter) -> bool:
    """One L-BFGS run on ``F_mu``, ``mu = rel * rho``, from the best point, in ``log t``
    (per layer: one log scale per layer on the best point's channel profile). True if it
    stopped at ``until``."""
    import scipy.optimize

    mu, scale, base = rel * best["rho"], best["rho"], best["x"].copy()

    def fun(p):
        if until is not None and time.perf_counter() > until:
            raise _Timeout
        info["evaluations"] += 1
        t = base * np.exp(p[layer_of]) if per_layer else np.exp(p)
        res = lmi.evaluate(t, mu, grad=True)
        if res is None:
            return 1e3, np.zeros_like(p)
        rho, value, g = res
        if rho < best["rho"]:
            best["x"], best["rho"] = t.copy(), rho
        g = g * t
        if per_layer:
            g = np.bincount(layer_of, weights=g, minlength=p.size)
        return value / scale, g / scale

    p0 = np.zeros(int(layer_of[-1]) + 1) if per_layer else np.log(base)
    try:
        scipy.optimize.minimize(fun, p0, jac=True, method="L-BFGS-B",
                                options={"maxiter": max_iter, "ftol": 1e-13, "gtol": 1e-11,
                                         "maxcor": 30})
    except _Timeout:
        return True
    info["stages"] += 1
    return False


def dual_bound(lmi: SpectralLMI, params, rank: int = 12) -> float | None:
    """A lower bound on the formulation's optimal ``rho`` (module docstring), or None when
    the trajectories at ``params`` admit no dual-feasible combination.

    With ``G_a = Y^H A_a Y`` for the trajectories ``Y`` (``A_0 = E_0``, the output term
    ``A_out = U U^H``, and each multiplier's ``A_i``), every Hermitian ``X >= 0`` with
    ``tr(X G_0) = 1`` and ``tr(X G_i) <= 0`` gives ``rho_opt >= tr(X G_out)``. The best ``X``
    is a small SDP (order ``rank``); its constraints are re-evaluated after the solve and the
    bound kept only if they hold (up to a relative 1e-9 charged against the bound)."""
    import cvxpy as cp

    traj = lmi.trajectories(params, rank)
    if traj is None:
        return None
    _, xs = traj
    r = xs[0].shape[2]
    g0 = np.einsum("fcj,fcl->jl", xs[0].conj(), xs[0])
    ud = np.einsum("fcm,fcj->mj", lmi.output.value.conj(), xs[-1])  # U^H z_j
    g_out = ud.conj().T @ ud
    rows = []
    for k in range(1, lmi.depth + 1):
        a, b = lmi.slopes[k - 1]
        x = xs[k]
        p = lmi.transfers[k - 1].value @ xs[k - 1]
        g = 2.0 * np.einsum("fcj,fcl->cjl", x.conj(), x)
        cross = np.einsum("fcj,fcl->cjl", p.conj(), x)
        g -= (a + b) * (cross + cross.conj().transpose(0, 2, 1))
        if a * b != 0.0:
            g += 2.0 * a * b * np.einsum("fcj,fcl->cjl", p.conj(), p)
        rows.append(g)
    gi = np.concatenate(rows)  # (n_params, r, r): tr(X G_i) = <G_i^T, X>
    xv = cp.Variable((r, r), hermitian=True)
    coef = gi.reshape(len(gi), r * r)  # row-major G_i = vec_F(G_i^T)
    scale = np.abs(coef).max(axis=1, keepdims=True)
    scale[scale == 0] = 1.0
    cons = [xv >> 0, cp.real(cp.trace(g0 @ xv)) == 1.0,
            cp.real((coef / scale) @ cp.vec(xv, order="F")) <= -1e-9]
    prob = cp.Problem(cp.Maximize(cp.real(cp.trace(g_out @ xv))), cons)
    try:
        with warnings.catch_warnings():  # "inaccurate" is judged below, on the constraints
            warnings.simplefilter("ignore")
            prob.solve(solver="CLARABEL")
    except (cp.error.SolverError, ValueError):
        return None
    if xv.value is None or prob.status not in ("optimal", "optimal_inaccurate"):
        return None
    xm = xv.value
    w, v = np.linalg.eigh(0.5 * (xm + xm.conj().T))
    xm = (v * np.maximum(w, 0.0)) @ v.conj().T  # PSD exactly up to rounding
    norm = float(np.real(np.trace(g0 @ xm)))
    if not norm > 0:
        return None
    xm = xm / norm
    viol = np.real(np.einsum("ijk,kj->i", gi, xm))
    value = float(np.real(np.trace(g_out @ xm)))
    if (viol > 1e-9 * max(value, 1e-300) / max(len(viol), 1)).any():
        return None
    return value


def ascent_bound(lmi: SpectralLMI, **options) -> float | None:
    """:func:`trajectory_ascent`'s lower bound on the formulation's optimum (None if none)."""
    found = trajectory_ascent(lmi, **options)
    return None if found is None else found[0]


def trajectory_ascent(lmi: SpectralLMI, *, rank: int = 1, steps: int = ASCENT_STEPS,
                      until: float | None = None, seed: int = 0
                      ) -> tuple[float, list[np.ndarray]] | None:
    """A lower bound on the formulation's optimum from trajectories feasible by construction,
    and those trajectories ``x_0 ... x_d`` (each ``(F, c_k, rank)``, DFT coordinates).

    **Derivation.** With ``m = (a+b)/2`` and ``r = (b-a)/2``, channel ``i``'s dual
    constraint ``tr(Z A_i) <= 0`` (module docstring) on ``Z = sum_j z_j z_j^H`` reads
    ``sum_j |x_j - m p_j|^2 <= r^2 sum_j |p_j|^2`` over the channel's DFT coordinates, with
    ``p_j = P_k x_{k-1, j}``: the slope QC summed over pixels, ``|x|^2 - (a+b) Re<x, p> + a b
    |p|^2 <= 0``, is this ball. So for *any* input ``x_0`` and directions ``u_k``, layer
    after layer and channel by channel ``x_k = m p + r s |p| u / |u|`` (``s = 1 - 1e-9``,
    norms over frequencies and ``j``) is dual feasible, and ``rho_opt >= sum_j |U^H
    z_j|^2 / sum_j |x_{0, j}|^2`` by weak duality. Adam ascends the log of that ratio over
    ``x_0`` and the ``u_k`` (torch autograd; nonconvex, so any iterate is a bound but the
    best is not guaranteed optimal). Unlike :func:`dual_bound` it needs no converged primal
    point: measured on the conv sweep's 16x8 chain, rank 1, 1000 steps (4 s), it reaches
    413.9 against the optimum 415.6; on 32x16, 2000 steps (35 s), 1.404e5, against the
    1.4080e5 the primal then reaches from it. Higher rank did not help there (8x16: 65357
    at ranks 1, 4 and 16). The final point is re-evaluated in numpy with every
    channel's constraint rechecked (None if one fails)."""
    import torch

    transfers = [torch.from_numpy(tr.value) for tr in lmi.transfers]
    out_h = torch.from_numpy(lmi.output.value).conj().transpose(1, 2)
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn((lmi.frequencies, n, rank), dtype=torch.complex128,
                          generator=gen).requires_grad_() for n in lmi.channels]

    def norm(x, dims=None):
        return torch.linalg.vector_norm(x, dim=dims)

    best_ps = ascend(params, lambda ps: _trajectory(lmi.slopes, transfers, out_h, ps, norm)[0],
                     steps=steps, until=until, rate=ASCENT_RATE)
    if best_ps is None:
        return None

    def norm_np(x, dims=None):
        return np.sqrt((np.abs(x) ** 2).sum(axis=dims))

    value, layers = _trajectory(lmi.slopes, [tr.value for tr in lmi.transfers],
                                lmi.output.value.conj().transpose(0, 2, 1), best_ps, norm_np)
    for (a, b), (x, p) in zip(lmi.slopes, layers):  # every channel's constraint, in float64
        q = (np.abs(x) ** 2).sum(axis=(0, 2)) - (a + b) * (x.conj() * p).real.sum(axis=(0, 2)) \
            + a * b * (np.abs(p) ** 2).sum(axis=(0, 2))
        if (q > 1e-12 * (np.abs(p) ** 2).sum(axis=(0, 2))).any():
            return None
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        return None
    return value, [best_ps[0]] + [x for x, _ in layers]


def _trajectory(slopes, transfers, out_h, params, norm):
    """:func:`ascent_bound`'s ratio ``|U^H x_d|^2 / |x_0|^2`` and each layer's ``(x_k, p_k)``
    for the input ``params[0]`` and directions ``params[1:]`` (numpy or torch, by ``norm``)."""
    x = params[0]
    energy_in = norm(x) ** 2
    layers = []
    for (a, b), tr, u in zip(slopes, transfers, params[1:]):
        p = tr @ x
        radius = (0.5 * (b - a) * (1.0 - 1e-9)) * norm(p, (0, 2)) / norm(u, (0, 2))
        x = 0.5 * (a + b) * p + radius[None, :, None] * u
        layers.append((x, p))
    return norm((out_h @ x).sum(0)) ** 2 / energy_in, layers
