"""Cheap baselines (FORMULATIONS.md §6): naive product, power-iteration estimate, Gershgorin.

All three propagate a per-term operator norm through the network's affine normal
form: ``L(z_0) = 1``, ``L(z_k) = lip(phi_k) * sum_j ||W_kj|| L(z_j)``, and the
output ``sum_j ||C_j|| L(z_j)``. For a feed-forward chain this is the product
``prod_k lip(phi_k) ||W_k||`` of §6.1; for residual nets it is the triangle
inequality, i.e. ``||C|| prod (1 + beta ||G|| ||H||)`` of §5.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..certify.conv_norm import certified_conv_norm
from ..certify.rump import certified_gershgorin_norm, certified_inf_norm, certified_spectral_norm
from ..ir.linear import Conv2d, LinearOp, power_iteration
from ..ir.network import Network
from ..numerics import round_up
from ..results import MethodOutput
from ..status import Outcome, Status
from . import register_method

#: l2 ``naive``: a Conv2d whose dense matrix has more entries (n_in * n_out) than this gets
#: the circulant/FFT bound of §7 (:func:`~lipverify.certify.conv_norm.certified_conv_norm`) instead
#: of the exact dense SVD. The dense bound is tighter (zero padding makes the circulant one
#: an over-estimate, most on tiny feature maps) but costs O(n_in n_out min(n_in, n_out)).
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


@register_method(
    "naive",
    norms=("l2", "linf"),
    summary="Product of certified per-layer operator norms times activation slopes (§6.1).",
)
def naive(network: Network, *, norm: str = "l2", **_) -> MethodOutput:
    used = {"dense": 0, "fft": 0}

    def op_norm(op: LinearOp) -> float:
        if norm == "l2" and isinstance(op, Conv2d) and op.n_in * op.n_out > DENSE_CONV_LIMIT:
            used["fft"] += 1
            return certified_conv_norm(op)
        used["dense"] += 1
        dense, radius = op.dense_with_radius()
        if norm == "linf":
            return certified_inf_norm(dense, radius)
        return certified_spectral_norm(dense, radius)[0]

    value = propagate(network, _cached(op_norm), norm)
    per_layer = "certified SVD + Rump check (§6.2)" if norm == "l2" else "certified row sums"
    if used["fft"]:
        per_layer += (
            f"; {used['fft']} large Conv2d (n_in*n_out > {DENSE_CONV_LIMIT:,}): certified "
            "circulant/FFT bound, Rump check per frequency (§7)"
        )
    return MethodOutput(
        bound=value,
        certified=math.isfinite(value),
        details={"per_layer": per_layer, "dense_terms": used["dense"], "fft_convs": used["fft"]},
    )


@register_method(
    "gershgorin",
    norms=("l2", "linf"),
    summary="Row/column-sum (Gershgorin) bound per layer (§6.3); cheap, no SVD.",
)
def gershgorin(network: Network, *, norm: str = "l2", **_) -> MethodOutput:
    def op_norm(op: LinearOp) -> float:
        dense, radius = op.dense_with_radius()
        if norm == "linf":
            return certified_inf_norm(dense, radius)
        return certified_gershgorin_norm(dense, radius)

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
