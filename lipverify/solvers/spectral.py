"""Minimising rho* of the per-frequency LipSDP (:mod:`lipverify.lmi.spectral`), and its dual.

The solver is §2's smooth route: ``rho*(t)`` is convex in the channel multipliers, its soft
maximum ``F_mu = mu log tr exp(H(t) / mu)`` is a smooth upper approximation, and L-BFGS-B
descends it with ``mu`` decreasing, on the balanced LMI (every ``P_k`` of unit norm).
Gradients come from torch's autograd through the per-frequency Schur recursion.

:func:`dual_bound` measures the gap: any Hermitian ``Z >= 0`` (in DFT coordinates) with
``tr(Z E_0) = 1`` and ``tr(Z A_i) <= 0`` for every multiplier's matrix ``A_i`` gives
``rho_opt >= tr(Z U U^H)`` (weak duality: ``M >= 0`` implies ``0 <= tr(Z M) = rho -
tr(Z U U^H) + sum_i t_i tr(Z A_i)``). ``Z = Y X Y^H`` with ``Y`` the worst-case trajectories of
the top eigenvectors of ``H`` at the final multipliers, and the small ``X >= 0`` chosen by a
conic solve; weak duality holds for any such ``X``, so the bound is a true lower bound on the
formulation's optimum whatever the solve's accuracy, once its constraints are rechecked.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np

from ..lmi.spectral import SpectralLMI

#: Smoothing continuation of the per-layer warm start: ``mu = rel * rho`` for each stage.
LAYER_MU = (1e-2, 1e-3, 1e-4)
#: ... and of the per-channel stage (repeated while it still gains).
CHANNEL_MU = (1e-3, 1e-4, 1e-5, 1e-6)
#: Share of the time limit the per-layer warm start may take.
LAYER_SHARE = 0.8
#: A channel cycle that gains less than this (relative) ends the solve.
MIN_GAIN = 1e-6


def minimize(lmi: SpectralLMI, start=None, *, time_limit: float | None = None,
             max_iter: int = 500) -> tuple[np.ndarray, float, dict]:
    """``(t, rho*(t), info)`` minimising rho* on the balanced LMI, in ``log t``.

    First one multiplier per layer (a few dozen variables, from the anchor), then one per
    channel from there, in cycles of decreasing ``mu`` while a cycle still gains. Measured on
    the 32-channel, depth-16 chain of the conv sweep (``results/conv_sweep.py``), 200 s:
    per-layer first 4.446e6 in 87 s; per channel from the anchor 8.44e6 (log) and 1.25e7
    (linear ``t`` with bounds) in 200 s. From the forward start, 200 s, by the share of the
    time the per-layer stage may take: 4.195e5 (0), 2.540e5 (0.3), 1.996e5 (0.6), 1.864e5
    (0.85): on deep chains the per-layer stage gains most; on shallow ones it converges
    early and the channel stage gets the rest."""
    scaled, factors, out = lmi.balanced()
    deadline = None if time_limit is None else time.perf_counter() + time_limit
    info = {"evaluations": 0, "stages": 0, "timed_out": False}
    anchor = _forward_start(scaled) if start is None else None
    anchor = scaled.anchor() if anchor is None else anchor
    x = anchor if start is None else np.maximum(np.asarray(start) / factors, 0.0)
    rho0 = scaled.rho_star(x)
    if not math.isfinite(rho0) or not (x > 0).all():
        x, rho0 = anchor, scaled.rho_star(anchor)
    best = {"x": x.copy(), "rho": rho0}
    sizes = scaled.channels[1:]
    layer_of = np.repeat(np.arange(len(sizes)), sizes)

    def run(mus, x0, per_layer, until):
        for rel in mus:
            if _descend(scaled, best, info, rel, x0, per_layer, layer_of, until, max_iter):
                return True
            x0 = best["x"]
            if per_layer:  # the best point is layer-uniform: one value per layer
                x0 = np.array([x0[layer_of == k].mean() for k in range(len(sizes))])
        return False

    try:
        if start is None:
            until = None if deadline is None else \
                time.perf_counter() + LAYER_SHARE * time_limit
            layer = np.array([x[layer_of == k].mean() for k in range(len(sizes))])
            run(LAYER_MU, layer, True, until)
        while True:
            before = best["rho"]
            if run(CHANNEL_MU, best["x"], False, deadline):
                info["timed_out"] = True
                break
            if not best["rho"] < before * (1.0 - MIN_GAIN):
                break
    except _Timeout:
        info["timed_out"] = True
    return best["x"] * factors, best["rho"] * out, info


def _forward_start(lmi: SpectralLMI) -> np.ndarray | None:
    """ECLipsE-Fast's layer multipliers (:meth:`SpectralLMI.forward_start`) at their best
    common scale (a bounded search on ``log c`` of ``rho*(c t)``), if better than the anchor."""
    import scipy.optimize

    t = lmi.forward_start()
    if t is None:
        return None
    anchor = lmi.anchor()
    base = float(np.exp(np.mean(np.log(anchor / t))))  # the anchor's scale: feasible side

    def f(logc):
        rho = lmi.rho_star(np.exp(logc) * base * t)
        return math.log(rho) if math.isfinite(rho) and rho > 0 else 1e3

    res = scipy.optimize.minimize_scalar(f, bounds=(-20.0, 20.0), method="bounded",
                                         options={"xatol": 1e-2, "maxiter": 40})
    if not res.fun < math.log(max(lmi.rho_star(anchor), 1e-300)):
        return None
    return np.exp(res.x) * base * t


class _Timeout(Exception):
    pass


def _descend(lmi, best, info, rel, x0, per_layer, layer_of, until, max_iter) -> bool:
    """One L-BFGS run on ``F_mu``, ``mu = rel * rho``, in ``log t`` (per layer: one ``log t``
    per layer, broadcast to its channels). True if it stopped at ``until``."""
    import scipy.optimize

    mu, scale = rel * best["rho"], best["rho"]

    def fun(p):
        if until is not None and time.perf_counter() > until:
            raise _Timeout
        info["evaluations"] += 1
        t = np.exp(p[layer_of] if per_layer else p)
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

    p0 = np.log(np.asarray(x0, dtype=np.float64))
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


def repaired_bound(lmi: SpectralLMI, params, rank: int = 16) -> float | None:
    """A lower bound on the formulation's optimum from trajectories made dual feasible.

    For weights ``w_j >= 0`` on the top trajectories ``z_j``, ``Z = sum_j w_j z_j z_j^H`` is
    dual feasible when every channel's constraint ``tr(Z A_i) <= 0`` holds (module
    docstring). Going forward through the layers, each channel of ``x_k`` is scaled by the
    ``s`` closest to 1 with ``2 s^2 X - 2 (a+b) s R + 2 a b V <= 0`` (``X = sum w |x|^2``,
    ``R = sum w Re <x, v>``, ``V = sum w |v|^2``, ``v = P_k x_{k-1}`` of the repaired
    previous layer; ``s = 0`` always qualifies as ``a b <= 0``), so the repaired ``Z`` is
    feasible exactly and ``rho_opt >= tr(Z U U^H) / tr(Z E_0)``. Unlike :func:`dual_bound` it
    needs no converged point; it is the best over a few weightings (each top trajectory
    alone, and the top 2, 4, ... equally)."""
    traj = lmi.trajectories(params, rank)
    if traj is None:
        return None
    _, xs = traj
    r = xs[0].shape[2]
    weightings = [np.eye(r)[j] for j in range(r - 1, max(r - 5, -1), -1)]
    k = 2
    while k <= r:
        w = np.zeros(r)
        w[-k:] = 1.0 / k
        weightings.append(w)
        k *= 2
    best = None
    for w in weightings:
        x = xs[0]
        energy_in = float((w * (np.abs(x) ** 2).sum(axis=(0, 1))).sum())
        if not energy_in > 0:
            continue
        for k, tr in enumerate(lmi.transfers):
            a, b = lmi.slopes[k]
            v = tr.value @ x
            xk = xs[k + 1]
            big_x = (w * (np.abs(xk) ** 2).sum(axis=0)).sum(axis=1)
            big_r = (w * (xk.conj() * v).real.sum(axis=0)).sum(axis=1)
            big_v = (w * (np.abs(v) ** 2).sum(axis=0)).sum(axis=1)
            x = xk * _scales(big_x, big_r, big_v, a, b)[None, :, None]
        out = np.einsum("fcm,fcj->mj", lmi.output.value.conj(), x)
        value = float((w * (np.abs(out) ** 2).sum(axis=0)).sum()) / energy_in
        best = value if best is None else max(best, value)
    return best


def _scales(big_x, big_r, big_v, a, b) -> np.ndarray:
    """Per channel, the ``s`` closest to 1 with ``s^2 X - (a+b) s R + a b V <= 0``, shrunk
    by 1e-12 toward the feasible interior to absorb rounding."""
    s = np.zeros_like(big_x)
    for i, (x, r, v) in enumerate(zip(big_x, big_r, big_v)):
        if x <= 0:
            continue
        disc = ((a + b) * r) ** 2 - 4.0 * x * a * b * v
        if disc < 0:
            continue
        lo = ((a + b) * r - math.sqrt(disc)) / (2.0 * x)
        hi = ((a + b) * r + math.sqrt(disc)) / (2.0 * x)
        if hi < 0 and lo < 0:
            continue
        lo, hi = max(lo, 0.0), max(hi, 0.0)
        s[i] = min(max(1.0, lo), hi) * (1.0 - 1e-12)
    return s
