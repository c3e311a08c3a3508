"""Input regions for local Lipschitz bounds: an l-infinity :class:`Box` and an l2 :class:`Ball`
(optionally clipped to a domain box, e.g. pixels in [0, 1]).

A region is immutable data: validated on construction (finite, non-empty, consistent shapes),
checked against a network's input width, able to give an enclosing box and to sample its own
points (for the soundness self-checks and the sampled local lower bound).

>>> import numpy as np
>>> box = Box.around(np.array([0.5, 0.0]), 0.1, domain=(0.0, 1.0))
>>> box.lo.tolist(), box.hi.tolist()
([0.4, 0.0], [0.6, 0.1])
>>> Ball(np.zeros(3), 0.5).describe()["kind"]
'ball'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError


def _vector(x, what: str) -> np.ndarray:
    """``x`` as a read-only, finite, non-empty float64 vector (flattened)."""
    try:
        arr = np.array(x, dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{what} must be an array of numbers: {exc}") from None
    if arr.size == 0:
        raise UsageError(f"{what} is empty: a region needs at least one input coordinate")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise UsageError(f"{what} has {bad.size} NaN/Inf entr{'y' if bad.size == 1 else 'ies'} "
                         f"(first at index {bad[0]}: {arr[bad[0]]}); give finite numbers")
    arr.setflags(write=False)
    return arr


def _ordered(lo: np.ndarray, hi: np.ndarray, what: str) -> None:
    bad = np.flatnonzero(lo > hi)
    if bad.size:
        i = bad[0]
        raise UsageError(f"{what} is empty: lower bound {lo[i]:g} is above upper bound {hi[i]:g} "
                         f"at index {i} ({bad.size} such entries)")


class Region:
    """Abstract input region (a :class:`Box` or a :class:`Ball`)."""

    kind: str = ""

    @property
    def dim(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def box(self) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        """``(lo, hi)``: a box containing the region."""
        raise NotImplementedError

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:  # pragma: no cover
        """``count`` points of the region, ``(count, dim)``."""
        raise NotImplementedError

    def describe(self) -> dict:  # pragma: no cover - abstract
        """A small JSON-able summary (for a result's details)."""
        raise NotImplementedError

    def check_width(self, network) -> None:
        """A :class:`UsageError` when the region's width is not the network's input width."""
        if self.dim != network.input_dim:
            raise UsageError(f"the {self.kind} has width {self.dim} but {network.name} takes "
                             f"inputs of width {network.input_dim} (shape {network.input_shape})")


@dataclass(frozen=True, eq=False)
class Box(Region):
    """The l-infinity box ``{x : lo <= x <= hi}`` (entrywise; arrays are flattened)."""

    lo: np.ndarray
    hi: np.ndarray
    kind = "box"

    def __post_init__(self):
        lo, hi = _vector(self.lo, "box lower bound"), _vector(self.hi, "box upper bound")
        if lo.shape != hi.shape:
            raise UsageError(f"box bounds have different sizes: {lo.size} lower, {hi.size} upper")
        _ordered(lo, hi, "the box")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    @classmethod
    def around(cls, center, eps: float, domain: tuple | None = None) -> Box:
        """``[center - eps, center + eps]``, intersected with ``domain = (lo, hi)`` if given."""
        c = _vector(center, "box center")
        if not (isinstance(eps, (int, float, np.floating, np.integer)) and math.isfinite(eps)
                and eps >= 0):
            raise UsageError(f"box radius eps must be a finite number >= 0, got {eps!r}")
        lo, hi = c - eps, c + eps
        if domain is not None:
            dlo, dhi = _domain(domain, c.size)
            lo, hi = np.maximum(lo, dlo), np.minimum(hi, dhi)
        return cls(lo, hi)

    @property
    def dim(self) -> int:
        return self.lo.size

    def box(self):
        return self.lo, self.hi

    def sample(self, count, rng):
        """Uniform points, every other one a random vertex (where bounds are often reached)."""
        u = rng.uniform(size=(count, self.dim))
        u[1::2] = np.round(u[1::2])
        return np.clip(self.lo + u * (self.hi - self.lo), self.lo, self.hi)

    def describe(self):
        half = (self.hi - self.lo) / 2.0
        return {"kind": "box", "dim": self.dim, "max_half_width": float(half.max()),
                "mean_half_width": float(half.mean())}


@dataclass(frozen=True, eq=False)
class Ball(Region):
    """The l2 ball ``{x : ||x - center||_2 <= radius}``, intersected with the box ``domain =
    (lo, hi)`` when given (scalars or arrays; e.g. ``(0, 1)`` for pixels)."""

    center: np.ndarray
    radius: float
    domain: tuple[np.ndarray, np.ndarray] | None = None
    kind = "ball"

    def __post_init__(self):
        c = _vector(self.center, "ball center")
        r = self.radius
        if isinstance(r, (bool, np.bool_)) or not isinstance(r, (int, float, np.floating,
                                                                  np.integer)) \
                or not math.isfinite(r) or r <= 0:
            raise UsageError(f"ball radius must be a finite number > 0, got {r!r}")
        object.__setattr__(self, "center", c)
        object.__setattr__(self, "radius", float(r))
        if self.domain is not None:
            dlo, dhi = _domain(self.domain, c.size)
            gap = float(np.linalg.norm(c - np.clip(c, dlo, dhi)))
            if gap > self.radius:
                raise UsageError(f"the ball of radius {self.radius:g} does not meet its domain: "
                                 f"its center is {gap:g} away from the domain box")
            object.__setattr__(self, "domain", (dlo, dhi))

    @property
    def dim(self) -> int:
        return self.center.size

    def box(self):
        # rounded outward: the exact c -+ r may lie beyond the computed values
        lo = np.nextafter(self.center - self.radius, -np.inf)
        hi = np.nextafter(self.center + self.radius, np.inf)
        if self.domain is not None:
            lo, hi = np.maximum(lo, self.domain[0]), np.minimum(hi, self.domain[1])
        return lo, hi

    def sample(self, count, rng):
        """Uniform points of the ball, every other one on its sphere, projected onto the
        domain (non-expansive: a point stays in the ball when the center is in the domain;
        the few that leave it otherwise are pulled back to the domain's nearest point)."""
        d = rng.standard_normal((count, self.dim))
        d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-300)
        scale = rng.uniform(size=(count, 1)) ** (1.0 / self.dim)
        scale[1::2] = 1.0
        x = self.center + (self.radius * (1.0 - 1e-12)) * scale * d
        if self.domain is not None:
            x = np.clip(x, *self.domain)
            inside = np.clip(self.center, *self.domain)
            out = np.linalg.norm(x - self.center, axis=1) > self.radius
            x[out] = inside
        return x

    def describe(self):
        out = {"kind": "ball", "dim": self.dim, "radius": self.radius}
        if self.domain is not None:
            out["domain"] = [float(self.domain[0].min()), float(self.domain[1].max())]
        return out


