"""Activation kinds with the metadata every bound method reads.

* :class:`SlopeRestricted` - elementwise, slope in ``[alpha, beta]`` (§0):
  ReLU, LeakyReLU, tanh, sigmoid, softplus, ELU, GELU, SiLU, ...
* :class:`SlopeIntervals` - the same map with per-neuron slope intervals valid on an input
  region (local bounds, :mod:`lipverify.regions`).
* :class:`GroupSort` - sorts consecutive groups (MaxMin = GroupSort(2)) (§4).
* :class:`Householder` - per pair, reflect when ``u^T v <= 0`` (§4).
* :class:`MaxPool2d` - windowed max, l2 gain ``sqrt(ceil(kh/sh) ceil(kw/sw))`` (§7).
* :class:`Lipschitz` - "1-Lipschitz, kind unknown" (or any known constant): a
  kept Softmax, an opaque module.

Elementwise functions are looked up by name in :data:`ELEMENTWISE`, one
:class:`Elementwise` record each (numpy, torch, slopes), so adding one is one entry.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from ..numerics import round_up


@dataclass(frozen=True)
class Param:
    """One parameter of an elementwise activation: its name, its default (None: required),
    whether +-inf is a meaningful value (an open clipping bound) and, besides being a number
    (never NaN), what else a good value must satisfy (``valid``, described by ``good``)."""

    name: str
    default: float | None = None
    infinite: bool = False
    valid: Callable[[float], bool] | None = None
    good: str = ""


@dataclass(frozen=True)
class Elementwise:
    """One elementwise activation: its numpy and torch forms and its slope bounds.

    ``numpy(x, *params)``; ``torch(t, x, *params)`` with ``t`` the torch module (passed in,
    so this module never imports torch); ``slopes(*params) -> (alpha, beta)`` must enclose
    every difference quotient (FORMULATIONS.md §0); ``smooth(t, x, sharpness, *params)``, for
    piecewise-linear kinds only, is a softplus surrogate whose Jacobian varies smoothly (the
    sampled lower bound's ascent, §6.4). ``params`` declares the parameters (count, defaults,
    ranges); ``check(*params)`` returns what is wrong with them together (e.g. min > max), or
    None.
    """

    numpy: Callable
    torch: Callable
    slopes: Callable[..., tuple[float, float]]
    smooth: Callable | None = None
    params: tuple[Param, ...] = ()
    check: Callable[..., str | None] | None = None

    def arguments(self, name: str, values) -> tuple[float, ...]:
        """``values`` checked against :attr:`params`, as floats; a wrong count, a non-number,
        NaN, an unwanted infinity or an out-of-range value is a :class:`UsageError` naming the
        parameter."""
        values = tuple(values)
        spec = self.params
        required = sum(p.default is None for p in spec)
        if not required <= len(values) <= len(spec):
            names = ", ".join(p.name for p in spec) or "none"
            count = f"{required}" if required == len(spec) else f"{required} to {len(spec)}"
            raise UsageError(f"activation {name} takes {count} parameter(s) ({names}), "
                             f"got {len(values)}")
        out = []
        for p, v in zip(spec, values):
            if not isinstance(v, numbers.Real) or isinstance(v, (bool, np.bool_)):
                raise UsageError(f"activation {name}: parameter {p.name} must be a number, "
                                 f"got {v!r}")
            v = float(v)
            finite = math.isfinite(v) or (p.infinite and not math.isnan(v))
            if not finite or (p.valid is not None and not p.valid(v)):
                good = p.good or ("a number, not NaN" if p.infinite else "a finite number")
                raise UsageError(f"activation {name}: parameter {p.name} must be {good}, "
                                 f"got {v:g}")
            out.append(v)
        problem = self.check(*out) if self.check is not None else None
        if problem:
            raise UsageError(f"activation {name}: {problem}")
        return tuple(out)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _softplus(x, beta=1.0):
    return np.logaddexp(0.0, beta * x) / beta


def _elu(x, alpha=1.0):
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


def _t_softplus(t, x, beta=1.0):
    # log(1 + e^z) in a form whose first and second derivatives never overflow
    z = beta * x
    return (t.relu(z) + t.log1p(t.exp(-z.abs()))) / beta


def _sp(t, x, beta):
    return t.nn.functional.softplus(x * beta) / beta  # beta: a float or a (B, 1) tensor


def _outward(lo: float, hi: float) -> tuple[float, float]:
    """Slope bounds computed to ~1e-16 relative, widened by 1e-14 so they enclose the exact
    interval whatever the libm's last bits."""
    return lo - 1e-14 * max(1.0, abs(lo)), hi + 1e-14 * max(1.0, abs(hi))


