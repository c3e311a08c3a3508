"""The single gate to ``certified=True`` for LipSDP-type bounds (FORMULATIONS.md §8).

Recipe: project the multipliers, compute ``rho*(T)`` by the backward Schur recursion,
blend toward the always-feasible anchor if needed, inflate, assemble ``M`` in float64,
shift by Rump's constant plus the assembly radius, and run Cholesky.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..certify import certify_pd
from ..linear import gamma
from .chain import ChainLMI


@dataclass(frozen=True, eq=False)
class Certificate:
    """Outcome of the §8 check. ``bound`` is meaningful only when ``ok``."""

    ok: bool
    bound: float
    rho: float
    params: np.ndarray
    theta: float
    margin: float
    message: str


def _radius(lmi: ChainLMI, params, rho) -> np.ndarray:
    """Entrywise bound on ``|fl(M) - M_exact|`` (§8 assembly radius, plus weight radii)."""
    m_abs = lmi.assemble(params, rho, absolute=True)
    # entries are sums of products W^T G W (two inner sums) plus a few terms (§8)
    rad = gamma(2 * lmi.inner_dim + 8) * 1.01 * m_abs
    if any(r is not None for r in lmi.radii):
        plain = ChainLMI(lmi.weights, (None,) * len(lmi.radii), lmi.qcs, lmi.name)
        rad = rad + (m_abs - plain.assemble(params, rho, absolute=True))
    return rad * (1.0 + 1e-12)


def verify_chain(lmi: ChainLMI, params, rho: float) -> bool:
    """The §8 check itself: is ``M(rho, params)`` provably positive definite?

    ``params`` must already lie in the multiplier set (checked exactly).
    """
    params = np.asarray(params, dtype=np.float64)
    if params.shape != (sum(lmi.param_sizes),) or not np.array_equal(lmi.project(params), params):
        return False
    return certify_pd(lmi.assemble(params, rho), _radius(lmi, params, rho))


#: Above this LMI order each dense check costs seconds: one bisection step, not three
#: (the margin is then within a factor ~30 of the smallest, i.e. below ~1e-7 relative).
LARGE_ORDER = 2000


def smallest_margin(check, rho_star: float, steps: int = 3) -> tuple[float, float] | None:
    """``(rho, eps)`` with ``check(rho)`` true for ``rho = rho* (1 + eps) + eps``, eps small:
    1e-12 first, then one jump to 1e-6 and a log-bisection back down (each check is a dense
    Cholesky, so few of them), else upward by 10x to 1e-1. None if nothing passes."""

    def rho_of(eps):
        return rho_star * (1.0 + eps) + eps

    if check(rho_of(1e-12)):
        return rho_of(1e-12), 1e-12
    lo, hi = -12.0, None
    for e in (-6.0, -5.0, -4.0, -3.0, -2.0, -1.0):
        if check(rho_of(10.0**e)):
            hi = e
            break
        lo = e
    if hi is None:
        return None
    for _ in range(steps):  # within a factor 10^((hi-lo)/2^steps) of the smallest margin
        mid = (lo + hi) / 2.0
        if check(rho_of(10.0**mid)):
            hi = mid
        else:
            lo = mid
    return rho_of(10.0**hi), 10.0**hi


def _try(lmi: ChainLMI, params, rho_star: float, theta: float) -> Certificate | None:
    found = smallest_margin(lambda r: verify_chain(lmi, params, r), rho_star,
                            steps=3 if lmi.order <= LARGE_ORDER else 1)
    if found is None:
        return None
    rho, eps = found
    bound = float(np.nextafter(math.sqrt(rho), np.inf))
    return Certificate(True, bound, rho, params, theta, eps, "certified")


def certify_chain(lmi: ChainLMI, params) -> Certificate:
    """Certify ``sqrt(rho)`` for the multipliers ``params`` (repaired if infeasible)."""
    p = lmi.project(params)
    anchor = None
    theta = 0.0
    while True:
        q = p if theta == 0.0 else (1.0 - theta) * p + theta * anchor
        rho = lmi.rho_star(q)
        if math.isfinite(rho):
            cert = _try(lmi, q, rho, theta)
            if cert is not None:
                return cert
        if theta >= 1.0:
            return Certificate(
                False,
                math.inf,
                math.inf,
                q,
                theta,
                0.0,
                "even the anchor multipliers could not be certified",
            )
        if anchor is None:
            anchor = lmi.anchor()
        theta = min(1.0, 1e-6 if theta == 0.0 else 2.0 * theta)
