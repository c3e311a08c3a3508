"""Interval bound propagation (IBP): pre-activation bounds of every node over an input region.

Intervals are carried in centre/radius form through the affine normal form of the network
(:mod:`lipverify.ir.network`): for a term ``W z`` with ``z`` in ``mid +- rad``,

    W z  in  W mid +- |W| rad,

``|W| rad`` from the operator's certified ``abs_matmat_bound`` (FORMULATIONS.md §6.3: structured
operators never become dense). The float64 rounding of ``W mid`` and of the sums is charged to
the radius with Higham's bound (``k gamma_n |W| |mid|``, §8), so every interval encloses the
exact pre-activations of every input of the region, not just their computed values.

* **l2 ball** ``||x - c|| <= r``: a term reading the input uses the exact row bound
  ``|w_i^T (x - c)| <= r ||w_i||_2`` (row norms through ``matmat`` on identity chunks, never a
  dense copy of a large operator), intersected with IBP on the ball's enclosing box (which
  carries the ``domain`` clip, e.g. pixels in [0, 1]).
* **activations**: a slope-restricted map with ``alpha >= 0`` is nondecreasing, so
  ``[f(lo), f(hi)]`` (widened by 16 ulp: numpy's functions are accurate to a few ulp);
  otherwise ``f(mid) +- max(|alpha|, |beta|) rad``. GroupSort sorts ``lo`` and ``hi``
  separately (each order statistic is nondecreasing in every argument), max pooling pools
  them, Householder keeps each pair's norm (``[-R, R]`` with ``R`` the pair's largest norm),
  a kept softmax lies in ``[0, 1]``; any other opaque map is unbounded, and so is everything
  downstream of it (its slopes stay global).

IBP alone is loose on deep nets (each layer's box ignores how the neurons move together).
Chains whose hidden nodes are all ReLU or leaky ReLU (slope ``a`` in [0, 1]) are tightened by a
backward linear relaxation (CROWN-style, :func:`crown_bounds`): for the rows of ``W_m``, walk
back through the layers, replacing each ``phi(v_l)`` by a linear lower bound where its
coefficient is ``>= 0`` and an upper bound where it is ``< 0`` (exact lines for stable neurons;
the chord above and ``s v``, ``s`` in {a, 1}, below for unstable ones), until a linear function
of the input remains, minimised over the region (box: ``L mid - |L| rad``; ball:
``L c - r ||L_i||``, the better of the two). Every floating-point step's error is bounded with
the IBP magnitudes (``|lo|``, ``|hi|``) and subtracted, so the bounds stay rigorous. The result
is intersected with IBP's, layer by layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.activations import (
    Activation,
    GroupSort,
    Householder,
    Lipschitz,
    MaxPool2d,
    SlopeIntervals,
    SlopeRestricted,
)
from ..ir.linear import Dense, LinearOp
from ..ir.network import Affine, Network
from ..numerics import UNIT_ROUNDOFF, gamma
from .region import Ball, Region

#: Relative error allowed for one elementwise function value (numpy: a few ulp).
ELEMENTWISE_ULPS = 16
#: Absolute slack for underflow.
TINY = 1e-300
#: Identity columns per ``matmat`` when a row norm needs the operator's columns.
ROW_NORM_ENTRIES = 1 << 22


@dataclass(frozen=True, eq=False)
class Interval:
    """Entrywise bounds ``lo <= v <= hi`` (``-inf``/``inf`` where unknown)."""

    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def unbounded(cls, n: int) -> Interval:
        return cls(np.full(n, -np.inf), np.full(n, np.inf))

    @property
    def bounded(self) -> bool:
        return bool(np.isfinite(self.lo).all() and np.isfinite(self.hi).all())

    def contains(self, v: np.ndarray, rtol: float = 0.0) -> np.ndarray:
        """Which entries of ``v`` (rows of a batch) lie inside, up to ``rtol`` relative."""
        slack = rtol * np.maximum(np.abs(self.lo), np.abs(self.hi))
        slack = np.where(np.isfinite(slack), slack, 0.0)
        return (v >= self.lo - slack) & (v <= self.hi + slack)

    def mid_rad(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mid, rad)`` with ``[mid - rad, mid + rad]`` containing ``[lo, hi]`` exactly."""
        mid = 0.5 * self.lo + 0.5 * self.hi
        rad = np.nextafter(np.maximum(self.hi - mid, mid - self.lo), np.inf)
        return mid, rad

    @classmethod
    def of(cls, mid: np.ndarray, rad: np.ndarray) -> Interval:
        """``[mid - rad, mid + rad]``, rounded outward."""
        return cls(np.nextafter(mid - rad, -np.inf), np.nextafter(mid + rad, np.inf))

    def __and__(self, other: Interval) -> Interval:
        return Interval(np.maximum(self.lo, other.lo), np.minimum(self.hi, other.hi))


