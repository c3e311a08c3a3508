"""Local Lipschitz bounds: LipSDP with per-neuron slope intervals valid on an input region.

**Why it is sound.** LipSDP (FORMULATIONS.md §1.2) needs, for every pair of inputs it speaks
about, the incremental QC of §1.1 for every hidden layer:

    sum_i t_i (dx_i - alpha_i dv_i)(beta_i dv_i - dx_i) >= 0,     t_i >= 0,

which holds term by term as soon as each neuron's difference quotient
``q_i = (phi(v_i) - phi(v'_i)) / (v_i - v'_i)`` lies in ``[alpha_i, beta_i]`` (``dx_i = q_i dv_i``
makes the term ``t_i (q_i - alpha_i)(beta_i - q_i) dv_i^2 >= 0``; for ``dv_i = 0`` both
factors vanish). For two inputs ``x, y`` of a region, both pre-activations ``v_i, v'_i`` lie in
the bounds ``[lo_i, hi_i]`` that bound propagation gives for that region
(:mod:`lipverify.regions.propagate`), so by the mean value theorem (``phi`` absolutely
continuous: ``q_i`` is the mean of ``phi'`` over ``[v'_i, v_i]``) ``q_i`` lies between the
smallest and the largest derivative of ``phi`` over ``[lo_i, hi_i]``. For ReLU this is the sign
argument: ``hi_i <= 0`` gives ``q_i = 0`` (inactive), ``lo_i >= 0`` gives ``q_i = 1`` (active).
Hence ``M(rho, T) >= 0`` with these slopes proves ``||f(x) - f(y)|| <= sqrt(rho) ||x - y||`` for
all ``x, y`` in the region: a local Lipschitz constant, certified by the same §8 gate on the
exact float64 weights. Each local interval is intersected with the global one, so the local
LMI's feasible set contains the global one's and the local bound is never worse.

Slope rules (:func:`local_slopes`): ReLU, leaky ReLU, abs, hardtanh and identity are
piecewise linear (the sign / clipping range decides); tanh and sigmoid have derivatives that
peak at 0 and decrease in ``|v|`` (closed form at the interval's points nearest to and
farthest from 0); softplus' derivative is increasing, ELU's is ``1`` or ``alpha e^v``; every
other activation keeps its global interval. Smooth derivatives are widened by ``1e-14``.

>>> import numpy as np
>>> from lipverify import Network, SlopeRestricted
>>> from lipverify.regions import Box
>>> net = Network.sequential([np.array([[1.0], [1.0]]), np.array([[1.0, 1.0]])],
...                          [SlopeRestricted.named("relu")], biases=[np.array([0.0, -3.0]),
...                                                                   np.zeros(1)])
>>> box = Box(np.array([1.0]), np.array([2.0]))   # relu(x) + relu(x - 3) is x there
>>> b = slope_bounds(net, box)
>>> b.slopes[1][0].tolist(), b.slopes[1][1].tolist()   # neuron 0 active, neuron 1 inactive
([1.0, 0.0], [1.0, 0.0])
>>> r = local_bound(net, box, method="lipsdp-neuron")
>>> r.certified, round(r.bound, 6), round(r.details["global_bound"], 6)
(True, 1.0, 2.0)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from ..errors import NotApplicableError, UsageError
from ..ir.activations import SlopeIntervals, SlopeRestricted
from ..ir.linear import Diagonal, IndexMap, LinearOp, add, compose, identity
from ..ir.network import Affine, Network, Node, Term
from ..numerics import UNIT_ROUNDOFF
from .propagate import Bounds, Interval, UnsoundError, propagate
from .region import Region

#: Absolute widening of a derivative computed in floating point (values are O(1)).
DERIVATIVE_SLACK = 1e-14
#: Relative tolerance of the sampled soundness checks.
CHECK_RTOL = 1e-12


@dataclass(frozen=True, eq=False)
class LocalBounds:
    """Bound propagation over a region plus, for every elementwise slope-restricted node
    ``k`` (1-based, as in :class:`~lipverify.ir.network.Term`), its per-neuron slopes
    ``slopes[k] = (alpha, beta)``."""

    propagation: Bounds
    slopes: dict[int, tuple[np.ndarray, np.ndarray]]

    @property
    def pre(self) -> tuple[Interval, ...]:
        return self.propagation.pre

    def stable_neurons(self, network: Network) -> list[dict]:
        """Per slope node: neurons with slope fixed at 0 (inactive), fixed elsewhere (active)
        and left an interval (unstable), and the mean interval width."""
        rows = []
        for k, (a, b) in self.slopes.items():
            node = network.nodes[k - 1]
            fixed = a == b
            rows.append({"node": k, "name": node.name, "activation": _base(node).name,
                         "inactive": int(np.count_nonzero(fixed & (a == 0))),
                         "active": int(np.count_nonzero(fixed & (a != 0))),
                         "unstable": int(np.count_nonzero(~fixed)),
                         "mean_width": float(np.mean(b - a))})
        return rows


def _base(node) -> SlopeRestricted:
    act = node.activation
    return act.base if isinstance(act, SlopeIntervals) else act


def _sign_rule(lo, hi, neg: float, pos: float, glob: tuple[float, float]):
    """Two linear pieces meeting at 0 (slope ``neg`` below, ``pos`` above)."""
    a = np.full(lo.shape, glob[0])
    b = np.full(lo.shape, glob[1])
    a[hi <= 0], b[hi <= 0] = neg, neg
    a[lo >= 0], b[lo >= 0] = pos, pos
    return a, b


def _peaked(deriv, lo, hi):
    """Derivative even and decreasing in ``|v|`` (tanh, sigmoid): largest at the point of
    ``[lo, hi]`` nearest 0, smallest at the endpoint farthest from 0."""
    near = np.clip(0.0, lo, hi)
    far = np.maximum(np.abs(lo), np.abs(hi))
    return deriv(far), deriv(near)


def _elu(lo, hi, alpha: float):
    """ELU: ``1`` for ``v > 0``, ``alpha e^v`` for ``v <= 0`` (monotone in ``v`` there)."""
    with np.errstate(under="ignore"):
        e_lo, e_hi = alpha * np.exp(np.minimum(lo, 0.0)), alpha * np.exp(np.minimum(hi, 0.0))
    a, b = np.minimum(e_lo, e_hi), np.maximum(e_lo, e_hi)
    a = np.where(lo > 0, 1.0, np.where(hi > 0, np.minimum(a, 1.0), a))
    b = np.where(lo > 0, 1.0, np.where(hi > 0, np.maximum(b, 1.0), b))
    return a, b


def _tanh_deriv(v):
    return 1.0 - np.tanh(v) ** 2


def _sigmoid_deriv(v):
    s = 0.5 * (1.0 + np.tanh(0.5 * v))
    return s * (1.0 - s)


def _sigmoid(v):
    return 0.5 * (1.0 + np.tanh(0.5 * v))


def local_slopes(act: SlopeRestricted, iv: Interval) -> tuple[np.ndarray, np.ndarray]:
    """Per-neuron ``(alpha, beta)`` enclosing ``act``'s derivative over ``[lo_i, hi_i]``,
    intersected with the global ``[alpha, beta]`` (module docstring: the rules)."""
    # §1.1 holds per neuron when its difference quotients lie in [alpha_i, beta_i]
    glob = (act.alpha, act.beta)
    n = iv.lo.size
    if not iv.bounded:
        return np.full(n, glob[0]), np.full(n, glob[1])
    lo, hi, p = iv.lo, iv.hi, act.params
    exact = True  # piecewise-linear rules give exact slopes; smooth ones are widened
    if act.name == "relu":
        a, b = _sign_rule(lo, hi, 0.0, 1.0, glob)
    elif act.name == "leaky_relu":
        a, b = _sign_rule(lo, hi, p[0], 1.0, glob)
    elif act.name == "abs":
        a, b = _sign_rule(lo, hi, -1.0, 1.0, glob)
    elif act.name == "hardtanh":
        inside = (lo >= p[0]) & (hi <= p[1])
        flat = (hi <= p[0]) | (lo >= p[1])
        a = np.where(inside, 1.0, np.where(flat, 0.0, glob[0]))
        b = np.where(inside, 1.0, np.where(flat, 0.0, glob[1]))
    elif act.name == "tanh":
        (a, b), exact = _peaked(_tanh_deriv, lo, hi), False
    elif act.name == "sigmoid":
        (a, b), exact = _peaked(_sigmoid_deriv, lo, hi), False
    elif act.name == "softplus":  # derivative sigmoid(beta v), increasing
        a, b, exact = _sigmoid(p[0] * lo), _sigmoid(p[0] * hi), False
    elif act.name == "elu":
        (a, b), exact = _elu(lo, hi, p[0]), False
    else:  # identity, gelu, silu, the generic "slope" class: the global interval
        a, b = np.full(n, glob[0]), np.full(n, glob[1])
    if not exact:
        a, b = a - DERIVATIVE_SLACK, b + DERIVATIVE_SLACK
    a = np.clip(a, glob[0], glob[1])
    b = np.clip(b, a, glob[1])
    return a.astype(np.float64), b.astype(np.float64)


def slope_bounds(network: Network, region: Region) -> LocalBounds:
    """Bound propagation over ``region`` and the per-neuron slopes of every elementwise
    slope-restricted node (other nodes keep their global QC)."""
    prop = propagate(network, region)
    slopes = {}
    for k, (node, iv) in enumerate(zip(network.nodes, prop.pre), start=1):
        if isinstance(node.activation, (SlopeRestricted, SlopeIntervals)):
            a, b = local_slopes(_base(node), iv)
            if isinstance(node.activation, SlopeIntervals):  # already local: keep the tighter
                a = np.maximum(a, node.activation.alpha)
                b = np.maximum(np.minimum(b, node.activation.beta), a)
            slopes[k] = (a, b)
    return LocalBounds(prop, slopes)


def _affine_piece(act: SlopeRestricted, iv: Interval, idx: np.ndarray, slope: np.ndarray):
    """``c`` with ``act(v) = slope v + c`` on the interval of neurons ``idx`` whose slope is
    fixed there (exact for the piecewise-linear rules; 0 where the interval is unbounded)."""
    mid = np.where(np.isfinite(iv.lo[idx]) & np.isfinite(iv.hi[idx]),
                   0.5 * iv.lo[idx] + 0.5 * iv.hi[idx], 0.0)
    return act.apply(mid[None])[0] - slope * mid


class _Eliminator:
    """Rewrites a network over new sources: the input and the kept nodes. ``exprs[k]`` gives
    the old node ``k``'s output as ``sum_j ops[j](new source j) + const``."""

    def __init__(self, network: Network):
        n0 = network.input_dim
        self.exprs: list[tuple[dict[int, LinearOp], np.ndarray]] = [({0: identity(n0)},
                                                                     np.zeros(n0))]
        self.nodes: list[Node] = []

    def substitute(self, pre: Affine) -> Affine:
        """``pre`` over the new sources (terms from one source merged into one operator)."""
        parts: dict[int, list[LinearOp]] = {}
        bias = np.array(pre.bias)
        for t in pre.terms:
            ops, const = self.exprs[t.source]
            for j, op in ops.items():
                parts.setdefault(j, []).append(compose(op, t.op))
            if np.any(const):
                bias = bias + t.op.matmat(const[None])[0]
        terms = []
        for j in sorted(parts):
            op = parts[j][0]
            for other in parts[j][1:]:
                op = add(op, other)
            terms.append(Term(j, op))
        return Affine(tuple(terms), bias)

    def keep(self, node: Node, pre: Affine) -> None:
        self.nodes.append(replace(node, pre=pre))
        self.exprs.append(({len(self.nodes): identity(node.width)}, np.zeros(node.width)))

    def split(self, node: Node, pre: Affine, act: SlopeRestricted, iv: Interval,
              a: np.ndarray, b: np.ndarray) -> None:
        """Keep the neurons whose slope is an interval; the others are affine on the region,
        ``x_i = a_i v_i + c_i``: substituted into every reader (those with ``a_i = 0``
        vanish; the rest become terms from this node's own sources)."""
        n = pre.n_out
        fixed = a == b
        kept, gone = np.flatnonzero(~fixed), np.flatnonzero(fixed)
        ops: dict[int, LinearOp] = {}
        const = np.zeros(n)
        const[gone] = _affine_piece(act, iv, gone, a[gone])
        if kept.size:
            sub = Affine(tuple(Term(t.source, compose(t.op, IndexMap(kept, n)))
                               for t in pre.terms), pre.bias[kept])
            global_ = np.all(a[kept] == act.alpha) and np.all(b[kept] == act.beta)
            local = act if global_ else SlopeIntervals(act, a[kept], b[kept])
            self.nodes.append(replace(node, activation=local, pre=sub, shape=(kept.size,)))
            ops[len(self.nodes)] = _scatter(kept, n)
        live = gone[a[gone] != 0]
        if live.size:  # x_live = a v_live: this node's pre-activation rows, scaled
            scale = () if np.all(a[live] == 1) else (Diagonal(a[live]),)
            for t in pre.terms:
                op = compose(t.op, IndexMap(live, n), *scale, _scatter(live, n))
                ops[t.source] = add(ops[t.source], op) if t.source in ops else op
            const[live] += a[live] * pre.bias[live]
        self.exprs.append((ops, const))