def _gelu_slopes() -> tuple[float, float]:
    """GELU ``g(x) = x Phi(x)``: ``g' = Phi(x) + x phi(x)``, ``g'' = phi(x) (2 - x^2)``, so the
    slope is extreme at ``x = +-sqrt 2``; ``g'(x) + g'(-x) = 1``, hence
    ``beta = Phi(sqrt 2) + sqrt 2 phi(sqrt 2) = 1.12884...`` and ``alpha = 1 - beta``
    (``alpha beta < 0``: the QC of §0 with a negative lower slope)."""
    r = math.sqrt(2.0)
    beta = 0.5 * (1.0 + math.erf(1.0)) + r * math.exp(-1.0) / math.sqrt(2.0 * math.pi)
    return _outward(1.0 - beta, beta)


def _silu_slopes() -> tuple[float, float]:
    """SiLU ``g(x) = x s(x)``, ``s`` the logistic function: ``g' = s (1 + x (1 - s))`` and
    ``g'' = s (1 - s) (2 - x tanh(x / 2))``, so the slope is extreme where
    ``x tanh(x / 2) = 2`` (``x* = 2.39935...``, by Newton's method); ``g'(x) + g'(-x) = 1``,
    hence ``beta = g'(x*) = 1.09984...`` and ``alpha = 1 - beta``."""
    x = 2.4
    for _ in range(50):
        th = math.tanh(x / 2.0)
        step = (x * th - 2.0) / (th + x * (1.0 - th * th) / 2.0)
        x -= step
        if abs(step) < 1e-16:
            break
    sig = 1.0 / (1.0 + math.exp(-x))
    beta = sig * (1.0 + x * (1.0 - sig))
    return _outward(1.0 - beta, beta)


def _gelu(x, k=1.0):
    """``x Phi(k x)`` (``k = 1``: GELU; exporters spell it ``0.5 x (1 + erf(x / c))``, which is
    ``k = sqrt 2 / c``). Its slopes do not depend on ``k``: ``g'(x) = Phi(u) + u phi(u)``
    with ``u = k x``."""
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(k * x / math.sqrt(2.0)))


def _clip_bounds(lo: float = -1.0, hi: float = 1.0) -> str | None:
    if lo > hi:
        return f"min {lo:g} is above max {hi:g}"
    if lo == math.inf or hi == -math.inf:
        return f"clipping to [{lo:g}, {hi:g}] leaves no finite value"
    return None


def _ordered_slopes(a: float, b: float) -> str | None:
    return None if a <= b else f"lower slope {a:g} is above upper slope {b:g}"


