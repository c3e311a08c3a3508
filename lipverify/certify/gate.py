"""The single gate to ``certified=True`` for LipSDP-type bounds (FORMULATIONS.md §8).

Recipe: project the multipliers, compute ``rho*(T)`` by the backward Schur recursion,
blend toward the always-feasible anchor if needed, inflate, assemble ``M`` in float64,
shift by Rump's constant plus the assembly radius, and run Cholesky.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ..lmi.chain import ChainLMI, balance, is_exact_balance
from ..numerics import gamma, round_up
from .chordal import ChordalCertificate, ForwardChordal, chain_cliques, verify_chain_chordal
from .rump import certify_pd


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

    ``params`` must already lie in the multiplier set (checked exactly). Small LMIs try one
    dense Cholesky first; every LMI then gets the clique-by-clique check (§3, §8 "Chordal
    form"), which is what certifies deep and large chains.
    """
    params = np.asarray(params, dtype=np.float64)
    if params.shape != (sum(lmi.param_sizes),) or not np.array_equal(lmi.project(params), params):
        return False
    if lmi.order <= LARGE_ORDER and _verify_dense(lmi, params, rho):
        return True
    bal = _balanced(lmi, params, balance(lmi))
    tries = [(lmi, params, rho)]
    if bal is not None and (rho / bal[2]) * bal[2] == rho:
        tries.insert(0, (bal[0], bal[1], rho / bal[2]))
    for chain, p, r in tries:  # either splitting (backward or forward Q_k) proves M > 0
        if verify_chain_chordal(chain, p, r) or ForwardChordal(chain, p).check(r):
            return True
    return False


def _balanced(lmi: ChainLMI, params, bal) -> tuple[ChainLMI, np.ndarray, float] | None:
    """The exactly balanced chain (``bal = balance(lmi)``) and the multipliers in its scale,
    or None when some rescaling would round: then ``M(rho, T)`` and ``M_scaled(rho / out,
    T / f)`` are exactly congruent, so either certifies the other."""
    scaled, factors, out = bal
    p_scaled = params / factors
    if not is_exact_balance(lmi, scaled, factors, out) or not np.array_equal(
            p_scaled * factors, params) or not np.isfinite(p_scaled).all():
        return None
    return scaled, p_scaled, out


def _verify_dense(lmi: ChainLMI, params, rho: float) -> bool:
    return certify_pd(lmi.assemble(params, rho), _radius(lmi, params, rho), overwrite=True)


#: Above this LMI order a dense check costs seconds: chains use only the clique-wise checks
#: (which also certify the deep, ill-conditioned LMIs the dense test rejects); DAGs take one
#: bisection step instead of three.
LARGE_ORDER = 2000


def smallest_margin(check, rho_star: float, steps: int = 3, first: float | None = None,
                    unit: float = 1.0, deadline: float | None = None
                    ) -> tuple[float, float] | None:
    """``(rho, eps)`` with ``check(rho)`` true for ``rho = rho* (1 + eps) + eps unit``, eps
    small: ``first`` (if given, then 1e-12 below it), else 1e-12, then one jump to 1e-6 and a
    log-bisection back down (each check is a Cholesky, so few of them), else upward by 10x
    to 1e-1. ``unit`` scales the absolute part with the network (``ABSOLUTE_MARGIN`` times
    its scale of rho in the checked units), so a constant of 1e-11 certifies as tightly as
    one of 1e3; it is tried only after the margins relative to ``rho*`` alone (absolute
    part at most ``rho*``) fail: on a deep net whose constant is 1e-11 of its norm product
    the absolute part would otherwise dominate (64x64 random chain: 1.8e10 instead of
    1.01e8). None if nothing passes."""
    relative = None
    if 0 < rho_star < unit:
        relative = _margin_search(check, rho_star, steps, first, rho_star, deadline)
        if relative is not None and (relative[1] <= 1e-12 or _past(deadline)):
            return relative
    hit = _margin_search(check, rho_star, steps, first, unit, deadline)
    # never above what the absolute margins alone certify
    return min((h for h in (relative, hit) if h is not None), default=None)


