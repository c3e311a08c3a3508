"""Quadratic constraints per activation kind (FORMULATIONS.md §1.1, §4).

A QC for hidden layer k is the symmetric form
``[dv; dw]^T [[Gvv, Gvw], [Gvw^T, Gww]] [dv; dw] >= 0`` that holds for every pair
of pre-activations ``v, v'`` (``dv = v - v'``, ``dw = phi(v) - phi(v')``), for every
multiplier value in the QC's set. Each QC class says how many multipliers it has,
which are sign-constrained, and builds its blocks from them, in numpy (for the
exact certificate) and in cvxpy (for solving). One file per kind; the registry
(activation kind -> QC factory) is here.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import NotApplicableError
from ..ir.activations import Activation
from . import groupsort, householder, maxpool, slope
from .base import QC, Blocks
from .groupsort import GroupSortQC
from .maxpool import MaxPoolQC
from .slope import SlopeQC

__all__ = ["QC", "QC_REGISTRY", "QC_SUMMARY", "Blocks", "GroupSortQC", "MaxPoolQC", "SlopeQC",
           "qc_for"]

#: activation kind -> factory(activation, width, per_neuron, block) -> QC (one file per kind)
QC_REGISTRY: dict[str, Callable[..., QC]] = {
    "slope": slope.make,
    "groupsort": groupsort.make,
    "householder": householder.make,
    "maxpool": maxpool.make,
}


#: activation kind -> what its QC says (``lipverify qcs``)
QC_SUMMARY: dict[str, str] = {
    "slope": "slope-restricted elementwise maps, slopes in [alpha, beta] (§0)",
    "groupsort": "GroupSort / MaxMin: sorting permutes, an exact 1-Lipschitz QC (§4)",
    "householder": "Householder activation: reflect a pair when u^T v <= 0 (§4)",
    "maxpool": "max pooling: windowed max, overlap-counted incidence QC (§7)",
}


def qc_for(act: Activation, n: int, per_neuron: bool = True, block: int = 1) -> QC:
    """The QC of ``act`` on a layer of width ``n`` (a clear error for kinds without one)."""
    if act.kind not in QC_REGISTRY:
        raise NotApplicableError(f"no quadratic constraint for activation {act.describe()}")
    return QC_REGISTRY[act.kind](act, n, per_neuron, block)