#: name -> :class:`Elementwise`. Adding an activation is one entry here (and, for ONNX, one
#: converter line naming it).
ELEMENTWISE: dict[str, Elementwise] = {
    "relu": Elementwise(lambda x: np.maximum(x, 0.0), lambda t, x: t.relu(x),
                        lambda: (0.0, 1.0), smooth=_sp),
    "leaky_relu": Elementwise(
        lambda x, a: np.where(x >= 0, x, a * x), lambda t, x, a: t.where(x >= 0, x, a * x),
        lambda a: (min(a, 1.0), max(a, 1.0)),
        smooth=lambda t, x, b, a: a * x + (1.0 - a) * _sp(t, x, b), params=(Param("alpha"),)),
    "tanh": Elementwise(np.tanh, lambda t, x: t.tanh(x), lambda: (0.0, 1.0)),
    "sigmoid": Elementwise(_sigmoid, lambda t, x: 0.5 * (1.0 + t.tanh(0.5 * x)),
                           lambda: (0.0, 0.25)),
    "softplus": Elementwise(_softplus, _t_softplus, lambda beta=1.0: (0.0, 1.0),
                            params=(Param("beta", 1.0, valid=lambda v: v > 0,
                                          good="a finite number > 0"),)),
    "elu": Elementwise(
        _elu, lambda t, x, a=1.0: t.where(x > 0, x, a * t.expm1(t.clamp(x, max=0.0))),
        lambda a=1.0: (0.0, max(1.0, a)) if a >= 0 else (a, 1.0), params=(Param("alpha", 1.0),)),
    "abs": Elementwise(np.abs, lambda t, x: t.abs(x), lambda: (-1.0, 1.0),
                       smooth=lambda t, x, b: _sp(t, x, b) + _sp(t, -x, b)),
    "hardtanh": Elementwise(
        lambda x, lo=-1.0, hi=1.0: np.clip(x, lo, hi),
        lambda t, x, lo=-1.0, hi=1.0: t.clamp(x, lo, hi), lambda lo=-1.0, hi=1.0: (0.0, 1.0),
        smooth=lambda t, x, b, lo=-1.0, hi=1.0: lo + _sp(t, x - lo, b) - _sp(t, x - hi, b),
        params=(Param("min", -1.0, infinite=True), Param("max", 1.0, infinite=True)),
        check=_clip_bounds),
    "identity": Elementwise(lambda x: x, lambda t, x: x, lambda: (1.0, 1.0)),
    # Any activation with slopes in [a, b]; the forward pass uses the piecewise-linear
    # member (slope a below 0, b above), bounds hold for the whole class.
    "slope": Elementwise(
        lambda x, a, b: np.where(x >= 0, b * x, a * x),
        lambda t, x, a, b: t.where(x >= 0, b * x, a * x), lambda a, b: (a, b),
        smooth=lambda t, x, beta, a, b: a * x + (b - a) * _sp(t, x, beta),
        params=(Param("alpha"), Param("beta")), check=_ordered_slopes),
    "gelu": Elementwise(_gelu, lambda t, x, k=1.0: 0.5 * x * (1.0 + t.erf(k * x / math.sqrt(2.0))),
                        lambda k=1.0: _gelu_slopes(), params=(Param("k", 1.0),)),
    "silu": Elementwise(lambda x: x * _sigmoid(x), lambda t, x: t.nn.functional.silu(x),
                        _silu_slopes),
}