def _margin_search(check, rho_star, steps, first, unit, deadline):
    def rho_of(eps):
        return rho_star * (1.0 + eps) + eps * unit

    if first is not None and check(rho_of(first)):  # a margin that usually passes
        if check(rho_of(1e-12)):
            return rho_of(1e-12), 1e-12
        return rho_of(first), first
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
        if _past(deadline):  # a margin passed: past the deadline, keep it
            break
        mid = (lo + hi) / 2.0
        if check(rho_of(10.0**mid)):
            hi = mid
        else:
            lo = mid
    return rho_of(10.0**hi), 10.0**hi


#: The absolute part of a certificate's margin, relative to the network's scale of rho (the
#: squared product of its layer norms; a DAG's anchor rho*).
ABSOLUTE_MARGIN = 1e-6
#: LMIs up to this order try the dense check first (cheap, and the tightest when it passes).
SMALL_ORDER = 500
#: A certified margin this small (relative, in rho) ends the search.
GOOD_MARGIN = 1e-7


def _try(lmi: ChainLMI, params, rho_star: float, theta: float, bal,
         deadline: float | None = None) -> Certificate | None:
    """The cheapest check that gives a tight margin: dense on small LMIs, then the
    clique-wise checks (backward, then forward; §3/§8) on the exactly balanced chain
    (``bal = balance(lmi)``), then dense again up to order ``LARGE_ORDER`` if nothing
    tight passed."""
    found = []
    local = math.inf  # the smallest margin relative to a check's own rho* (balanced chains)

    def best() -> float:
        return min(min(found)[1] if found else math.inf, local)

    def dense(steps: int) -> None:
        hit = smallest_margin(lambda r: _verify_dense(lmi, params, r), rho_star, steps=steps,
                              unit=scale, deadline=deadline)
        if hit is not None:
            found.append(hit)

    def add(hit, out):
        nonlocal local
        if hit is not None and math.isfinite(hit[0] * out) and (hit[0] * out) / out == hit[0]:
            found.append((hit[0] * out, hit[0] * out / max(rho_star, 1e-300) - 1.0))
            local = min(local, hit[1])

    # the absolute part of the margin, relative to the network's scale of rho (balanced
    # units -> original): negligible beside rho* unless L is below 1e-5 of the norm product
    scale = ABSOLUTE_MARGIN * (bal[2] if 0 < bal[2] < math.inf else 1.0)
    small = lmi.order <= SMALL_ORDER
    if small:
        dense(3)
    if best() > 1e-12:
        exact = _balanced(lmi, params, bal)
        scaled, p_scaled, out = exact if exact is not None else (lmi, params, 1.0)
        cliques = chain_cliques(scaled, p_scaled)  # shared by both splittings
        backward = ChordalCertificate(scaled, p_scaled, cliques=cliques)
        if backward.ok:
            add(smallest_margin(backward.check, backward.rho_star, first=1e-9,
                                unit=scale / out, deadline=deadline), out)
        if best() > GOOD_MARGIN and not (found and _past(deadline)):
            # pivots ill-conditioned backward, or margins amplified
            forward = ForwardChordal(scaled, p_scaled, cliques=cliques)
            r0 = forward.rho_estimate(rho_star / out)  # the backward rho*, balanced units
            if math.isfinite(r0):
                add(smallest_margin(forward.check, r0, first=1e-9, unit=scale / out,
                                    deadline=deadline), out)
    if not small and best() > 1e-6 and lmi.order <= LARGE_ORDER and \
            not (found and _past(deadline)):
        dense(3)
    if not found:
        return None
    rho, eps = min(found)
    bound = round_up(math.sqrt(rho))
    return Certificate(True, bound, rho, params, theta, eps, "certified")


#: Repairs tried before blending toward the anchor: ``(rho, T) -> (1 + e)(rho, T)`` adds
#: ``e C^T C`` to ``M`` (every QC is a cone), which lifts a singular last pivot of a
#: multiplier set on the boundary (ldlt-fast) at a cost of only ``1 + e`` in rho.
SCALE_REPAIRS = (2.0**-30, 2.0**-17, 2.0**-7, 2.0**-3)


def _rho_star(lmi: ChainLMI, q, bal) -> float:
    """rho*(q) by the backward recursion; on the exactly balanced chain if it overflows."""
    r = lmi.rho_star(q)
    scaled, factors, out = bal
    if not math.isfinite(r) and is_exact_balance(lmi, scaled, factors, out):
        r = scaled.rho_star(q / factors) * out  # deep nets: the balanced recursion
    return r


