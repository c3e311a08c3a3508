"""§8 for the per-frequency LipSDP of a conv chain (:mod:`lipverify.lmi.spectral`).

``M = blkdiag_w M_w - U U^H >= 0`` (the module's item 3) is proved in two steps, both on
transfer matrices computed from the exact float64 weights by direct summation with entrywise
radii (§7 "Rigour"), and after an exact power-of-two congruence ``D`` per channel (``D M D``
and ``D U``; ``U^H M^{-1} U`` is unchanged):

1. **Every frequency:** ``M_w >= mu_w I`` with ``mu_w > 0``, by Rump's shifted Cholesky
   (§8) on the real embedding ``[[Re, -Im], [Im, Re]]`` of ``M_w - mu_w I`` (the same
   eigenvalues, each twice) with the entrywise radius of the assembly.
2. **The output term (Woodbury):** ``M >= 0`` iff ``I_m - sum_w U_w^H M_w^{-1} U_w >= 0``.
   For any computed ``X_w`` let ``R_w = U_w - M_w X_w`` (exact; bounded from the computed
   residual, its rounding, and the radii of ``M_w`` and ``U_w``). Then
   ``U_w^H M_w^{-1} U_w = X_w^H U_w + R_w^H X_w + R_w^H M_w^{-1} R_w``, whose first two terms
   are within ``e_w`` of the computed ``herm(X_w^H U_w)`` in norm, and the third is at most
   ``||R_w||^2 / mu_w``. So ``I - sum_w herm(X_w^H U_w) - (sum_w e_w + ||R_w||^2/mu_w) I >= 0``,
   checked by Rump's test with the summation's radius, proves ``M >= 0``.

Frequencies come in conjugate pairs (``M_{-w} = conj M_w``, ``U_{-w} = conj U_w``: real
weights), so one of each pair is checked and its Woodbury term counted twice (``2 Re``).
"""

from __future__ import annotations

import math
import time

import numpy as np
import scipy.linalg

from ..lmi.spectral import SpectralLMI, half_frequencies
from ..numerics import UNIT_ROUNDOFF as U
from ..numerics import blas_threads, gamma, round_up
from .gate import Certificate
from .rump import certify_pd

#: Relative margins tried in turn by :func:`certify_spectral`.
MARGINS = (1e-9, 1e-7, 1e-5, 1e-3, 1e-1)


def _block_matrix(lmi: SpectralLMI, ts, rho: float, f: int) -> tuple[np.ndarray, np.ndarray]:
    """``fl(M_w)`` and an entrywise radius (real and imaginary parts) at frequency ``f``."""
    c = lmi.channels
    starts = np.concatenate([[0], np.cumsum(c)])
    n = int(starts[-1])
    m = np.zeros((n, n), dtype=np.complex128)
    r = np.zeros((n, n))
    sl = [slice(int(starts[k]), int(starts[k + 1])) for k in range(len(c))]
    m[sl[0], sl[0]] = rho * np.eye(c[0])
    for k in range(1, len(c)):
        tr = lmi.transfers[k - 1]
        p, rp = tr.value[f], tr.radius
        t = ts[k - 1]
        a, b = lmi.slopes[k - 1]
        m[sl[k], sl[k]] += np.diag(2.0 * t)  # exact
        coef = -(a + b) * t  # one rounding
        off = p.conj().T * coef[None, :]  # M_{k-1,k} = -(a+b) P^H T
        m[sl[k - 1], sl[k]] = off
        m[sl[k], sl[k - 1]] = off.conj().T
        roff = np.abs(coef)[None, :] * (rp.T + 3.0 * U * np.abs(p.conj().T)) * (1.0 + 4.0 * U)
        r[sl[k - 1], sl[k]] = roff
        r[sl[k], sl[k - 1]] = roff.T
        if a * b != 0.0:  # D_{k-1} += 2ab P^H T P
            gram = 2.0 * a * b * ((p.conj().T * t[None, :]) @ p)
            m[sl[k - 1], sl[k - 1]] += gram
            ap = np.abs(p) + math.sqrt(2.0) * rp
            big = (ap.T * t[None, :]) @ ap
            small = (np.abs(p).T * t[None, :]) @ np.abs(p)
            rg = 2.0 * abs(a * b) * ((big - small) + 2.0 * gamma(2 * c[k] + 6) * small)
            r[sl[k - 1], sl[k - 1]] += rg * 1.01 + 4.0 * U * np.abs(gram)
    return m, r


def _scaling(lmi: SpectralLMI, ts, rho: float) -> np.ndarray:
    """Exact power-of-two scales making the diagonal of ``D M D`` near one."""
    diag = np.concatenate([np.full(lmi.channels[0], rho), *(2.0 * t for t in ts)])
    out = np.ones_like(diag)
    pos = diag > 0
    out[pos] = np.exp2(-np.round(np.log2(np.sqrt(diag[pos]))))
    return out


def _embed(m: np.ndarray) -> np.ndarray:
    return np.block([[m.real, -m.imag], [m.imag, m.real]])


