"""lipverify's interior-point algorithms for slope-QC LMIs (entry: :mod:`lipverify.solvers.ipm`).

* :mod:`.potential`: dual-scaling potential reduction (two hidden layers, DAGs);
* :mod:`.primal_dual`: HKM primal-dual with Mehrotra predictor-corrector (deep chains);
* :mod:`.chordal`: the primal-dual method with its primal on the block-tridiagonal pattern;
* :mod:`.common`: what they share. :func:`solve_chain_ipm` picks one.
"""

from __future__ import annotations

from .chordal import solve_chain_pd_chordal
from .common import IPMResult, ipm_bytes, ipm_reason, on_balanced
from .potential import solve_ipm
from .primal_dual import solve_chain_pd

__all__ = ["IPMResult", "ipm_bytes", "ipm_reason", "solve_chain_ipm", "solve_chain_pd",
           "solve_chain_pd_chordal", "solve_ipm"]


#: Chains with at least this many hidden layers use the primal-dual method
#: (:mod:`lipverify.solvers.interior.primal_dual`): 16-42 iterations where dual scaling
#: needs 75-300 (measured on the bench's deep nets);
#: on two hidden layers dual scaling's cheaper iterations win.
PRIMAL_DUAL_DEPTH = 3


#: ... and order above this: below it dual scaling's iterations are so cheap that it wins
#: (64-64x4-10, order 320: 0.6 s against 1.6 s; order 576: even).
PRIMAL_DUAL_ORDER = 600


#: Above this order, the primal-dual method keeps its primal on the block-tridiagonal pattern
#: (:mod:`lipverify.solvers.interior.chordal`): no N^3 products (64x64: about 8 s per iteration
#: instead of about 25 s), at the price of more iterations (no second-order correction).
CHORDAL_ORDER = 3000


def solve_chain_ipm(lmi, start=None, *, algorithm: str = "auto", **options) -> IPMResult:
    """The interior-point solve of a slope-QC LMI: ``algorithm`` "primal-dual"
    (:func:`lipverify.solvers.interior.primal_dual.solve_chain_pd`), "primal-dual chordal"
    (:func:`lipverify.solvers.interior.chordal.solve_chain_pd_chordal`, chains only), "dual-scaling"
    (:func:`solve_ipm` on the balanced chain, or directly on a DAG), or "auto" (primal-dual
    on chains with at least ``PRIMAL_DUAL_DEPTH`` hidden layers and order above
    ``PRIMAL_DUAL_ORDER``, chordal above ``CHORDAL_ORDER``)."""
    if algorithm not in ("auto", "primal-dual", "primal-dual chordal", "dual-scaling"):
        raise ValueError(f"unknown interior-point algorithm {algorithm!r}")
    chain = lmi.kind == "chain"
    if algorithm == "auto" and chain and len(lmi.qcs) >= PRIMAL_DUAL_DEPTH and \
            lmi.order > PRIMAL_DUAL_ORDER:
        algorithm = "primal-dual chordal" if lmi.order > CHORDAL_ORDER else "primal-dual"
    if algorithm == "primal-dual chordal":
        return solve_chain_pd_chordal(lmi, start, **options)
    if algorithm == "primal-dual":
        return solve_chain_pd(lmi, start, **options)
    return on_balanced(solve_ipm, lmi, start, rotated=False, **options)