def certify_if_better(lmi: ChainLMI, params, incumbent: Certificate,
                      deadline: float | None = None) -> Certificate:
    """The better of ``incumbent`` and the certificate of ``params``. The certification is
    skipped when ``rho*(params)`` (no certificate of these multipliers goes below it) is
    already no better than the incumbent's certified rho: a candidate that only a repair
    could improve is not worth its cost. Never changes what is certified, only what is tried."""
    bal = balance(lmi)
    if incumbent.ok and not _rho_star(lmi, lmi.project(params), bal) < incumbent.rho:
        return incumbent
    return min(certify_chain(lmi, params, deadline, bal), incumbent, key=lambda c: c.bound)


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() > deadline


def certify_chain(lmi: ChainLMI, params, deadline: float | None = None,
                  bal=None) -> Certificate:
    """Certify ``sqrt(rho)`` for the multipliers ``params`` (repaired if infeasible: first
    scaled up slightly, then blended toward the anchor, §8 step 4). Past ``deadline`` (a
    ``time.perf_counter()`` value) no further repair is tried once one has certified.
    ``bal``: :func:`balance` of ``lmi`` if the caller has it."""
    p = lmi.project(params)
    bal = balance(lmi) if bal is None else bal

    def rho_star(q):
        return _rho_star(lmi, q, bal)

    best = None
    for e in (0.0, *SCALE_REPAIRS):
        q = p if e == 0.0 else p * (1.0 + e)
        rho = rho_star(q)
        if math.isfinite(rho):
            cert = _try(lmi, q, rho, 0.0, bal, deadline)
            if cert is not None and (best is None or cert.bound < best.bound):
                best = cert
            if best is not None and (best.margin <= 1e-6 or _past(deadline)):
                return best
    anchor = lmi.anchor()
    theta = 1e-6
    while True:  # blend toward the anchor; keep whichever repair certifies lower
        q = (1.0 - theta) * p + theta * anchor
        rho = rho_star(q)
        if math.isfinite(rho):
            cert = _try(lmi, q, rho, theta, bal, deadline)
            if cert is not None:
                return cert if best is None or cert.bound < best.bound else best
        if theta >= 1.0:
            return best if best is not None else Certificate(
                False,
                math.inf,
                math.inf,
                q,
                theta,
                0.0,
                "even the anchor multipliers could not be certified",
            )
        theta = min(1.0, 2.0 * theta)


def certify(lmi, params, deadline: float | None = None) -> Certificate:
    """The one §8 gate for every LMI kind: the :class:`Certificate` of ``params`` for a chain
    (:func:`certify_chain`), an l-infinity output row (kind ``"linf-row"``,
    :func:`certify_linf_row`, §1.4) or, monolithically, a DAG
    (:func:`~lipverify.lmi.dag.certify_dag`). ``ok`` is true only when the check passed on
    the exact float64 weights."""
    if lmi.kind == "chain":
        return certify_chain(lmi, params, deadline)
    if lmi.kind == "linf-row":
        return certify_linf_row(lmi, params, deadline)
    from ..lmi.dag import certify_dag

    bound, q, rho, theta = certify_dag(lmi, params)
    ok = math.isfinite(bound)
    return Certificate(ok, bound, rho, q, theta, 0.0, "certified" if ok else "not certified")


def certify_linf_row(lmi, params, deadline: float | None = None) -> Certificate:
    """§8 on the bordered l-infinity LMI of one output row (FORMULATIONS.md §1.4; §8
    "l-infinity"), for a :class:`~lipverify.lmi.linf.LinfRowLMI`: project ``[tau, T]``, take
    the best point of the segment toward the feasible start (§8 step 4), polish it (unless
    past ``deadline``), inflate ``rho = rho* (1 + eps) + eps`` and check by Cholesky
    (:func:`~lipverify.lmi.linf.best_blend`). ``params`` None certifies the start itself.

    Here the bound is ``rho`` itself (rounded up once), not ``sqrt(rho)``; ``rho`` is the
    value the check passed at and ``margin`` its ``eps``."""
    from ..lmi.linf import best_blend

    c = best_blend(lmi, params, deadline)
    if c.ok:
        message = "certified" + (" (polished)" if c.polished else "")
    else:
        message = "not certified: " + (
            "P(tau, T) is not positive definite" if c.margin == 0.0
            else "the bordered matrix failed the check at every margin")
    return Certificate(c.ok, c.bound, c.rho, c.params, c.theta, c.margin, message)