def _scatter(idx: np.ndarray, n: int) -> IndexMap:
    """``R^len(idx) -> R^n``: entry ``j`` to position ``idx[j]``, zeros elsewhere."""
    where = np.full(n, -1)
    where[idx] = np.arange(idx.size)
    return IndexMap(where, idx.size)


def localize(network: Network, region: Region, bounds: LocalBounds | None = None) -> Network:
    """``network`` as seen by LipSDP on ``region``: every elementwise slope node carries its
    per-neuron slopes (:class:`~lipverify.ir.activations.SlopeIntervals`), and neurons whose
    slope is one number ``a_i`` on the region (inactive or active ReLU, ...) are eliminated.

    *Why eliminate.* A fixed slope makes the §1.1 QC ``-2 t_i (dx_i - a_i dv_i)^2 >= 0``, which
    only approaches ``dx_i = a_i dv_i`` as ``t_i -> inf``: the LMI's optimum is not attained
    and solvers diverge. On the region such a neuron is the affine map ``a_i v_i + c_i``, so it
    is substituted into its readers (exact data movement and scaling of the same weights:
    ``a_i = 0`` simply vanishes; ``a_i != 0`` becomes a skip term, so a chain may become a DAG).
    The result computes the same function on the region, and a bound on it holds for pairs of
    inputs in the region only. Non-slope nodes are kept whole.
    """
    bounds = slope_bounds(network, region) if bounds is None else bounds
    elim = _Eliminator(network)
    for k, node in enumerate(network.nodes, start=1):
        pre = elim.substitute(node.pre)
        if k not in bounds.slopes:
            elim.keep(node, pre)
            continue
        a, b = bounds.slopes[k]
        base = _base(node)
        if np.all(a < b):  # nothing to eliminate: the node stays, slopes per neuron
            act = base if np.all(a == base.alpha) and np.all(b == base.beta) else \
                SlopeIntervals(base, a, b)
            elim.keep(replace(node, activation=act), pre)
        else:
            elim.split(node, pre, base, bounds.pre[k - 1], a, b)
    return replace(network, nodes=tuple(elim.nodes), output=elim.substitute(network.output),
                   name=f"{network.name} (local)")


