"""Frozen result records that serialise to JSON without loss (STYLE.md practice 4)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .certify.record import CertificateRecord
from .status import Status, as_status


def _num(x: float | None) -> float | str | None:
    """JSON has no inf/nan: encode them as strings so nothing is lost."""
    if x is None:
        return None
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _finite_json(obj):
    """``obj`` with every non-finite float (nested in dicts, lists, tuples) as a string."""
    if isinstance(obj, float):
        return _num(obj)
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_json(v) for v in obj]
    return obj


def _unnum(x) -> float | None:
    return None if x is None else float(x)


@dataclass(frozen=True)
class MethodOutput:
    """What a bound method returns; :func:`lipverify.bound` adds timing and provenance."""

    bound: float
    certified: bool
    status: Status = field(default_factory=Status)
    solver: str | None = None
    solver_value: float | None = None
    margin: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "status", as_status(self.status))


class FrozenDict(dict):
    """A dict that refuses changes (a result's ``details``); pickles and serialises as a dict.

    >>> d = FrozenDict({"gap": 1e-9})
    >>> d["gap"] = 0.0
    Traceback (most recent call last):
    ...
    TypeError: a result's details are read-only
    """

    def _readonly(self, *args, **kwargs):
        raise TypeError("a result's details are read-only")

    __setitem__ = __delitem__ = _readonly
    clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]
    __ior__ = _readonly  # type: ignore[assignment]

    def __reduce__(self):
        return (FrozenDict, (dict(self),))

    def __deepcopy__(self, memo):
        import copy

        return FrozenDict(copy.deepcopy(dict(self), memo))


@dataclass(frozen=True)
class BoundResult:
    """One bound on one network.

    ``bound`` is a certified upper bound on the Lipschitz constant when ``certified`` is true
    (derived from ``certificate``: it passed the §8 check on the exact float64 weights, or is
    proved by the method's own rounding analysis); otherwise it is an estimate or a lower
    bound, as ``kind`` says (``upper``, ``estimate`` or ``lower``).
    """

    model: str
    method: str
    norm: str
    bound: float
    kind: str
    solver: str | None
    status: Status
    time_s: float
    lower_bound: float | None
    layers: tuple[int, ...]
    output_rows: tuple[int, ...] | None = None
    solver_value: float | None = None
    margin: float | None = None
    sha256: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    version: str = ""
    certificate: CertificateRecord | None = None

    @property
    def certified(self) -> bool:
        return self.certificate is not None and self.certificate.ok

    def __post_init__(self):
        if not isinstance(self.details, FrozenDict):
            object.__setattr__(self, "details", FrozenDict(self.details))
        object.__setattr__(self, "status", as_status(self.status))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["certified"] = self.certified
        d["certificate"] = None if self.certificate is None else self.certificate.to_dict()
        d["details"] = _finite_json(dict(self.details))
        d["status"] = self.status.to_dict()
        for key in ("bound", "lower_bound", "solver_value", "margin"):
            d[key] = _num(d[key])
        d["layers"] = list(self.layers)
        d["output_rows"] = None if self.output_rows is None else list(self.output_rows)
        d["warnings"] = list(self.warnings)
        return d

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, default=_json_default, **kw)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BoundResult:
        d = dict(d)
        for key in ("bound", "lower_bound", "solver_value", "margin"):
            d[key] = _unnum(d.get(key))
        d["layers"] = tuple(d["layers"])
        if d.get("output_rows") is not None:
            d["output_rows"] = tuple(d["output_rows"])
        d["warnings"] = tuple(d.get("warnings", ()))
        # plain text in results stored by 0.1.0 and earlier
        d["status"] = Status.from_dict(d.get("status", "ok"))
        certified = bool(d.pop("certified", False))
        if d.get("certificate") is not None:
            d["certificate"] = CertificateRecord.from_dict(d["certificate"])
        else:  # stored by 0.1.0 and earlier: the payload sat in details
            d["certificate"] = CertificateRecord.of(d["details"].get("certificate"), certified)
        return cls(**d)

    def __str__(self) -> str:
        tag = {
            "upper": "certified" if self.certified else "NOT certified",
            "estimate": "estimate, not a bound",
            "lower": "lower bound",
        }[self.kind]
        extra = f", lower bound {self.lower_bound:.6g}" if self.lower_bound is not None else ""
        solver = f" via {self.solver}" if self.solver else ""
        return (
            f"{self.model}: L_{self.norm[1:]} <= {self.bound:.10g} ({tag}) [{self.method}{solver}, "
            f"{self.status}, {self.time_s:.3g}s{extra}]"
            if self.kind == "upper"
            else f"{self.model}: {self.method} = {self.bound:.8g} ({tag}) [{self.status}, "
            f"{self.time_s:.3g}s]"
        )

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>"
            for k, v in self.to_dict().items()
            if k not in ("details",)
        )
        return f"<table>{rows}</table>"


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")
