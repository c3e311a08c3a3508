"""A-posteriori certificates in IEEE float64 (FORMULATIONS.md §8, §6.2).

:func:`certify_pd` is the single gate: Rump's Cholesky test of a shifted
matrix. Everything reported as certified passes through it (or through exact
outward-rounded arithmetic, for the l-infinity row sums).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg

from ..numerics import UNIT_ROUNDOFF as U
from ..numerics import gamma, lambda_max, power_of_two_scale, round_down, round_up

ETA = 2.0**-1074


def rump_shift(a: np.ndarray) -> float:
    """Rump's constant ``c`` of §8 (BIT 2006, Cor. 2.4) for symmetric ``a`` of order N."""
    n = a.shape[0]
    d = np.diag(a)
    k = (n + 1) * U
    tr = math.fsum(d.tolist())
    c = k / (1.0 - 2.0 * k) * tr + 4.0 * ETA * n * (2.0 * (n + 1) + float(d.max()))
    return c * (1.0 + 4.0 * U) + ETA  # round the computation of c itself upward


def certify_pd(a: np.ndarray, radius: float | np.ndarray = 0.0,
               overwrite: bool = False) -> bool:
    """True only if every symmetric matrix near ``a`` is positive definite (§8 steps 6-7).

    ``a`` is read from its lower triangle. ``radius`` is either a scalar bound on the row
    sums of ``|a - exact|``, or the entrywise radius matrix itself; in the latter case the
    matrix is first equilibrated by an exact power-of-two congruence ``D a D`` (no rounding:
    ``D a D > 0`` iff ``a > 0``), so badly scaled LMIs (rho ~ 1e14) still certify.
    ``overwrite``: ``a`` and ``radius`` may be used as work space (no copy of order N).
    """
    a = np.asarray(a, dtype=np.float64)
    if not (overwrite and a.flags.c_contiguous and a.flags.writeable):
        a = np.array(a, dtype=np.float64, order="C")
    _mirror_lower(a)
    d = np.diag(a)
    if not np.isfinite(a).all() or (d < 0).any():
        return False
    if isinstance(radius, np.ndarray):
        rad = np.asarray(radius, dtype=np.float64)
        if not (overwrite and rad.flags.writeable and rad.shape == a.shape):
            rad = np.array(np.broadcast_to(rad, a.shape), dtype=np.float64)
        scale = np.ones_like(d)
        pos = d > 0
        scale[pos] = np.exp2(-np.floor(np.log2(np.sqrt(d[pos]))))
        if _scales_exactly(a, rad, scale):  # then D a D and D rad D, in place
            _congruence(a, scale)
            _congruence(rad, scale)
        r = float(rad.sum(axis=1).max()) * (1.0 + a.shape[0] * U)
        d = np.diag(a)
    else:
        r = float(radius)
    shift = rump_shift(a) + r
    np.fill_diagonal(a, np.nextafter(d - shift, -np.inf))
    try:  # a is symmetric and C-ordered: its transpose is the same matrix, Fortran-ordered
        scipy.linalg.cholesky(a.T, lower=True, check_finite=False, overwrite_a=True)
    except scipy.linalg.LinAlgError:
        return False
    return True


#: Rows per panel of the in-place passes of :func:`certify_pd`.
PANEL = 512


def _mirror_lower(a: np.ndarray) -> None:
    """``a``'s upper triangle replaced by its lower one, in place, panel by panel."""
    n = a.shape[0]
    for j in range(0, n, PANEL):
        e = min(j + PANEL, n)
        a[:j, j:e] = a[j:e, :j].T
        blk = a[j:e, j:e]
        a[j:e, j:e] = np.tril(blk) + np.tril(blk, -1).T


def _scales_exactly(a: np.ndarray, rad: np.ndarray, scale: np.ndarray) -> bool:
    """Whether ``D a D`` and ``D rad D`` (``D = diag(scale)``, powers of two) are exact: every
    product finite, no nonzero one below ``2^-1000`` and none flushed to zero."""
    tiny = 2.0**-1000
    for j in range(0, a.shape[0], PANEL):
        outer = scale[j:j + PANEL, None] * scale[None, :]
        for x in (a[j:j + PANEL], rad[j:j + PANEL]):
            xs = x * outer
            if not np.isfinite(xs).all() or ((xs != 0) & (np.abs(xs) < tiny)).any() or \
                    ((xs == 0) & (x != 0)).any():
                return False
    return True


def _congruence(x: np.ndarray, scale: np.ndarray) -> None:
    """``x <- D x D`` in place, with the products of :func:`_scales_exactly`."""
    for j in range(0, x.shape[0], PANEL):
        x[j:j + PANEL] *= scale[j:j + PANEL, None] * scale[None, :]