class Activation:
    """Abstract activation kind."""

    #: Short machine name of the kind (``slope``, ``groupsort``...).
    kind: str = ""

    def apply(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def out_dim(self, n_in: int) -> int:
        return n_in

    def lipschitz(self, norm: str = "l2") -> float:  # pragma: no cover - abstract
        """Lipschitz constant of the activation alone in ``norm``."""
        raise NotImplementedError

    @property
    def elementwise(self) -> bool:
        return False

    def describe(self) -> str:
        return self.kind


@dataclass(frozen=True)
class SlopeRestricted(Activation):
    """Elementwise activation with slopes in ``[alpha, beta]``.

    >>> relu = SlopeRestricted.named("relu")
    >>> relu.alpha, relu.beta
    (0.0, 1.0)
    >>> SlopeRestricted.named("leaky_relu", 0.01).describe()
    'leaky_relu(0.01) slope [0.01, 1]'
    """

    name: str
    alpha: float
    beta: float
    params: tuple[float, ...] = ()
    kind = "slope"

    def __post_init__(self):
        a, b = self.alpha, self.beta
        if not (math.isfinite(a) and math.isfinite(b) and a <= b):
            raise UsageError(f"activation {self.name}: slope interval [{a:g}, {b:g}] must be "
                             "finite with alpha <= beta")

    @classmethod
    def named(cls, name: str, *params: float) -> SlopeRestricted:
        """The activation ``name`` with ``params``; an unknown name, a wrong parameter count or
        a NaN, infinite or out-of-range parameter is a :class:`UsageError` saying which."""
        if name not in ELEMENTWISE:
            raise UsageError(f"unknown elementwise activation {name!r}; known: "
                             + ", ".join(ELEMENTWISE))
        params = ELEMENTWISE[name].arguments(name, params)
        alpha, beta = ELEMENTWISE[name].slopes(*params)
        return cls(name, float(alpha), float(beta), params)

    @property
    def elementwise(self) -> bool:
        return True

    def apply(self, x):
        return ELEMENTWISE[self.name].numpy(x, *self.params)

    def lipschitz(self, norm="l2"):
        return max(abs(self.alpha), abs(self.beta))

    def describe(self):
        args = f"({', '.join(f'{p:g}' for p in self.params)})" if self.params else ""
        return f"{self.name}{args} slope [{self.alpha:g}, {self.beta:g}]"


@dataclass(frozen=True, eq=False)
class SlopeIntervals(Activation):
    """An elementwise activation ``base`` whose neuron ``i`` is known to see only slopes in
    ``[alpha[i], beta[i]]``, a subset of the base's ``[alpha, beta]``: true for inputs in a
    region whose pre-activation bounds gave these intervals (:mod:`lipverify.regions.local`).
    Its QC is the per-neuron §1.1 QC; the map itself is the base's, and a bound on a network
    carrying it holds for pairs of inputs in that region only.

    >>> act = SlopeIntervals(SlopeRestricted.named("relu"), np.array([0.0, 1.0, 0.0]),
    ...                      np.array([0.0, 1.0, 1.0]))
    >>> act.describe()
    'relu slope [0, 1], local: 2 of 3 neurons fixed'
    >>> act.apply(np.array([[-1.0, 2.0, 3.0]])).tolist()
    [[0.0, 2.0, 3.0]]
    """

    base: SlopeRestricted
    alpha: np.ndarray
    beta: np.ndarray
    kind = "slope"

    def __post_init__(self):
        if not isinstance(self.base, SlopeRestricted):
            raise UsageError(f"local slope intervals need an elementwise slope-restricted base "
                             f"activation, got {type(self.base).__name__}")
        a = np.array(self.alpha, dtype=np.float64).ravel()
        b = np.array(self.beta, dtype=np.float64).ravel()
        name = self.base.describe()
        if a.shape != b.shape or a.size == 0:
            raise UsageError(f"{name}: local slopes need two non-empty arrays of one length, "
                             f"got {a.shape} and {b.shape}")
        if not (np.isfinite(a).all() and np.isfinite(b).all()) or (a > b).any():
            raise UsageError(f"{name}: local slopes must be finite with alpha <= beta")
        if (a < self.base.alpha).any() or (b > self.base.beta).any():
            raise UsageError(f"{name}: local slopes must lie inside the activation's slope "
                             f"interval [{self.base.alpha:g}, {self.base.beta:g}]")
        a.setflags(write=False)
        b.setflags(write=False)
        object.__setattr__(self, "alpha", a)
        object.__setattr__(self, "beta", b)

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.base == other.base and np.array_equal(self.alpha, other.alpha)
                and np.array_equal(self.beta, other.beta))

    def __hash__(self):
        return hash((self.base, self.alpha.tobytes(), self.beta.tobytes()))

    @property
    def elementwise(self) -> bool:
        return True

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def params(self) -> tuple[float, ...]:
        return self.base.params

    @property
    def fixed(self) -> int:
        """Neurons whose slope is one number (inactive or active ReLU, for instance)."""
        return int(np.count_nonzero(self.alpha == self.beta))

    def apply(self, x):
        return self.base.apply(x)

    def lipschitz(self, norm="l2"):
        return float(max(np.abs(self.alpha).max(), np.abs(self.beta).max()))

    def describe(self):
        return f"{self.base.describe()}, local: {self.fixed} of {self.alpha.size} neurons fixed"


