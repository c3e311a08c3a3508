"""Certified robust accuracy from Lipschitz bounds (l2).

A prediction ``y`` at ``x`` with exact margins ``m_j = f_y(x) - f_j(x) > 0`` cannot change
within the l2 ball of radius ``R`` around ``x`` when ``m_j > L_j R`` for every ``j != y``,
where ``L_j`` bounds ``Lip(f_y - f_j)`` on that ball: for ``||d|| <= R``,
``f_y(x + d) - f_j(x + d) >= m_j - L_j ||d|| > 0``. Three choices of ``L_j``, each certified:

* **global**: ``L_j = sqrt(2) L`` (``||e_y - e_j|| = sqrt(2)``), radius ``min_j m_j / (sqrt(2) L)``;
* **pairwise**: ``L_j = L_yj``, the margin bounds of :mod:`.margins` (never above
  ``sqrt(2) L``, so never fewer samples certified);
* **local**: ``sqrt(2) L_loc(eps)`` with ``L_loc`` the local bound on the ball of radius
  ``eps`` itself (:mod:`lipverify.regions`); it certifies radius ``eps`` only, so it is
  tried per ``eps``, on the samples the pairwise bound left uncertified.

The margins ``m_j`` are lower bounds on the exact ones (:func:`.forward.sound_margins`), so a
certified radius is a guarantee about the exact float64 network, not about one rounding of it.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..numerics import round_down, round_up
from .forward import sound_margins
from .margins import MarginBounds, margin_bounds, sqrt2_times

KINDS = ("global", "pairwise", "local")
#: Largest dataset file read (bytes).
MAX_DATA_BYTES = 2 * 2**30


@dataclass(frozen=True)
class Sample:
    """One sample's prediction, smallest sound margin and certified radius per bound kind
    (0 when not certified; ``local`` is the largest ``eps`` the local bound certified)."""

    index: int
    label: int
    prediction: int
    margin: float
    radius: dict[str, float]


@dataclass(frozen=True)
class RobustnessReport:
    """Per-sample radii and certified accuracy at each ``eps`` for each bound kind."""

    model: str
    eps: tuple[float, ...]
    samples: tuple[Sample, ...]
    global_bound: float
    method: str
    certified: bool
    time_s: float
    kinds: tuple[str, ...]
    margins: MarginBounds | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def clean_accuracy(self) -> float:
        return float(np.mean([s.prediction == s.label for s in self.samples]))

    def accuracy(self, kind: str, eps: float) -> float:
        """Fraction of samples certified correct at radius ``eps`` (strictly inside)."""
        return float(np.mean([s.radius[kind] > eps or (kind == "local" and eps in
                                                        s.radius.get("local_eps", ()))
                              for s in self.samples]))

    def table(self) -> list[dict]:
        return [{"eps": e, **{k: self.accuracy(k, e) for k in self.kinds}} for e in self.eps]

    def to_dict(self) -> dict:
        return {"model": self.model, "method": self.method, "global_bound": self.global_bound,
                "certified": self.certified, "time_s": self.time_s, "eps": list(self.eps),
                "clean_accuracy": self.clean_accuracy, "certified_accuracy": self.table(),
                "samples": [{"index": s.index, "label": s.label, "prediction": s.prediction,
                             "margin": s.margin,
                             **{f"radius_{k}": s.radius[k] for k in self.kinds},
                             **({"local_eps": list(s.radius.get("local_eps", ()))}
                                if "local" in self.kinds else {})}
                            for s in self.samples],
                "margins": self.margins.to_dict() if self.margins else None,
                "notes": list(self.notes)}

    def samples_csv(self) -> str:
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["index", "label", "prediction", "margin", *[f"radius_{k}" for k in self.kinds]])
        for s in self.samples:
            w.writerow([s.index, s.label, s.prediction, repr(s.margin),
                        *[repr(s.radius[k]) for k in self.kinds]])
        return out.getvalue()

    def markdown(self) -> str:
        head = "| eps | " + " | ".join(self.kinds) + " |"
        rows = [f"| {r['eps']:g} | " + " | ".join(f"{100 * r[k]:.1f}%" for k in self.kinds)
                + " |" for r in self.table()]
        return "\n".join([head, "|---" * (len(self.kinds) + 1) + "|", *rows])

    def plot(self, path: str | Path) -> None:
        """Certified accuracy against eps, one curve per bound kind (PNG/PDF/SVG by suffix)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        top = max(max(self.eps), *[s.radius["pairwise"] for s in self.samples]) * 1.05
        grid = np.linspace(0.0, max(top, 1e-12), 200)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for kind in self.kinds:
            if kind == "local":
                ax.plot(self.eps, [self.accuracy("local", e) for e in self.eps], "o-",
                        label="local")
                continue
            radii = np.array([s.radius[kind] for s in self.samples])
            ax.plot(grid, [(radii > e).mean() for e in grid], label=kind)
        ax.set_xlabel("l2 radius eps")
        ax.set_ylabel("certified accuracy")
        ax.set_title(self.model)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def load_dataset(path, input_dim: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` from an ``.npz`` with arrays ``x`` (N, ...) and ``y`` (N,) of int labels,
    read without unpickling; every problem found is listed in one :class:`UsageError`."""
    from ..runtime.files import check_regular

    check_regular(path, "dataset", max_bytes=MAX_DATA_BYTES, error=UsageError)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("x", "y") if k not in data.files]
            if missing:
                raise UsageError(f"{path}: dataset needs arrays 'x' and 'y'; missing "
                                 f"{', '.join(missing)} (found: {', '.join(data.files) or 'none'})")
            x, y = data["x"], data["y"]
    except UsageError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise UsageError(f"{path}: not a readable .npz of arrays ({exc})") from exc
    return check_dataset(x, y, input_dim, classes, where=str(path))


def check_dataset(x, y, input_dim: int, classes: int, where: str = "data"):
    x, y = np.asarray(x), np.asarray(y)
    problems = []
    if x.dtype.kind not in "fiu":
        problems.append(f"x has dtype {x.dtype}, not numbers")
    if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(np.isfinite(y))
                                        and np.all(y == np.round(y))):
        problems.append(f"y has dtype {y.dtype}, not integer labels")
    if x.ndim < 1 or len(x) == 0:
        problems.append("x is empty")
    elif math.prod(x.shape[1:]) != input_dim:
        problems.append(f"x has samples of shape {x.shape[1:]} ({math.prod(x.shape[1:])} "
                        f"values); the model takes {input_dim}")
    if y.ndim != 1 or (x.ndim >= 1 and len(y) != len(x)):
        problems.append(f"y has shape {y.shape}; expected ({len(x) if x.ndim else '?'},)")
    if x.dtype.kind in "fiu" and x.size and not np.all(np.isfinite(x)):
        problems.append(f"x holds {int(np.sum(~np.isfinite(x)))} NaN/Inf values")
    if y.dtype.kind in "iuf" and y.size:
        bad = (y < 0) | (y >= classes)
        if np.any(bad):
            problems.append(f"{int(bad.sum())} labels outside 0..{classes - 1} "
                            f"(e.g. {y[bad][0]!r})")
    if problems:
        raise UsageError(f"{where}: " + "; ".join(problems))
    return x.reshape(len(x), -1).astype(np.float64), y.astype(np.int64)


def _check_eps(eps) -> tuple[float, ...]:
    try:
        values = tuple(float(e) for e in eps)
    except (TypeError, ValueError):
        raise UsageError(f"eps must be a list of numbers; got {eps!r}") from None
    if not values or not all(math.isfinite(e) and e > 0 for e in values):
        raise UsageError(f"eps must be finite radii > 0; got {list(values)}")
    return tuple(sorted(set(values)))


def _radius(margin: float, lip: float) -> float:
    """A lower bound on ``margin / lip`` (0 unless both are positive and finite)."""
    if not (margin > 0 and 0 < lip < math.inf):
        return 0.0
    return max(round_down(round_down(margin / lip)), 0.0)


def certified_robustness(model, x, y, eps: Sequence[float] = (0.1, 0.25, 0.5, 1.0), *,
                         method: str = "auto", pairwise: bool = True, local: bool = False,
                         pair_solve: str = "reuse", domain: tuple[float, float] | None = None,
                         local_method: str | None = None, time_limit: float | None = None,
                         progress: Callable[[str], None] | None = None,
                         global_result=None, **options) -> RobustnessReport:
    """Certified robust accuracy (l2) of ``model`` on ``(x, y)`` at each radius in ``eps``.

    ``method`` bounds the global constant (and the pairs); ``local=True`` adds the local bound
    on each ball (``domain``: the input range, e.g. ``(0, 1)`` for images, to tighten it).
    ``global_result``: an l2 bound of this network already at hand (not recomputed).

    >>> import numpy as np, lipverify
    >>> from lipverify.ir.activations import SlopeRestricted
    >>> net = lipverify.Network.sequential([np.eye(2), np.eye(2)],
    ...                                    [SlopeRestricted.named("relu")])
    >>> rep = certified_robustness(net, np.array([[2.0, 0.0]]), np.array([0]), eps=[1.0, 2.0],
    ...                            method="naive")
    >>> rep.samples[0].radius["pairwise"] > 1.41, rep.accuracy("pairwise", 1.0)
    (True, 1.0)
    """
    from .. import api
    from ..importers import load

    start = time.perf_counter()
    say = progress or (lambda _msg: None)
    eps = _check_eps(eps)
    load_opts, options = api.split_options(options)
    net = load(model, **load_opts)
    if net.output_dim < 2:
        raise UsageError(f"{net.name}: robustness needs a classifier (>= 2 outputs); "
                         f"it has {net.output_dim}")
    x, y = check_dataset(x, y, net.input_dim, net.output_dim)
    margins = sound_margins(net, x, y)
    prediction = np.argmax(net.forward(x), axis=1)
    if global_result is None:
        say(f"global bound ({method})")
        glob = api.bound(net, method=method, time_limit=time_limit, **options)
    elif global_result.norm != "l2" or global_result.kind != "upper":
        raise UsageError("certified robustness needs an l2 upper bound as global_result")
    else:
        glob = global_result
    base = sqrt2_times(glob.bound) if glob.certified else math.inf
    kinds = ["global"]
    mb = None
    notes = [] if glob.certified else [f"the global bound is not certified ({glob.status})"]
    if pairwise:
        kinds.append("pairwise")
        labels = sorted(set(int(v) for v in y))
        pairs = [(a, j) for a in labels for j in range(net.output_dim) if j != a]
        say(f"margin bounds for {len(pairs)} class pairs")
        mb = margin_bounds(net, pairs, method=method, global_result=glob,
                           pair_solve=pair_solve, time_limit=time_limit, **options)
    samples = []
    for k in range(len(x)):
        m = margins[k]
        low = float(np.min(m))
        r = {"global": _radius(low, base)}
        if mb is not None:
            r["pairwise"] = min(_radius(float(m[j]), mb[y[k], j]) if mb.certified else 0.0
                                for j in range(net.output_dim) if j != y[k])
            r["pairwise"] = max(r["pairwise"], r["global"])  # both are certificates
        samples.append(Sample(k, int(y[k]), int(prediction[k]), low, r))
    if local:
        kinds.append("local")
        samples = _local(net, x, samples, eps, glob, domain, local_method or method, notes,
                         say, time_limit, options)
    report = RobustnessReport(net.name, eps, tuple(samples), glob.bound, glob.method,
                              glob.certified, time.perf_counter() - start, tuple(kinds), mb,
                              tuple(notes))
    return report


def _local(net, x, samples, eps, glob, domain, method, notes, say, time_limit, options):
    """Per sample, the ``eps`` its local bound certifies beyond the pairwise radius."""
    from ..regions import Ball
    from ..regions.local import local_bound

    out = []
    tried = tightened = 0
    for s in samples:
        best = s.radius.get("pairwise", s.radius["global"])
        done = [e for e in eps if best > e]
        if s.margin > 0:
            for e in eps:
                if best > e:
                    continue
                tried += 1
                say(f"local bound, sample {s.index}, eps {e:g}")
                res = local_bound(net, Ball(x[s.index], e, domain=domain), method=method,
                                  global_result=glob,
                                  time_limit=time_limit, **options)
                tightened += res.details.get("used") == "local"
                lip = sqrt2_times(res.bound) if res.certified else math.inf
                if not s.margin > round_up(lip * e) * (1 + 1e-15):
                    break  # a larger ball will not do better (its local bound is no smaller)
                done.append(e)
        out.append(Sample(s.index, s.label, s.prediction, s.margin,
                          {**s.radius, "local": max([best, *done]), "local_eps": tuple(done)}))
    notes.append(f"local bounds computed on {tried} (sample, eps) balls, below the global "
                 f"bound on {tightened}"
                 + (f"; they certify perturbations that stay in the domain {domain}"
                    if domain is not None else ""))
    return out