def certified_spectral_norm(w: np.ndarray, radius: np.ndarray | None = None) -> tuple[float, float]:
    """Certified upper bound on ``||W_exact||_2`` where ``|W_exact - w| <= radius`` entrywise.

    Returns ``(upper, estimate)``. The test is ``s^2 I - G > 0`` with ``G`` the Gram matrix
    of the smaller side, certified by :func:`certify_pd` with the assembly radius of §8.
    ``w`` and ``radius`` are first divided by a power of two ``p`` bringing their largest
    entry near 1 (exact when no entry falls below the normal range, which is checked), so
    weights of 1e200 or 1e-200 neither overflow nor underflow in the Gram matrix; the bound
    is ``p`` times the scaled one (again exact).

    >>> import numpy as np
    >>> up, est = certified_spectral_norm(np.array([[3.0, 0.0], [0.0, 4.0]]))
    >>> 4.0 <= up <= 4.0 * (1 + 1e-10)
    True
    >>> up, _ = certified_spectral_norm(np.array([[3e200, 0.0], [0.0, 4e200]]))
    >>> 4e200 <= up <= 4e200 * (1 + 1e-10)
    True
    """
    w = np.asarray(w, dtype=np.float64)
    both = w if radius is None else np.concatenate([np.abs(w).ravel(), np.ravel(radius)])
    scale = power_of_two_scale(both) if w.size else 1.0
    if scale != 1.0 and np.isfinite(both).all():
        ws = w / scale
        rs = None if radius is None else np.asarray(radius, dtype=np.float64) / scale
        tiny = np.finfo(np.float64).tiny
        lost = ((w != 0) & (np.abs(ws) < tiny)).any() or (
            rs is not None and ((np.asarray(radius) != 0) & (rs < tiny)).any())
        if not lost:  # every division exact: ||W|| = scale ||W / scale||
            up, est = _certified_spectral_norm(ws, rs)
            return round_up(up * scale), est * scale
    return _certified_spectral_norm(w, radius)


def _certified_spectral_norm(w: np.ndarray, radius: np.ndarray | None) -> tuple[float, float]:
    if w.size == 0 or not np.any(w):
        extra = float(np.linalg.norm(radius)) if radius is not None else 0.0
        return round_up(extra), 0.0
    if w.shape[0] > w.shape[1]:
        w = w.T
        radius = None if radius is None else radius.T
    g = w @ w.T  # order m = min side; inner dimension n
    inner = w.shape[1]
    est = math.sqrt(max(lambda_max(g, "spectral norm (Gram matrix)"), 0.0))
    abs_w = np.abs(w)
    g_abs = abs_w @ abs_w.T
    rel = 1e-12
    for _ in range(40):
        s = round_up(est * (1.0 + rel)) if est > 0 else rel
        s2 = round_down(s * s)
        a = -g
        a[np.diag_indices_from(a)] += s2
        # |fl(s2 I - fl(W W^T)) - (s2 I - W W^T)| <= gamma_{n+2} (|W||W|^T + s2 I), x1.01 (§8)
        r = gamma(inner + 2) * 1.01 * (g_abs.sum(axis=1) + s2)
        if certify_pd(a, float(r.max()) * (1.0 + 4.0 * U)):
            break
        rel *= 4.0
    else:  # pragma: no cover - would need a pathological matrix
        return math.inf, est
    if radius is not None:
        s = round_up(s + round_up(float(np.linalg.norm(radius)) * (1.0 + inner * U)))
    return s, est


def certified_inf_norm(w: np.ndarray, radius: np.ndarray | None = None) -> float:
    """Certified ``||W_exact||_inf`` (max absolute row sum), rounded outward."""
    abs_w = np.abs(np.asarray(w, dtype=np.float64))
    if radius is not None:
        abs_w = abs_w + radius
    rows = abs_w.sum(axis=1)
    return round_up(float(rows.max()) * (1.0 + gamma(abs_w.shape[1] + 2))) if rows.size else 0.0


def certified_gershgorin_norm(w: np.ndarray, radius: np.ndarray | None = None) -> float:
    """§6.3: ``min(sqrt(||W||_1 ||W||_inf), sqrt(max_i sum_j |W^T W|_ij))``, rounded outward."""
    abs_w = np.abs(np.asarray(w, dtype=np.float64))
    if radius is not None:
        abs_w = abs_w + radius
    m, n = abs_w.shape
    growth = 1.0 + gamma(m + n + 4)
    one = float(abs_w.sum(axis=0).max()) * growth
    inf = float(abs_w.sum(axis=1).max()) * growth
    small = abs_w if m <= n else abs_w.T
    gram = small @ small.T  # |W^T W|_ij <= (|W|^T |W|)_ij: sum of nonnegative terms
    row = float(gram.sum(axis=1).max()) * (1.0 + gamma(m + n + 4)) ** 2
    return round_up(math.sqrt(round_up(min(one * inf, row)) * growth))