@dataclass(frozen=True)
class GroupSort(Activation):
    """Sort consecutive groups of ``group_size`` entries (ascending unless ``descending``).

    >>> GroupSort(2).apply(np.array([[3.0, 1.0, -1.0, 2.0]]))
    array([[ 1.,  3., -1.,  2.]])
    """

    group_size: int
    descending: bool = False
    kind = "groupsort"

    def apply(self, x):
        bsz, n = x.shape
        if n % self.group_size:
            raise ValueError(f"GroupSort({self.group_size}) on width {n}")
        out = np.sort(x.reshape(bsz, n // self.group_size, self.group_size), axis=2)
        if self.descending:
            out = out[:, :, ::-1]
        return out.reshape(bsz, n)

    def lipschitz(self, norm="l2"):
        return 1.0

    def describe(self):
        name = "maxmin" if self.group_size == 2 else f"groupsort({self.group_size})"
        return name + (" desc" if self.descending else "")


@dataclass(frozen=True)
class Householder(Activation):
    """Per pair ``v``: ``v`` if ``u^T v > 0`` else ``(I - 2 u u^T) v``, ``u = (cos t, sin t)``."""

    theta: float
    kind = "householder"

    @property
    def u(self) -> np.ndarray:
        return np.array([math.cos(self.theta), math.sin(self.theta)])

    def apply(self, x):
        bsz, n = x.shape
        v = x.reshape(bsz, n // 2, 2)
        u = self.u
        proj = v @ u
        refl = v - 2.0 * proj[..., None] * u
        return np.where(proj[..., None] > 0, v, refl).reshape(bsz, n)

    def lipschitz(self, norm="l2"):
        return 1.0 if norm == "l2" else math.sqrt(2.0)


@dataclass(frozen=True)
class MaxPool2d(Activation):
    """Max pooling over a ``(c, H, W)`` input; ``pads`` (top, left, bottom, right) are -inf."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]
    in_shape: tuple[int, int, int]
    kind = "maxpool"

    @property
    def out_shape(self) -> tuple[int, int, int]:
        c, h, w = self.in_shape
        t, left, b, r = self.pads
        ho = (h + t + b - self.kernel[0]) // self.stride[0] + 1
        wo = (w + left + r - self.kernel[1]) // self.stride[1] + 1
        return (c, ho, wo)

    def out_dim(self, n_in):
        return math.prod(self.out_shape)

    def apply(self, x):
        bsz = x.shape[0]
        c, h, w = self.in_shape
        t, left, b, r = self.pads
        xp = np.full((bsz, c, h + t + b, w + left + r), -np.inf)
        xp[:, :, t : t + h, left : left + w] = x.reshape(bsz, c, h, w)
        _, ho, wo = self.out_shape
        out = np.full((bsz, c, ho, wo), -np.inf)
        for p in range(self.kernel[0]):
            for q in range(self.kernel[1]):
                win = xp[
                    :,
                    :,
                    p : p + self.stride[0] * (ho - 1) + 1 : self.stride[0],
                    q : q + self.stride[1] * (wo - 1) + 1 : self.stride[1],
                ]
                out = np.maximum(out, win)
        return out.reshape(bsz, -1)

    def lipschitz(self, norm="l2"):
        # §7: each input lies in at most ceil(kh/sh) * ceil(kw/sw) windows.
        overlap = math.ceil(self.kernel[0] / self.stride[0]) * math.ceil(
            self.kernel[1] / self.stride[1]
        )
        # rounded upward: an l2 gain must never be underestimated
        return round_up(math.sqrt(overlap)) if norm == "l2" else 1.0

    def describe(self):
        return f"maxpool {self.kernel[0]}x{self.kernel[1]} s{self.stride[0]}"


@dataclass(frozen=True)
class Lipschitz(Activation):
    """A map known only by its Lipschitz constant (default 1), e.g. a kept Softmax."""

    name: str
    constant: float = 1.0
    kind = "lipschitz"

    def apply(self, x):
        if self.name == "softmax":
            z = x - x.max(axis=1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(axis=1, keepdims=True)
        raise NotImplementedError(f"no forward pass for opaque activation {self.name!r}")

    def lipschitz(self, norm="l2"):
        return self.constant

    def describe(self):
        return f"{self.name} ({self.constant:g}-Lipschitz)"
