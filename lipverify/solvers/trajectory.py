"""A lower bound on LipSDP's optimum for any network of slope-restricted nodes, from
trajectories that are dual feasible by construction (§1.2, §5a) **[derived]**.

**Weak duality.** LipSDP's matrix on a network with nodes ``x_k = sigma_k(V_k z)`` (``z`` the
stacked input and node values, §5a) is ``M(rho, t) = rho E_0 - C^T C - sum_i t_i A_i`` with
``t >= 0`` and ``z^T A_i z = q_i(z)``, the QC value of multiplier ``i``: summed over the
neurons ``j`` sharing it (one neuron, or a channel), ``q_i = sum_j -2 a b p_j^2 + 2 (a+b) p_j
x_j - 2 x_j^2`` with ``p = V_k z`` and ``x = x_k``. So for any ``z`` with every ``q_i(z) >=
0``, ``M >= 0`` gives ``0 <= z^T M z = rho |x_0|^2 - |C z|^2 - sum_i t_i q_i(z)``, and
``rho_opt >= |C z|^2 / |x_0|^2``. The same holds for ``Z = sum_j z_j z_j^T`` (the dual's
points) with only the sums ``sum_j q_i(z_j) >= 0``: ``rho_opt >= sum_j |C z_j|^2 / sum_j
|x_{0,j}|^2``.

**Feasible by construction.** With ``m = (a+b)/2`` and ``r = (b-a)/2``, ``q_i >= 0`` reads
``|x - m p|^2 <= r^2 |p|^2`` over the multiplier's neurons: a ball around ``m p``. So for any
input ``x_0`` and any directions ``u_k``, node after node and group after group
``x_k = m p + r s |p| c`` with ``c = u / |u|`` (``tanh u`` for a single neuron) and ``s = 1 -
1e-9`` is feasible, and the bound holds whatever they are. With ``rank`` trajectories the
norms ``|p|`` and ``|u|`` run over the group's neurons and all trajectories together (the
summed constraint): rank two reaches LipSDP-Neuron's optimum on the test MLPs, where rank
one stops up to 25% short, and rank four meets cifar_base_kw's channel optimum to six
digits (5.72759 against the interior point's 5.72761; rank one: 5.6877). Adam ascends
the log of the ratio over ``x_0`` and the ``u_k``, evaluating the network's own operators
in torch (convolutions stay convolutions); the problem is not convex, so the best value
is a valid lower bound but not necessarily the optimum. The final point is re-evaluated in
float64 numpy with every group's constraint rechecked.

It measures the optimality gap of ``lipsdp-channel`` / ``lipsdp-neuron`` where no dual point
comes from the solver (residual and large conv networks). :mod:`lipverify.solvers.spectral`
runs the same construction in DFT coordinates.

>>> import numpy as np
>>> from lipverify import Network, SlopeRestricted
>>> net = Network.sequential([np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 1.0]])],
...                          [SlopeRestricted.named("relu")])
>>> low = ascent_bound(net, per_neuron=True)
>>> 4.99 <= low <= 5.0      # LipSDP: rho = 5 (L = sqrt 5, both units active)
True
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..errors import NotApplicableError
from ..ir.activations import SlopeRestricted
from ..ir.network import Network

#: Adam steps (at most), step size, and the steps without gain that end the ascent.
STEPS = 3000
RATE = 0.05
PATIENCE = 200
#: Feasibility margin: the radius used is ``(1 - MARGIN)`` of the ball's.
MARGIN = 1e-9


def groups(network: Network, per_neuron: bool | str) -> list[int]:
    """Neurons per multiplier for each node: 1 (per neuron), the node's spatial size
    (per channel: the QC's ``block``), or its width (per layer)."""
    from ..lmi.chain import node_qcs

    return [qc.n // qc.num_params() for qc in node_qcs(network, per_neuron)]


def ascent_bound(network: Network, per_neuron: bool | str = "channel", **options
                 ) -> float | None:
    """A lower bound on LipSDP's optimal ``rho`` (``L^2``) with these multipliers (module
    docstring), or None if the ascent found nothing positive. :class:`NotApplicableError`
    for nodes that are not elementwise slope-restricted with one slope interval."""
    found = trajectory_ascent(network, per_neuron, **options)
    return None if found is None else found[0]


def trajectory_ascent(network: Network, per_neuron: bool | str = "channel", *,
                      rank: int = 1, steps: int = STEPS, until: float | None = None,
                      seed: int = 0) -> tuple[float, np.ndarray] | None:
    """:func:`ascent_bound`'s value and its trajectory ``z`` (input then every node's value,
    one vector of the LMI's order, scaled to ``|x_0| = 1``; with ``rank > 1``, ``rank``
    columns ``z_j`` scaled to ``sum_j |x_{0,j}|^2 = 1``).

    ``rank``: the number of trajectories ``z_j`` in ``Z = sum_j z_j z_j^T``. Each
    multiplier's constraint is then on the sum over them, ``sum_j q_i(z_j) >= 0``: the ball
    of the module docstring taken over the group's neurons and the ``rank`` trajectories
    together, so one trajectory may break a group's QC where another makes up for it."""
    import torch

    from ..ir.torch_eval import Tensors, convert_linear

    slopes = []
    for k, node in enumerate(network.nodes, start=1):
        act = node.activation
        if not isinstance(act, SlopeRestricted) or np.ndim(act.alpha) or np.ndim(act.beta):
            raise NotApplicableError(f"node {k}: the trajectory bound needs one slope "
                                     f"interval per node ({act.describe()})")
        slopes.append((float(act.alpha), float(act.beta)))
    sizes = groups(network, per_neuron)
    t = Tensors(torch.float64, "cpu")
    nodes = [[(term.source, convert_linear(term.op, t)) for term in n.pre.terms]
             for n in network.nodes]
    output = [(term.source, convert_linear(term.op, t)) for term in network.output.terms]
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn((rank, network.input_dim), dtype=torch.float64, generator=gen)]
    params += [torch.randn((rank, n.width), dtype=torch.float64, generator=gen)
               for n in network.nodes]
    for p in params:
        p.requires_grad_()

    best_ps = ascend(params, lambda ps: _forward(slopes, sizes, nodes, output, ps, torch)[0],
                     steps=steps, until=until)
    if best_ps is None:
        return None
    numeric = ([(term.source, term.op.matmat) for term in n.pre.terms] for n in network.nodes)
    value, layers = _forward(slopes, sizes, list(numeric),
                             [(term.source, term.op.matmat) for term in network.output.terms],
                             best_ps, np)
    for (a, b), size, (x, p) in zip(slopes, sizes, layers):  # every group's constraint
        xg, pg = x.reshape(rank, -1, size), p.reshape(rank, -1, size)
        q = (xg * xg).sum(axis=(0, 2)) - (a + b) * (xg * pg).sum(axis=(0, 2)) \
            + a * b * (pg * pg).sum(axis=(0, 2))
        if (q > 1e-12 * (pg * pg).sum(axis=(0, 2))).any():
            return None
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        return None
    energy = float((best_ps[0] ** 2).sum())
    z = np.concatenate([best_ps[0]] + [x for x, _ in layers], axis=1).T / math.sqrt(energy)
    return value, (z[:, 0] if rank == 1 else z)


def _forward(slopes, sizes, nodes, output, params, lib):
    """The ratio ``sum_j |C z_j|^2 / sum_j |x_{0,j}|^2`` and each node's ``(x_k, p_k)`` for
    the inputs ``params[0]`` (one row per trajectory) and directions ``params[1:]``;
    ``nodes``/``output`` list ``(source, apply)`` terms; ``lib`` is ``torch`` or ``numpy``
    (the same arithmetic in both)."""
    values, layers = [params[0]], []
    rank = params[0].shape[0]
    for (a, b), terms, u, size in zip(slopes, nodes, params[1:], sizes):
        p = sum(fn(values[s]) for s, fn in terms)
        pg, ug = p.reshape(rank, -1, size), u.reshape(rank, -1, size)
        pn = ((pg * pg).sum((0, 2)) ** 0.5)[None, :, None]  # over the group and trajectories
        if size == 1 and rank == 1:  # a point of [-1, 1] for a single value, else the sphere
            c = lib.tanh(ug)
        else:
            c = ug / ((ug * ug).sum((0, 2)) ** 0.5)[None, :, None]
        x = (0.5 * (a + b) * pg + (0.5 * (b - a) * (1.0 - MARGIN)) * pn * c).reshape(p.shape)
        values.append(x)
        layers.append((x, p))
    y = sum(fn(values[s]) for s, fn in output)
    return (y * y).sum() / (params[0] * params[0]).sum(), layers


def ascend(params: list, value, *, steps: int = STEPS, until: float | None = None,
           rate: float = RATE, patience: int = PATIENCE) -> list[np.ndarray] | None:
    """Adam on ``-log value(params)`` (torch leaf tensors, updated in place) until ``steps``,
    ``until`` or ``patience`` steps without a relative gain of 1e-7; numpy copies of the
    best parameters seen (None if no finite positive value)."""
    import torch

    opt = torch.optim.Adam(params, lr=rate)
    best, best_ps, stale = 0.0, None, 0
    for _ in range(steps):
        if until is not None and time.perf_counter() > until:
            break
        opt.zero_grad()
        v = value(params)
        f = float(v.detach())
        if not math.isfinite(f):
            break
        stale = 0 if f > best * (1.0 + 1e-7) else stale + 1
        if f > best:
            best, best_ps = f, [p.detach().numpy().copy() for p in params]
        if stale > patience:
            break
        (-torch.log(v)).backward()
        opt.step()
    return best_ps