def check(lmi: SpectralLMI, params, rho: float) -> bool:
    """True only if ``M(rho, t) >= 0`` is proved for the exact weights (module docstring)."""
    t = np.asarray(params, dtype=np.float64)
    if not (np.isfinite(t).all() and (t >= 0).all() and math.isfinite(rho) and rho > 0):
        return False
    ts = lmi.split(t)
    scale = _scaling(lmi, ts, rho)
    n, mrows = lmi.order, lmi.rows
    last = slice(n - lmi.channels[-1], n)
    idx, mult = half_frequencies(lmi.torus)
    total = np.zeros((mrows, mrows))
    total_abs = np.zeros((mrows, mrows))
    slack = 0.0
    for f, k in zip(idx.tolist(), mult.tolist()):
        m, r = _block_matrix(lmi, ts, rho, f)
        m = m * scale[:, None] * scale[None, :]  # exact (powers of two)
        r = r * scale[:, None] * scale[None, :]
        m = 0.5 * (m + m.conj().T)  # exact: M_w's entries are placed symmetrically
        try:  # an estimate only: mu_w is proved below
            lam_min = float(scipy.linalg.eigh(m, eigvals_only=True, subset_by_index=[0, 0],
                                              check_finite=False)[0])
        except (np.linalg.LinAlgError, ValueError):
            return False
        if not lam_min > 0:
            return False
        mu = 0.5 * lam_min
        shifted = m - mu * np.eye(n)
        rs = r.copy()
        rs[np.diag_indices(n)] += U * np.abs(np.diag(shifted).real)  # rounding of the shift
        if not certify_pd(_embed(shifted), np.block([[rs, rs], [rs, rs]])):
            return False
        uw = np.zeros((n, mrows), dtype=np.complex128)
        ru = np.zeros((n, mrows))
        uw[last] = lmi.output.value[f] * scale[last, None]
        ru[last] = lmi.output.radius * scale[last, None]
        x = np.linalg.solve(m, uw)
        ax = np.abs(x)
        res = uw - m @ x
        # |R| <= |res| + rounding of m @ x and of the subtraction + radius of U + radius of M |X|
        rbound = (np.abs(res) + 2.0 * gamma(2 * n + 4) * (np.abs(uw) + np.abs(m) @ ax)
                  + math.sqrt(2.0) * (ru + r @ ax) * 2.0) * 1.01
        r_norm = float(np.sqrt((rbound * rbound).sum())) * (1.0 + 4.0 * U)
        q = x.conj().T @ uw
        q_err = 2.0 * gamma(2 * n + 4) * (ax.T @ np.abs(uw)) + math.sqrt(2.0) * 2.0 * (ax.T @ ru)
        e = (float(np.sqrt((q_err * q_err).sum())) * 1.01
             + r_norm * float(np.sqrt((ax * ax).sum())) * 1.01 + r_norm * r_norm / mu * 1.01)
        q = 0.5 * (q + q.conj().T)
        contrib = k * q.real
        total += contrib
        total_abs += np.abs(contrib)
        slack += k * e * (1.0 + 8.0 * U)
    count = len(idx) + 2
    b = np.eye(mrows) - total
    rad = gamma(count + 2) * (total_abs + np.eye(mrows)) * 1.01
    rad[np.diag_indices(mrows)] += round_up(slack * (1.0 + gamma(count)))
    return certify_pd(b, rad)


def certify_spectral(lmi: SpectralLMI, params, rho_star: float,
                     deadline: float | None = None) -> Certificate:
    """The §8 :class:`Certificate` of channel multipliers ``params``: the first margin of
    :data:`MARGINS` with ``rho = rho* (1 + 2 eps)`` that :func:`check` proves (until
    ``deadline``), then ``Lip <= nextafter(sqrt(rho), inf)``."""
    t = lmi.project(params)
    if not math.isfinite(rho_star):
        return Certificate(False, math.inf, math.inf, t, 0.0, 0.0, "no finite rho*")
    # margins upward, each check being a full pass over the frequencies (monotone: a larger
    # rho only adds to the input block); measured on the sweep's 32x16 chain at its solver's
    # point: 1e-9 fails, 1e-6 passes, so a bisection would cost two more checks for little
    hit = None
    with blas_threads(None):
        margins = list(MARGINS)
        while margins:
            eps = margins.pop(0)
            rho = rho_star * (1.0 + 2.0 * eps)
            if check(lmi, t, rho):
                hit = rho, eps
                break
            if deadline is not None and time.perf_counter() > deadline:
                margins = margins[-1:]  # past the deadline: one last, generous try
    if hit is None:
        return Certificate(False, math.inf, math.inf, t, 0.0, 0.0,
                           "the per-frequency check (§8) failed at every margin tried")
    rho, eps = hit
    bound = float(np.nextafter(math.sqrt(rho), math.inf))
    return Certificate(True, bound, rho, t, 0.0, eps, "certified")


def seconds(lmi: SpectralLMI) -> float:
    """Rough cost of one :func:`check` (per frequency: a complex eigvalsh and solve of order
    ``n``, a real Cholesky of order ``2n``), for time budgets."""
    n = lmi.order
    half = len(half_frequencies(lmi.torus)[0])
    return half * (n ** 3) * 1e-9 + 0.01 * half

