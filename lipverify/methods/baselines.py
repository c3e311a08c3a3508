"""Cheap baselines (FORMULATIONS.md §6): naive product, power-iteration estimate, Gershgorin.

All three propagate a per-term operator norm through the network's affine normal
form: ``L(z_0) = 1``, ``L(z_k) = lip(phi_k) * sum_j ||W_kj|| L(z_j)``, and the
output ``sum_j ||C_j|| L(z_j)``. For a feed-forward chain this is the product
``prod_k lip(phi_k) ||W_k||`` of §6.1; for residual nets it is the triangle
inequality, i.e. ``||C|| prod (1 + beta ||G|| ||H||)`` of §5.

No term is turned into a dense matrix with more entries than both :data:`DENSE_CONV_LIMIT`
and its own stored coefficients: larger terms keep their structure. ``naive`` (l2) then uses each
operator's certified :meth:`~lipverify.ir.linear.LinearOp.l2_bound` (per-channel scales,
BatchNorm and average pools folded into the conv kernel, §7 per-frequency conv bounds,
``max |d|`` for a scale, ``sqrt(max multiplicity)`` for data movement, submultiplicativity
and the triangle inequality for products and sums); ``gershgorin`` and the l-infinity norm
use row and column sums of ``|W|`` computed by applying the structured ``|W|`` to vectors
(§6.3), never ``|W|`` itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..certify.rump import certified_gershgorin_norm, certified_inf_norm
from ..ir.linear import LinearOp, power_iteration
from ..ir.network import Network
from ..numerics import round_up
from ..results import MethodOutput
from ..status import Outcome, Status
from . import register_method

#: A term whose dense matrix has more entries (n_in * n_out) than this, and more than the
#: term's stored coefficients, is never densified: ``naive`` uses its structured bound (for a
#: Conv2d the circulant/FFT bound of §7,
#: :func:`~lipverify.certify.conv_norm.certified_conv_norm`), ``gershgorin`` and l-infinity
#: its structured row/column sums. The dense bound is tighter (zero padding makes the
#: circulant one an over-estimate, most on tiny feature maps) but costs
#: O(n_in n_out min(n_in, n_out)) time and O(n_in n_out) memory.
DENSE_CONV_LIMIT = 4_000_000


def propagate(network: Network, op_norm: Callable[[LinearOp], float], norm: str) -> float:
    """Lipschitz bound of the whole network from per-term norms (sound for any DAG).

    Every product and sum is rounded upward: ``fsum`` is correctly rounded and each
    product is off by at most one ulp, so one ``nextafter`` per operation suffices.
    """

    def combine(terms, lips) -> float:
        return round_up(math.fsum(round_up(op_norm(t.op) * lips[t.source]) for t in terms))

    lips = [1.0]
    for node in network.nodes:
        lips.append(round_up(combine(node.pre.terms, lips) * node.activation.lipschitz(norm)))
    return combine(network.output.terms, lips)


def _cached(fn: Callable[[LinearOp], float]) -> Callable[[LinearOp], float]:
    cache: dict[int, float] = {}

    def wrapped(op: LinearOp) -> float:
        if id(op) not in cache:
            cache[id(op)] = fn(op)
        return cache[id(op)]

    return wrapped


def structured_inf_norm(op: LinearOp) -> float:
    """Certified ``||W||_inf`` (max row sum of ``|W|``, §6.3) from ``|W| 1`` computed through
    the operator's structure (:meth:`~lipverify.ir.linear.LinearOp.abs_matmat_bound`)."""
    rows = op.abs_matmat_bound(np.ones((1, op.n_in)))
    return float(rows.max()) if rows.size else 0.0