def _pre_activations(network: Network, x: np.ndarray) -> list[np.ndarray]:
    values, pres = [x], []
    for node in network.nodes:
        v = node.pre.evaluate(values)
        pres.append(v)
        values.append(node.activation.apply(v))
    return pres


def check_slopes(network: Network, region: Region, bounds: LocalBounds, samples: int = 64,
                 seed: int = 0) -> None:
    """Sampled soundness check of ``bounds``: at ``samples`` points of ``region`` every
    pre-activation lies in its interval, and for consecutive pairs of them every neuron's
    difference quotient lies in ``[alpha_i, beta_i]`` (both up to ``1e-12`` relative).
    Raises :class:`UnsoundError` naming the first violation."""
    rng = np.random.default_rng(seed)
    x = region.sample(samples, rng)
    pres = _pre_activations(network, x)
    for k, (v, iv) in enumerate(zip(pres, bounds.pre), start=1):
        bad = ~iv.contains(v, CHECK_RTOL)
        if bad.any():
            s, i = np.argwhere(bad)[0]
            raise UnsoundError(f"node {k}, neuron {i}: sampled pre-activation {v[s, i]:.17g} "
                               f"outside its bounds [{iv.lo[i]:.17g}, {iv.hi[i]:.17g}]")
    for k, (a, b) in bounds.slopes.items():
        act = network.nodes[k - 1].activation
        v = pres[k - 1]
        w = act.apply(v)
        dv, dw = v[1:] - v[:-1], w[1:] - w[:-1]
        ok = dv != 0
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            q = np.where(ok, dw / np.where(ok, dv, 1.0), 0.0)
            # the computed quotient's own error: the values and their differences are
            # rounded (a few ulp of |w| each), relative to the step
            noise = 16 * UNIT_ROUNDOFF * (np.abs(w[1:]) + np.abs(w[:-1])) / np.abs(dv)
        slack = CHECK_RTOL * np.maximum(np.maximum(np.abs(a), np.abs(b)), np.abs(q)) + noise
        bad = ok & ((q < a - slack) | (q > b + slack))
        if bad.any():
            s, i = np.argwhere(bad)[0]
            raise UnsoundError(f"node {k}, neuron {i}: sampled slope {q[s, i]:.17g} outside "
                               f"its local interval [{a[i]:.17g}, {b[i]:.17g}]")