@dataclass(frozen=True, eq=False)
class Bounds:
    """What :func:`propagate` returns: per node the pre-activation and output intervals
    (``post[0]`` is the input box), and the network output's interval."""

    pre: tuple[Interval, ...]
    post: tuple[Interval, ...]
    output: Interval


def _stages(op: LinearOp) -> int:
    """Rounded products in sequence when ``op`` is evaluated (a Compose or Sum adds up)."""
    inner = getattr(op, "ops", None)
    return sum(_stages(o) for o in inner) if inner else 1


def _rounding(op: LinearOp) -> float:
    """``g`` with ``|fl(W x) - W x| <= g |W| |x|`` for ``op.matmat``: each stage is a dot product
    of at most ``n_in + n_out`` terms (Higham), and a composition adds its stages' errors."""
    return (_stages(op) + 2) * gamma(4 * (op.n_in + op.n_out) + 16) * 1.01


def _up(x: np.ndarray) -> np.ndarray:
    return np.nextafter(x, np.inf)


def _term(op: LinearOp, mid: np.ndarray, rad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``op`` applied to the interval ``mid +- rad``: ``(W mid, |W| rad + rounding)``."""
    y = op.matmat(mid[None])[0]
    r = op.abs_matmat_bound(_up(rad + _rounding(op) * np.abs(mid))[None])[0]
    return y, r


def row_norms(op: LinearOp) -> np.ndarray:
    """Upper bounds on ``||w_i||_2`` for every row of the exact map ``op``.

    A Dense weight's rows directly; any other operator through ``matmat`` on chunks of the
    identity (its columns, ``ROW_NORM_ENTRIES`` entries at a time), so nothing larger than
    a chunk is ever formed. Rounded up by the error of the entries and of the sum of squares.
    """
    if isinstance(op, Dense):
        sq = np.einsum("ij,ij->i", op.weight, op.weight)
        rel = gamma(op.n_in + 2)
    else:
        sq = np.zeros(op.n_out)
        step = max(1, ROW_NORM_ENTRIES // max(op.n_in + op.n_out, 1))
        for j0 in range(0, op.n_in, step):
            j1 = min(j0 + step, op.n_in)
            eye = np.zeros((j1 - j0, op.n_in))
            eye[np.arange(j1 - j0), np.arange(j0, j1)] = 1.0
            cols = op.matmat(eye)  # row j of the result: column j0 + j of W
            sq += np.einsum("ji,ji->i", cols, cols)
        rel = 2.0 * _rounding(op) + gamma(op.n_in + 2)
    return _up(np.sqrt(sq) * (1.0 + 2.0 * rel) + TINY)


class _Propagator:
    def __init__(self, region: Region):
        self.region = region
        self.norms: dict[int, np.ndarray] = {}

    def _ball_term(self, op: LinearOp) -> tuple[np.ndarray, np.ndarray]:
        """``W (x - c)`` over the ball: ``W c +- r ||w_i||`` (plus the rounding of ``W c``)."""
        ball: Ball = self.region  # type: ignore[assignment]
        if id(op) not in self.norms:
            self.norms[id(op)] = row_norms(op)
        c = ball.center
        y = op.matmat(c[None])[0]
        r = _up(ball.radius * self.norms[id(op)] * (1.0 + 4.0 * UNIT_ROUNDOFF)
                + op.abs_matmat_bound(_up(_rounding(op) * np.abs(c))[None])[0])
        return y, r

    def affine(self, pre: Affine, post: list[Interval]) -> Interval:
        if not all(post[t.source].bounded for t in pre.terms):
            return Interval.unbounded(pre.n_out)
        ys, rs = [], []
        for t in pre.terms:
            y, r = _term(t.op, *post[t.source].mid_rad())
            if t.source == 0 and isinstance(self.region, Ball):
                both = Interval.of(y, r) & Interval.of(*self._ball_term(t.op))
                y, r = both.mid_rad()
            ys.append(y)
            rs.append(r)
        mid = sum(ys) + pre.bias
        size = sum(np.abs(y) for y in ys) + np.abs(pre.bias)
        rad = _up(sum(rs) + gamma(len(ys) + 2) * 1.01 * (size + np.abs(mid)) + TINY)
        return Interval.of(mid, rad)


class UnsoundError(RuntimeError):
    """An internal soundness check failed (disjoint enclosures of one set, a sampled point
    outside its bounds, a certified bound below a sampled lower bound): a bug in lipverify,
    never a problem of the input."""


def _intersect(a: Interval, b: Interval) -> Interval:
    """``a & b``: two enclosures of the same (non-empty) set always meet."""
    both = a & b
    bad = np.flatnonzero(both.lo > both.hi)
    if bad.size:
        i = bad[0]
        raise UnsoundError(f"neuron {i}: interval [{a.lo[i]:.17g}, {a.hi[i]:.17g}] and the "
                           f"backward bound [{b.lo[i]:.17g}, {b.hi[i]:.17g}] are disjoint")
    return both


def _widen(lo: np.ndarray, hi: np.ndarray) -> Interval:
    slack = ELEMENTWISE_ULPS * UNIT_ROUNDOFF
    return Interval(lo - (slack * np.abs(lo) + TINY), hi + (slack * np.abs(hi) + TINY))


def activation_interval(act: Activation, iv: Interval) -> Interval:
    """An interval containing ``act(v)`` for every ``v`` in ``iv`` (see module docstring)."""
    n_out = act.out_dim(iv.lo.size)
    if not iv.bounded:
        return Interval.unbounded(n_out)
    if isinstance(act, SlopeIntervals):
        act = act.base  # the same map: its values do not depend on the local slopes
    if isinstance(act, SlopeRestricted):
        if act.alpha >= 0:  # nondecreasing: difference quotients are >= alpha >= 0
            out = _widen(act.apply(iv.lo[None])[0], act.apply(iv.hi[None])[0])
        else:
            mid, rad = iv.mid_rad()
            f = act.apply(mid[None])[0]
            spread = _up(act.lipschitz() * rad * (1.0 + 4.0 * UNIT_ROUNDOFF))
            out = _widen(f - spread, f + spread)
    elif isinstance(act, (GroupSort, MaxPool2d)):  # monotone in every argument, exact in floats
        out = Interval(act.apply(iv.lo[None])[0], act.apply(iv.hi[None])[0])
    elif isinstance(act, Householder):  # each pair keeps its l2 norm
        big = np.maximum(np.abs(iv.lo), np.abs(iv.hi)).reshape(-1, 2)
        norm = _up(np.sqrt(np.sum(big * big, axis=1)) * (1.0 + 4.0 * UNIT_ROUNDOFF))
        out = Interval(-np.repeat(norm, 2), np.repeat(norm, 2))
    elif isinstance(act, Lipschitz) and act.name == "softmax":
        out = Interval(np.zeros(n_out), np.ones(n_out))
    else:
        return Interval.unbounded(n_out)
    if not out.bounded:  # an overflow inside the activation
        return Interval.unbounded(n_out)
    return out


#: Largest relaxation matrix (rows x layer width) the backward pass forms.
CROWN_MAX_ENTRIES = 1 << 24


def _piecewise_slope(act: Activation) -> float | None:
    """``a`` for ReLU (0) and leaky ReLU with ``0 <= a <= 1`` (convex, kink at 0), else None."""
    base = act.base if isinstance(act, SlopeIntervals) else act
    if isinstance(base, SlopeRestricted):
        if base.name == "relu":
            return 0.0
        if base.name == "leaky_relu" and 0.0 <= base.params[0] <= 1.0:
            return base.params[0]
    return None


def crown_applies(network: Network) -> bool:
    """A chain whose hidden nodes are all ReLU / leaky ReLU (see :func:`crown_bounds`)."""
    return network.is_sequential and all(_piecewise_slope(n.activation) is not None
                                         for n in network.nodes)


def _relaxation(a: float, iv: Interval):
    """Per neuron ``(s_lo, s_up, t_up)``: ``s_lo v <= phi(v) <= s_up v + t_up`` on
    ``[lo, hi]`` for ``phi = max(v, a v)``, exact lines for stable neurons. The chord's slope
    and intercept are rounded up (a steeper line through the chord's left end, raised, stays
    above the convex ``phi`` on the interval)."""
    lo, hi = iv.lo, iv.hi
    s_lo = np.where(hi <= 0, a, np.where(lo >= 0, 1.0, np.where(hi > -lo, 1.0, a)))
    s_up, t_up = s_lo.copy(), np.zeros_like(lo)
    mixed = (lo < 0) & (hi > 0)
    if mixed.any():
        l, u = lo[mixed], hi[mixed]
        grow = 1.0 + 8.0 * UNIT_ROUNDOFF
        chord = _up(u / (u - l) * grow)  # >= u / (u - l), the ReLU chord
        slope = _up((a + (1.0 - a) * chord) * grow)  # >= (u - a l) / (u - l)
        s_up[mixed] = slope
        t_up[mixed] = _up((slope - a) * (-l) * grow)  # >= (s - a)(-l): the line meets (l, a l)
    return s_lo, s_up, t_up


def _magnitude(iv: Interval) -> np.ndarray:
    return np.maximum(np.abs(iv.lo), np.abs(iv.hi))


def crown_bounds(network: Network, region: Region, m: int, pre: list[Interval],
                 post: list[Interval]) -> Interval | None:
    """Bounds of node ``m``'s pre-activation by the backward linear relaxation (module
    docstring), given the intervals ``pre`` of nodes ``1..m-1`` and ``post`` (input box,
    node outputs). None when the relaxation matrix would be too large.

    *Rounding.* Each step computes ``G = L * s``, ``L' = G W`` and the constants in float64;
    the exact inequality holds for the exact products, and each difference is bounded by
    ``u |G| |v|``, ``g |G| |W| |x|`` (:func:`_rounding`, ``|W|`` through the certified
    ``abs_rmatmat_bound``) and ``gamma_n`` times the sums' absolute values, with ``|v| <=
    max(|lo|, |hi|)`` from IBP; the total is subtracted from the bound.
    """
    layers = network.chain()
    op, bias = layers[m - 1].weight, layers[m - 1].bias
    n, width = op.n_out, op.n_in
    if 2 * n * max(network.widths[:m]) > CROWN_MAX_ENTRIES:
        return None
    # §8: every rounded step below is charged to err (Higham's gamma_n bounds)
    lam = op.rmatmat(np.eye(n))  # rows of W_m over x_{m-1} (exact for a Dense weight)
    err0 = _rounding(op) * op.abs_matmat_bound(_magnitude(post[m - 1])[None])[0]
    lam = np.vstack([lam, -lam])
    const = np.concatenate([bias, -bias])
    c_abs = np.abs(const)
    err = np.concatenate([err0, err0])
    for j in range(m - 1, 0, -1):  # x_j = phi(v_j), v_j = W_j x_{j-1} + b_j
        s_lo, s_up, t_up = _relaxation(_piecewise_slope(network.nodes[j - 1].activation),
                                       pre[j - 1])
        pos = lam >= 0
        g = lam * np.where(pos, s_lo, s_up)
        shift = np.where(pos, 0.0, lam) @ t_up  # upper lines' intercepts, where L < 0
        w = layers[j - 1].weight
        lin = g @ layers[j - 1].bias
        nxt = w.rmatmat(g)
        absg = np.abs(g)
        err += (1.01 * UNIT_ROUNDOFF) * (absg @ _magnitude(pre[j - 1]))
        err += _rounding(w) * (w.abs_rmatmat_bound(absg) @ _magnitude(post[j - 1]))
        err += gamma(width + 2) * (np.abs(lam) @ t_up + absg @ np.abs(layers[j - 1].bias))
        const, c_abs = const + shift + lin, c_abs + np.abs(shift) + np.abs(lin)
        lam, width = nxt, w.n_in
    mid, rad = post[0].mid_rad()
    val = lam @ mid - np.abs(lam) @ rad
    err += gamma(width + 2) * (np.abs(lam) @ (np.abs(mid) + rad))
    if isinstance(region, Ball):
        c = region.center
        ball = lam @ c - _up(region.radius * np.sqrt(np.einsum("ij,ij->i", lam, lam))
                             * (1.0 + gamma(width + 4)))
        ball -= gamma(width + 2) * (np.abs(lam) @ np.abs(c))  # its rounding, charged here
        val = np.maximum(val, ball)  # the better of the two minima (err applies to both)
    total = val + const
    slack = err * (1.0 + 1e-6) + gamma(2 * m + 4) * (c_abs + np.abs(val) + np.abs(total)) + TINY
    low = np.nextafter(total - slack, -np.inf)
    return Interval(low[:n], -low[n:])


def propagate(network: Network, region: Region, crown: bool = True) -> Bounds:
    """Bounds of every node's pre-activation over ``region``: IBP, tightened by
    :func:`crown_bounds` on ReLU / leaky ReLU chains unless ``crown`` is False.

    >>> import numpy as np
    >>> from lipverify import Network, SlopeRestricted
    >>> from lipverify.regions import Box
    >>> net = Network.sequential([np.array([[1.0, -1.0]]), np.array([[2.0]])],
    ...                          [SlopeRestricted.named("relu")])
    >>> b = propagate(net, Box(np.array([1.0, 0.0]), np.array([2.0, 0.5])))
    >>> [round(float(v), 9) for v in (b.pre[0].lo[0], b.pre[0].hi[0])]
    [0.5, 2.0]
    """
    region.check_width(network)
    prop = _Propagator(region)
    post = [Interval(*region.box())]
    pre = []
    backward = crown and crown_applies(network)
    for m, node in enumerate(network.nodes, start=1):
        iv = prop.affine(node.pre, post)
        if backward and m > 1 and iv.bounded:
            tight = crown_bounds(network, region, m, pre, post)
            iv = iv if tight is None else _intersect(iv, tight)
        pre.append(iv)
        post.append(activation_interval(node.activation, iv))
    return Bounds(tuple(pre), tuple(post), prop.affine(network.output, post))
