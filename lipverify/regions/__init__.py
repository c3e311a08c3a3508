"""Local Lipschitz bounds over an input region (FORMULATIONS.md §1.1, §1.2, §8).

* :class:`Box`, :class:`Ball` - the region (l-infinity box; l2 ball with an optional domain
  clip); :func:`read_vnnlib` reads a VNN-LIB property's input box, :func:`region_from_spec`
  the CLI's ``CENTER.npy:EPS[:l2]``.
* :func:`propagate` - interval bounds of every pre-activation over the region (IBP, tightened
  by a backward linear relaxation on ReLU / leaky ReLU chains).
* :func:`slope_bounds`, :func:`localize` - per-neuron slope intervals and the network that
  carries them (its LipSDP QCs hold for pairs of inputs in the region).
* :func:`local_bound` - the certified local bound (never above the global one), with the
  sampled local lower bound beside it; :func:`check_slopes` is the sampled soundness check.
"""

from .local import (
    LocalBounds,
    check_slopes,
    local_bound,
    local_lower_bound,
    local_slopes,
    localize,
    slope_bounds,
)
from .propagate import Bounds, Interval, UnsoundError, crown_bounds, propagate, row_norms
from .region import Ball, Box, Region, load_center, region_from_spec
from .vnnlib import read_vnnlib

__all__ = [
    "Ball",
    "Bounds",
    "Box",
    "Interval",
    "LocalBounds",
    "Region",
    "UnsoundError",
    "check_slopes",
    "crown_bounds",
    "local_bound",
    "local_lower_bound",
    "local_slopes",
    "localize",
    "load_center",
    "propagate",
    "read_vnnlib",
    "region_from_spec",
    "row_norms",
    "slope_bounds",
]