def structured_gershgorin_norm(op: LinearOp) -> float:
    """§6.3 without a dense matrix: ``||W||_2^2 <= min(||W||_1 ||W||_inf, max(|W|^T |W| 1),
    max(|W| |W|^T 1))``, every vector an entrywise certified upper bound.

    *Derivation:* ``||W||^2 = ||W^T W|| <= max_i sum_j |W^T W|_ij`` (Gershgorin), and
    ``|W^T W| <= |W|^T |W|`` entrywise, so the row sums are at most ``|W|^T r`` for any
    ``r >= |W| 1``; the same with ``W W^T`` and ``c >= |W|^T 1``. The operator maps are
    monotone on nonnegative vectors, so chaining upper bounds keeps them upper bounds.
    """
    r = op.abs_matmat_bound(np.ones((1, op.n_in)))
    c = op.abs_rmatmat_bound(np.ones((1, op.n_out)))
    one, inf = float(c.max()), float(r.max())
    gram_rows = float(op.abs_rmatmat_bound(r).max())  # >= max (|W|^T |W| 1)_i
    gram_cols = float(op.abs_matmat_bound(c).max())  # >= max (|W| |W|^T 1)_i
    return round_up(math.sqrt(min(round_up(one * inf), gram_rows, gram_cols)))


@register_method(
    "naive",
    norms=("l2", "linf"),
    summary="Product of certified per-layer operator norms times activation slopes (§6.1).",
)
def naive(network: Network, *, norm: str = "l2", **_) -> MethodOutput:
    used = {"dense": 0, "fft": 0, "exact": 0}
    structured = [0]
    limit = DENSE_CONV_LIMIT  # read at call time (tests lower it)

    def op_norm(op: LinearOp) -> float:
        if not op.dense_ok(limit):
            structured[0] += 1
        if norm == "linf":
            if op.dense_ok(limit):
                used["dense"] += 1
                return certified_inf_norm(*op.dense_with_radius())
            return structured_inf_norm(op)
        return op.l2_bound(limit, used)

    value = propagate(network, _cached(op_norm), norm)
    per_layer = "certified SVD + Rump check (§6.2)" if norm == "l2" else "certified row sums"
    if used["fft"]:
        per_layer += (
            f"; {used['fft']} large Conv2d (n_in*n_out > {DENSE_CONV_LIMIT:,}): certified "
            "circulant/FFT bound, Rump check per frequency (§7)"
        )
    if structured[0]:
        per_layer += (
            f"; {structured[0]} large term(s) kept structured: exact scale/data-movement norms, "
            "scales folded into conv kernels, products and sums bounded factor by factor"
            if norm == "l2" else
            f"; {structured[0]} large term(s) kept structured: row sums of |W| applied to 1"
        )
    return MethodOutput(
        bound=value,
        certified=math.isfinite(value),
        details={"per_layer": per_layer, "dense_terms": used["dense"], "fft_convs": used["fft"],
                 "structured_terms": structured[0]},
    )


@register_method(
    "gershgorin",
    norms=("l2", "linf"),
    summary="Row/column-sum (Gershgorin) bound per layer (§6.3); cheap, no SVD.",
)
def gershgorin(network: Network, *, norm: str = "l2", **_) -> MethodOutput:
    limit = DENSE_CONV_LIMIT

    def op_norm(op: LinearOp) -> float:
        if op.dense_ok(limit):
            dense, radius = op.dense_with_radius()
            if norm == "linf":
                return certified_inf_norm(dense, radius)
            return certified_gershgorin_norm(dense, radius)
        if norm == "linf":
            return structured_inf_norm(op)
        return structured_gershgorin_norm(op)

    value = propagate(network, _cached(op_norm), norm)
    return MethodOutput(bound=value, certified=math.isfinite(value))


@register_method(
    "power",
    norms=("l2",),
    kind="estimate",
    summary="Same product with power-iteration norms: an estimate, NOT a certified bound.",
)
def power(network: Network, *, norm: str = "l2", **_) -> MethodOutput:
    value = propagate(network, _cached(power_iteration), norm)
    return MethodOutput(
        bound=value,
        certified=False,
        status=Status(Outcome.ESTIMATE),
        warnings=("power iteration underestimates norms: not a bound",),
    )