def _domain(domain, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` of a domain box, each a scalar or an array of ``n``, as read-only arrays."""
    if not isinstance(domain, (tuple, list)) or len(domain) != 2:
        raise UsageError(f"domain must be a pair (lo, hi), got {domain!r}")
    parts = []
    for value, what in zip(domain, ("lower", "upper")):
        arr = np.array(value, dtype=np.float64)
        if arr.ndim == 0:
            arr = np.full(n, float(arr))
        arr = _vector(arr, f"domain {what} bound")
        if arr.size != n:
            raise UsageError(f"domain {what} bound has {arr.size} entries, the region {n}")
        parts.append(arr)
    _ordered(parts[0], parts[1], "the domain")
    return parts[0], parts[1]


#: Largest center file read by :func:`region_from_spec` (bytes).
MAX_CENTER_BYTES = 256 * 2**20


def load_center(path) -> np.ndarray:
    """The point stored in the ``.npy`` file ``path`` (read without unpickling), flattened."""
    import io

    from ..runtime.files import read_regular

    data = read_regular(path, what="region center", max_bytes=MAX_CENTER_BYTES,
                        error=UsageError)
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UsageError(f"{path}: the region center must be a .npy array of numbers "
                         f"({exc})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise UsageError(f"{path}: the region center must be a .npy array of numbers")
    return _vector(arr, f"region center {path}")


def region_from_spec(spec: str, domain: tuple | None = None) -> Region:
    """The region ``CENTER.npy:EPS[:linf|l2]``: the l-infinity box of half-width ``EPS``
    around the point in ``CENTER.npy`` (default), or the l2 ball of radius ``EPS``; both
    intersected with ``domain = (lo, hi)`` when given.

    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x.npy"); np.save(path, np.array([0.5, 0.0]))
    >>> region_from_spec(f"{path}:0.1:linf", domain=(0, 1)).hi.tolist()
    [0.6, 0.1]
    >>> region_from_spec(f"{path}:0.25:l2").radius
    0.25
    """
    hint = "give CENTER.npy:EPS or CENTER.npy:EPS:l2 (an l2 ball) or CENTER.npy:EPS:linf"
    parts = str(spec).rsplit(":", 2)
    norm = "linf"
    if len(parts) == 3 and parts[2] in ("l2", "linf"):
        path, eps_text, norm = parts
    elif len(parts) == 3 and re.fullmatch(r"[0-9.eE+-]+", parts[1]):
        raise UsageError(f"region {spec!r}: unknown norm {parts[2]!r}; {hint}")
    elif len(parts) >= 2:
        path, eps_text = str(spec).rsplit(":", 1)
    else:
        raise UsageError(f"region {spec!r}: {hint}")
    try:
        eps = float(eps_text)
    except ValueError:
        raise UsageError(f"region {spec!r}: {eps_text!r} is not a number; {hint}") from None
    if not (math.isfinite(eps) and eps > 0):
        raise UsageError(f"region {spec!r}: the radius must be a finite number > 0")
    center = load_center(path)
    if norm == "l2":
        return Ball(center, eps, domain=domain)
    box = Box.around(center, eps, domain=domain)
    return box
