"""Slope-restricted elementwise activations (FORMULATIONS.md §0, §1.1): ReLU, leaky ReLU, tanh,
sigmoid, GELU, SiLU, ...

The slopes are one interval for the whole layer (floats), or one interval per neuron (arrays
of length ``n``): the local bounds of :mod:`lipverify.regions` give neuron ``i`` its own
``[alpha_i, beta_i]``. §1.1 then reads ``2 sum_i t_i (dx_i - alpha_i dv_i)(beta_i dv_i - dx_i)
>= 0``, true term by term whenever each neuron's difference quotient lies in its interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from .base import QC, Blocks


def _abs(x):
    return np.abs(x) if isinstance(x, np.ndarray) else abs(x)


def _per_neuron(x, n: int, what: str) -> np.ndarray:
    arr = np.array(x, dtype=np.float64).ravel()
    if arr.shape != (n,) or not np.isfinite(arr).all():
        raise UsageError(f"per-neuron slope {what} must be {n} finite numbers, got shape "
                         f"{arr.shape}")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class SlopeQC(QC):
    """§1.1: ``Gvv = -2ab T``, ``Gvw = (a+b) T``, ``Gww = -2T``, ``T = diag(t) >= 0``.

    With ``per_neuron=False`` T is ``tau I`` (LipSDP-Layer, §1.3). With ``block > 1``
    consecutive runs of ``block`` neurons share one multiplier: per-channel multipliers
    ``T = diag(t) (x) I_{H'W'}`` of a conv layer (§7), sound like any diagonal T >= 0.
    ``alpha`` and ``beta`` are floats, or arrays of ``n`` per-neuron slopes (then ``a`` and
    ``b`` above are diagonal matrices, which commute with T).
    """

    kind = "slope"
    slope_restricted = True

    n: int
    alpha: float | np.ndarray
    beta: float | np.ndarray
    per_neuron: bool = True
    block: int = 1

    def __post_init__(self):
        if np.ndim(self.alpha) or np.ndim(self.beta):  # per-neuron slopes
            a = _per_neuron(self.alpha, self.n, "alpha")
            b = _per_neuron(self.beta, self.n, "beta")
            if (a > b).any():
                raise UsageError("per-neuron slopes need alpha <= beta for every neuron")
            object.__setattr__(self, "alpha", a)
            object.__setattr__(self, "beta", b)

    @property
    def per_neuron_slopes(self) -> bool:
        return isinstance(self.alpha, np.ndarray)

    # equality and hashing as a frozen dataclass's, with arrays compared by value
    def _key(self) -> tuple:
        if not self.per_neuron_slopes:
            return (self.n, self.alpha, self.beta, self.per_neuron, self.block)
        return (self.n, ("per-neuron", self.alpha.tobytes()), ("per-neuron", self.beta.tobytes()),
                self.per_neuron, self.block)

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def num_params(self, per_neuron: bool | None = None) -> int:
        return self.n // self.block if self.per_neuron else 1

    def expand(self, p):
        p = np.asarray(p, dtype=np.float64)
        return np.repeat(p, self.n // p.size) if p.size != self.n else p

    def _expansion(self) -> np.ndarray:
        return np.kron(np.eye(self.num_params()), np.ones((self.n // self.num_params(), 1)))

    def project(self, p):
        return np.maximum(np.asarray(p, dtype=np.float64), 0.0)

    def blocks(self, p):
        t = self.expand(p)
        a, b = self.alpha, self.beta
        return Blocks(-2.0 * a * b * t, (a + b) * t, -2.0 * t)

    def blocks_abs(self, p):
        t = np.abs(self.expand(p))
        a, b = _abs(self.alpha), _abs(self.beta)
        return Blocks(2.0 * a * b * t, (a + b) * t, 2.0 * t)

    def cvx_blocks(self, p):
        """(Gvv, Gvw, Gww) as cvxpy matrices of the multiplier variable ``p``."""
        import cvxpy as cp

        k = self.num_params()
        a, b = self.alpha, self.beta
        if self.per_neuron_slopes:  # diag(coef * t), t the multipliers expanded per neuron
            t = p if k == self.n else self._expansion() @ p
            return (cp.diag(cp.multiply(-2.0 * a * b, t)), cp.diag(cp.multiply(a + b, t)),
                    -2.0 * cp.diag(t))
        t = cp.diag(p) if k == self.n else (p * np.eye(self.n) if k == 1
                                            else cp.diag(self._expansion() @ p))
        return -2.0 * a * b * t, (a + b) * t, -2.0 * t

    def constraints(self, p):
        return [p >= 0]

    def lower_bounds(self):
        return [0.0] * self.num_params()

    def from_layer(self, p_layer) -> np.ndarray:
        """Per-neuron multipliers equal to a layer-wide solution (same LMI, same rho*)."""
        return np.full(self.num_params(), float(np.ravel(p_layer)[0]))

    @property
    def anchor_factor(self) -> float:
        """Growth of the anchor multiplier through this layer (see ChainLMI.anchor); per-neuron
        slopes take each term's largest value (the norms of ``diag(ab)`` and ``diag(a+b)``)."""
        a, b = self.alpha, self.beta
        if self.per_neuron_slopes:
            return float(2.0 * np.max(np.abs(a * b)) + np.max((a + b) ** 2))
        return 2.0 * abs(a * b) + (a + b) ** 2

    def anchor_params(self, x: float) -> np.ndarray:
        """Multipliers with ``-Gww = 2 x I`` and the smallest other blocks."""
        return np.full(self.num_params(), x)

    def value_grad(self, v, w):
        """d/dp of the QC value ``[v; w]^T G(p) [v; w]`` (linear in p), summed over the
        columns when ``v``, ``w`` are matrices (one column per vector)."""
        a, b = self.alpha, self.beta
        if self.per_neuron_slopes and np.ndim(v) == 2:
            a, b = a[:, None], b[:, None]
        per = -2.0 * a * b * v * v + 2.0 * (a + b) * v * w - 2.0 * w * w
        per = per.sum(axis=1) if per.ndim == 2 else per
        return per.reshape(self.num_params(), -1).sum(axis=1)


def make(act, n: int, per_neuron: bool, block: int = 1) -> SlopeQC:
    """The registry factory: slopes ``[alpha, beta]`` of ``act`` (per neuron for
    :class:`~lipverify.ir.activations.SlopeIntervals`)."""
    return SlopeQC(n, act.alpha, act.beta, per_neuron, block)
