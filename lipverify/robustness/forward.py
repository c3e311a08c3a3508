"""Logits with a rigorous bound on their float64 rounding error, and sound margins.

A certified radius ``m / L`` is a guarantee only if ``m`` is a lower bound on the *exact*
margin. :func:`forward_enclosure` evaluates the network in float64 and carries, entry by entry,
a radius ``r`` with ``|exact - computed| <= r`` (a midpoint-radius enclosure):

* **linear term** ``W z`` with ``z`` known to ``+- r_z``: the computed ``fl(W z)`` is within
  ``|W| r_z + k gamma_N |W| |z|`` of the exact ``W z_exact`` (Higham's dot-product bound,
  FORMULATIONS.md §8; ``k`` the operator's rounding depth + 2, ``N`` a generous count of
  the products per entry); ``|W| x`` comes from the certified ``abs_matmat_bound`` (§6.3),
  which never forms a dense matrix for structured operators;
* **sums** of terms and the bias: ``gamma_{T+1} (|sum| + sum |terms|)`` more;
* **slope-restricted activations** (§0): ``max(|alpha|, |beta|) r`` plus 16 ulp of the output
  (numpy's elementwise functions are accurate to a few ulp);
* **GroupSort / MaxPool**: sorting and taking maxima are exact on floats and 1-Lipschitz in
  the max norm per group / window, so the radius is the group's (window's) largest;
* any other 1-Lipschitz or L-Lipschitz map (Householder, a kept Softmax): ``L ||r||_2`` for
  every output, plus 16 ulp of the largest output.

Entrywise bounds alone grow by the row sums of ``|W|`` at every layer (the wrapping effect of
interval arithmetic: 1e-8 -> 54 over mnist_relu_9_200's nine layers), so an l2 bound ``s`` on
the whole error vector is carried beside them and propagated through the certified
``||W||_2`` (§6.1-6.2); every entry's error is also at most ``s``. A ReLU whose input's sign is
known despite the error is exact (0) or passes the error unchanged.

The margin ``f_y - f_j`` is then at least ``fl(f_y - f_j) - r_y - r_j`` minus its own rounding.

>>> import numpy as np
>>> from lipverify import Network
>>> net = Network.sequential([np.array([[1.0, 2.0], [3.0, -1.0]])], [])
>>> lo = sound_margins(net, np.array([[1.0, 1.0]]), np.array([0]))
>>> bool(0 < lo[0, 1] <= 1.0), float(lo[0, 0])
(True, inf)
"""

from __future__ import annotations

import numpy as np

from ..ir.activations import GroupSort, MaxPool2d, SlopeRestricted
from ..numerics import UNIT_ROUNDOFF, gamma

#: Relative error allowed for one elementwise function value (numpy: a few ulp).
ELEMENTWISE_ULPS = 16
TINY = 1e-300  # absolute slack for underflow


def _depth(op) -> int:
    """Rounded products in sequence when ``op`` is evaluated (a Compose or Sum adds up)."""
    inner = getattr(op, "ops", None)
    return sum(_depth(o) for o in inner) if inner else 1


class _Enclosure:
    """Propagates ``(mid, r, s)``: the computed values, an entrywise error bound ``r`` and an
    l2 error bound ``s`` per sample (normwise: through ``||W||_2`` instead of ``|W|``, so the
    bound does not grow by the row sums of ``|W|`` at every layer); ``r <= s`` is kept."""

    def __init__(self):
        self.norms: dict[int, float] = {}

    def norm(self, op) -> float:
        if id(op) not in self.norms:
            self.norms[id(op)] = op.l2_bound(dense_limit=4_000_000)
        return self.norms[id(op)]

    def linear(self, op, z, r, s):
        y = op.matmat(z)
        n = 4 * (op.n_in + op.n_out) + 16
        local = (_depth(op) + 2) * gamma(n) * 1.01 * op.abs_matmat_bound(np.abs(z)) + TINY
        r2 = (op.abs_matmat_bound(r) if np.any(r) else 0.0) + local
        s2 = self.norm(op) * s * (1 + 4 * UNIT_ROUNDOFF) + _l2(local)
        return y, r2, s2

    def affine(self, pre, values):
        parts = [self.linear(t.op, *values[t.source]) for t in pre.terms]
        mid = sum(p[0] for p in parts) + pre.bias
        size = sum(np.abs(p[0]) for p in parts) + np.abs(pre.bias)
        local = gamma(len(parts) + 2) * 1.01 * (size + np.abs(mid)) + TINY
        r = sum(p[1] for p in parts) + local
        s = sum(p[2] for p in parts) + _l2(local)
        return _tighten(mid, r, s)

    def activation(self, act, z, r, s):
        y = act.apply(z)
        ulps = ELEMENTWISE_ULPS * UNIT_ROUNDOFF * np.abs(y) + TINY
        grow = 1 + 4 * UNIT_ROUNDOFF
        if isinstance(act, SlopeRestricted):
            r2 = act.lipschitz() * r * grow + ulps
            if act.name == "relu":  # a sign known despite the error: exactly 0 or z
                r2 = np.where(z < -r, 0.0, np.where(z > r, r, r2))
            return _tighten(y, r2, act.lipschitz() * s * grow + _l2(ulps))
        if isinstance(act, GroupSort):
            g = act.group_size
            worst = r.reshape(r.shape[0], -1, g).max(axis=2, keepdims=True)
            r2 = np.broadcast_to(worst, (r.shape[0], r.shape[1] // g, g)).reshape(y.shape)
            return _tighten(y, r2.copy(), s)
        lip = act.lipschitz("l2") * grow
        if isinstance(act, MaxPool2d):
            return _tighten(y, act.apply(r), lip * s)
        top = ulps.max(axis=1, keepdims=True)
        s2 = lip * s + np.sqrt(y.shape[1]) * top * grow
        return _tighten(y, np.broadcast_to(s2, y.shape).copy(), s2)


def _l2(v) -> np.ndarray:
    """Upper bound on each row's l2 norm, shape (B, 1)."""
    v = np.broadcast_to(v, np.shape(v))
    return np.sqrt(np.sum(np.square(v), axis=1, keepdims=True)) * (1 + 8 * UNIT_ROUNDOFF)


def _tighten(mid, r, s):
    return mid, np.minimum(r, s), np.minimum(s, _l2(r))


def forward_enclosure(net, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(logits, radius)`` with ``|exact logits - logits| <= radius`` entrywise, for inputs
    ``x`` (B, input_dim) taken as exact float64 values."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    enc = _Enclosure()
    values = [(x, np.zeros_like(x), np.zeros((len(x), 1)))]
    for node in net.nodes:
        values.append(enc.activation(node.activation, *enc.affine(node.pre, values)))
    mid, r, _ = enc.affine(net.output, values)
    return mid, r


def sound_margins(net, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(B, K)`` lower bounds on the exact margins ``f_y(x) - f_j(x)`` (``inf`` at ``j = y``);
    a positive entry proves ``f_y > f_j`` at ``x`` itself."""
    mid, rad = forward_enclosure(net, x)
    rows = np.arange(len(mid))
    top, top_rad = mid[rows, labels][:, None], rad[rows, labels][:, None]
    diff = top - mid
    low = diff - (top_rad + rad) - gamma(3) * 1.01 * (np.abs(diff) + top_rad + rad) - TINY
    low[rows, labels] = np.inf
    return low
