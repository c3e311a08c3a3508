"""The Householder activation (FORMULATIONS.md §4 [derived]): reflect a pair when ``u^T v <= 0``;
its QC is GroupSort's on pairs, with the direction ``Pi_u`` known to a few ulp."""

from __future__ import annotations

import math

import numpy as np

from ..errors import NotApplicableError
from .groupsort import GroupSortQC

DIRECTION_ERROR = 8.0 * np.finfo(float).eps  # |fl(sin t) - sin t|, |fl(cos t) - cos t|: a few ulp


def make(act, n: int, per_neuron: bool, block: int = 1) -> GroupSortQC:
    """The registry factory: the GroupSort QC of pairs with direction ``Pi_u`` (§4 [derived])."""
    if n % 2:
        raise NotApplicableError(f"Householder activation on a layer of odd width {n}")
    q = (-math.sin(act.theta), math.cos(act.theta))  # spans Pi_u for u = (cos t, sin t)
    return GroupSortQC(n, 2, per_neuron, q, DIRECTION_ERROR)
