"""Compositional LipSDP for networks too large for one LMI: cut, bound each piece, multiply.

A node ``b`` is a *cut* when nothing after it reads the input or a node before ``b``: the
network is then ``g_2(z_b)`` after ``z_b = g_1(x)``, and ``Lip(f) <= Lip(g_1) Lip(g_2)``.
Consecutive cuts are grouped into segments whose LMI order stays under a budget; each segment
(a chain or a residual DAG of its own) is bounded by ``lipsdp-neuron`` and certified by §8,
and the product is rounded upward. Looser than one LMI over the whole network (the
multipliers cannot trade between segments), usually far tighter than the naive product, and
exact per segment: a residual block is always bounded as a whole (§5).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np

from ..errors import NotApplicableError
from ..ir.linear import IndexMap
from ..ir.network import Affine, Network, Node, Term
from ..numerics import round_up
from ..options import SplitOptions
from ..results import MethodOutput
from ..status import Outcome, Status
from . import register_method

#: Largest LMI order per segment (input block plus its nodes).
SEGMENT_ORDER = 4500


def cuts(network: Network) -> list[int]:
    """Nodes ``b`` (1-based) such that everything after ``b`` reads only ``z_b`` and later."""
    readers = [*(n.pre for n in network.nodes), network.output]
    out = []
    for b in range(1, len(network.nodes) + 1):
        later = readers[b:]  # the pre-activations of nodes b+1.. and the output
        if all(t.source >= b for aff in later for t in aff.terms):
            out.append(b)
    return out


def segment(network: Network, a: int, b: int) -> Network:
    """The map ``z_a -> z_b`` (or ``z_a -> y`` when ``b`` is past the last node)."""
    shape = network.input_shape if a == 0 else network.nodes[a - 1].shape
    last = len(network.nodes)

    def shift(aff: Affine) -> Affine:
        return Affine(tuple(Term(t.source - a, t.op) for t in aff.terms), aff.bias)

    nodes = tuple(Node(n.activation, shift(n.pre), n.shape, n.name)
                  for n in network.nodes[a:min(b, last)])
    if b > last:
        output = shift(network.output)
    else:
        width = nodes[-1].width
        output = Affine((Term(len(nodes), IndexMap(np.arange(width), width)),),
                        np.zeros(width))
    return Network(shape, nodes, output, name=f"{network.name}[{a}:{b}]")


def plan(network: Network, budget: int = SEGMENT_ORDER) -> list[tuple[int, int]]:
    """Segments ``(a, b)`` between cuts, greedily merged while the order stays in budget."""
    widths = [network.input_dim, *(n.width for n in network.nodes)]
    bounds = [0, *cuts(network)]
    if bounds[-1] != len(network.nodes):
        bounds.append(len(network.nodes))
    pieces = list(zip(bounds, bounds[1:]))
    pieces[-1] = (pieces[-1][0], len(network.nodes) + 1)  # the last piece ends at the output

    def order(a, b):
        return sum(widths[a : min(b, len(network.nodes)) + 1])

    merged = [pieces[0]]
    for a, b in pieces[1:]:
        if order(merged[-1][0], b) <= budget:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


@register_method(
    "lipsdp-split",
    summary="Product of certified lipsdp-neuron bounds over segments between cut nodes: for "
    "networks too large for one LMI (residual blocks stay whole). Looser than one LMI.",
    options=SplitOptions,
)
def lipsdp_split(network: Network, *, norm: str = "l2", time_limit: float | None = None,
                 budget: int = SEGMENT_ORDER, **options) -> MethodOutput:
    from .baselines import naive
    from .lipsdp import lipsdp_neuron

    if norm != "l2":
        raise NotApplicableError("lipsdp-split supports the l2 norm only")
    if not network.nodes:
        raise NotApplicableError(f"{network.name} has no hidden layer: its bound is ||W||; "
                                 "use --method naive")
    segments = plan(network, budget)
    start = time.perf_counter()
    total, certified, parts = 1.0, True, []
    for i, (a, b) in enumerate(segments):
        sub = segment(network, a, b)
        share = None
        if time_limit is not None:
            share = max((time_limit - (time.perf_counter() - start)) / (len(segments) - i), 1.0)
        base = naive(sub)  # certified too; the product never exceeds the naive bound
        try:
            out = lipsdp_neuron(sub, norm="l2", time_limit=share, **options)
        except NotApplicableError as exc:
            out = replace(base, status=Status(Outcome.FALLBACK, f"naive ({exc})"))
        if not out.certified or out.bound > base.bound:
            out = replace(base, status=Status(Outcome.FALLBACK, f"naive (lipsdp {out.bound:.6g}: "
                                                               f"{out.status})"))
        certified = certified and out.certified
        total = round_up(total * out.bound)
        parts.append({"nodes": [a + 1, min(b, len(network.nodes))], "order": sub.input_dim
                      + sum(n.width for n in sub.nodes), "bound": out.bound,
                      "certified": out.certified, "status": str(out.status)})
    return MethodOutput(
        bound=total,
        certified=certified and math.isfinite(total),
        status=Status(detail=f"{len(segments)} segments"),
        details={"segments": parts},
    )
