"""The sampled lower bound as a registered method (FORMULATIONS.md §6.4).

The search itself lives in :mod:`lipverify.methods.sampling`; torch is imported only when
it runs, so listing or choosing methods stays fast.
"""

from __future__ import annotations

from ..ir.network import Network
from ..options import LowerOptions
from ..results import MethodOutput
from . import register_method


@register_method(
    "lower",
    norms=("l2", "linf"),
    kind="lower",
    summary="sampled lower bound: exact Jacobians, surrogate ascent, finite-difference witness",
    options=LowerOptions,
)
def lower_bound(network: Network, *, norm: str = "l2", **options) -> MethodOutput:
    """:func:`lipverify.methods.sampling.lower_bound` (its docstring has the options)."""
    from .sampling import lower_bound as search

    return search(network, norm=norm, **options)