def local_lower_bound(network: Network, region: Region, samples: int = 256,
                      seed: int = 0) -> float:
    """Sampled lower bound on the Lipschitz constant over ``region`` (l2): the largest
    ``||J(x)||_2`` (exact Jacobians in float64 through :mod:`lipverify.ir.torch_eval`) at
    ``samples`` points of the region. Every local upper bound must be at least this."""
    import torch

    from ..ir.torch_eval import to_torch

    module = to_torch(network, dtype=torch.float64)
    rng = np.random.default_rng(seed)
    best = 0.0
    for chunk in np.array_split(region.sample(samples, rng), max(1, samples // 32)):
        x = torch.tensor(chunk, dtype=torch.float64, requires_grad=True)
        y = module(x)
        rows = [torch.autograd.grad(y[:, j].sum(), x, retain_graph=True)[0]
                for j in range(y.shape[1])]
        jac = torch.stack(rows, 1).detach().numpy()
        best = max(best, float(np.linalg.norm(jac, ord=2, axis=(1, 2)).max()))
    return best


def _tightened(network: Network, bounds: LocalBounds) -> bool:
    """Whether the region narrowed any neuron's slope below its global interval (else the
    localized network is the network and its LMI the global one)."""
    for k, (a, b) in bounds.slopes.items():
        act = network.nodes[k - 1].activation
        glob_a = act.alpha if isinstance(act, SlopeIntervals) else np.full(a.shape, act.alpha)
        glob_b = act.beta if isinstance(act, SlopeIntervals) else np.full(b.shape, act.beta)
        if np.any(a > glob_a) or np.any(b < glob_b):
            return True
    return False


def local_bound(network, region: Region, method: str = "auto", *, global_result=None,
                lower: bool = True, **options):
    """Certified l2 Lipschitz bound of ``network`` over ``region``: LipSDP (or ``method``) on
    :func:`localize`'s network, never above the global bound.

    Runs the method on the localized network and, unless ``global_result`` (an l2 upper bound
    of this network) is given, on the original one, and returns the smaller certified result,
    with ``details``: ``region``, ``stable_neurons`` (per slope node), ``global_bound``,
    ``local_lmi_bound`` (the localized network's bound, None when the region tightened no
    slope and the local LMI would be the global one), ``used`` ("local" or "global") and
    ``seconds`` per stage. ``lower_bound`` is the sampled local lower bound
    (:func:`local_lower_bound`; skipped with ``lower=False``), and a certified bound below it
    raises :class:`UnsoundError`. ``options`` go to :func:`lipverify.bound` (l2 only).
    """
    from .. import api
    from ..importers import load

    if options.get("norm", "l2") != "l2" or "lower_bound" in options:
        raise UsageError("local_bound computes l2 bounds with its own sampled local lower "
                         "bound: drop the norm and lower_bound options")
    network = network if isinstance(network, Network) else load(network)
    region.check_width(network)
    if global_result is not None and (global_result.norm != "l2" or global_result.kind != "upper"
                                      or global_result.model != network.name):
        raise UsageError("global_result must be an l2 upper bound of this network")
    clock = {}
    start = time.perf_counter()
    bounds = slope_bounds(network, region)
    check_slopes(network, region, bounds)
    tightened = _tightened(network, bounds)
    clock["propagate"] = time.perf_counter() - start
    notes = []
    loc = None
    if tightened:
        t0 = time.perf_counter()
        local_net = localize(network, region, bounds)
        try:
            loc = api.bound(local_net, method=method, **options)
        except NotApplicableError as exc:  # e.g. a chain-only method, and eliminated neurons
            notes.append(f"local: {method} does not apply to the localized network ({exc}); "
                         "used auto")
            loc = api.bound(local_net, method="auto", **options)
        clock["local"] = time.perf_counter() - t0
    else:
        notes.append("local: the region fixes no neuron's slope (no bound propagated through "
                     "these activations is tight enough), so the local LMI is the global one")
    t0 = time.perf_counter()
    glob = global_result if global_result is not None else api.bound(network, method=method,
                                                                     **options)
    clock["global"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    low = None
    if lower:
        try:
            low = local_lower_bound(network, region)
        except NotApplicableError:  # an activation without a torch form: no sampled check
            pass
    clock["lower"] = time.perf_counter() - t0
    # both are certified by the §8 gate on their own exact weights: keep the smaller
    use_local = loc is not None and loc.certified and (not glob.certified
                                                       or loc.bound <= glob.bound)
    best = loc if use_local else glob
    if best.certified and low is not None and best.bound < low * (1 - 1e-9):
        raise UnsoundError(f"certified local bound {best.bound:.17g} is below the sampled "
                           f"local lower bound {low:.17g}")
    details = {**best.details, "region": region.describe(),
               "stable_neurons": bounds.stable_neurons(network),
               "global_bound": glob.bound, "global_certified": glob.certified,
               "local_lmi_bound": None if loc is None else loc.bound,
               "local_lmi_certified": None if loc is None else loc.certified,
               "local_method": None if loc is None else loc.details.get("auto_choice",
                                                                         loc.method),
               "used": "local" if use_local else "global", "seconds": clock}
    note = ("local bound: holds for pairs of inputs inside the region only; its certificate "
            "is for the localized network (lipverify.regions.localize)")
    return replace(best, model=network.name, details=details, lower_bound=low,
                   time_s=time.perf_counter() - start,
                   warnings=(*best.warnings, *notes, *((note,) if use_local else ())))
