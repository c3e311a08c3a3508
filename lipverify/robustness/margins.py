"""Certified bounds on the Lipschitz constants of logit differences (margin bounds).

For a classifier ``f: R^n -> R^K`` and a pair of classes ``(i, j)``, ``L_ij`` bounds the l2
Lipschitz constant of ``g_ij = f_i - f_j = c^T f`` with ``c = e_i - e_j``. Two certified
values are available, and the smaller is reported:

* **from the global bound.** ``|c^T (f(x) - f(y))| <= ||c||_2 ||f(x) - f(y)||_2`` gives
  ``L_ij <= sqrt(2) L`` for every pair, at no cost.
* **its own LipSDP certificate.** ``g_ij`` is the network with last weight ``c^T W_L``, so its
  LMI (§1.1-§1.2) differs from the global one only in the output term: ``W_L^T c c^T W_L``
  instead of ``W_L^T W_L``. On a chain, every pair comes from the global certificate
  ``(rho, T)`` by *one* forward sweep (:func:`shared_pair_bounds`,
  :meth:`lipverify.certify.chordal.ForwardChordal.output_bounds`): the cliques before the
  last are certified once; in the last one the forward pivot ``P`` gives each pair its
  largest scale ``sigma < 1 / (g^T P^-1 g)`` (``g = W_L^T c``), proven by one Rump test per
  pair, and ``L_ij <= sqrt(rho / sigma)`` (measured, results/robustness.md: all 45 pairs of
  mnist-net_256x2 in 0.43x the global solve's time, median 0.954 sqrt(2) L). Pairs that it
  cannot certify, and DAGs, start from ``(2 rho, 2 T)`` (feasible, since ``c c^T <= 2 I``)
  and are polished by the structured solver within a shared budget (twice the global
  solve's time, at least 1 s), then go through the §8 gate on ``g_ij``'s exact weights.

Methods without reusable multipliers (``naive``, ``gershgorin``, ...) run once per pair on
``g_ij`` instead; they are cheap. ``pair_solve="full"`` runs the method itself on every
``g_ij`` (a full solve per pair, sharing ``time_limit``): the tightest, and ``K(K-1)/2``
times the cost (measured on mnist-net_256x2, lipsdp-neuron: the global 2.1 s gives
``sqrt(2) L = 441.8``; the reused multipliers 429-436 in 4.4x the global time; full
per-pair solves 253 and 324 for pairs (0, 1) and (3, 8), 2.5 s each).

>>> import numpy as np, lipverify
>>> from lipverify.ir.activations import SlopeRestricted
>>> net = lipverify.Network.sequential([np.eye(2), np.array([[1.0, 0.0], [0.0, 2.0]])],
...                                    [SlopeRestricted.named("relu")])
>>> mb = margin_bounds(net, method="naive")
>>> round(mb[0, 1], 6)  # ||(1, -2)|| = sqrt(5), below sqrt(2) * 2
2.236068
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from ..numerics import round_up
from ..results import BoundResult

#: Certificate kinds whose multipliers are reused for the pair LMIs.
REUSABLE = {"lipsdp-l2": "chain", "lipsdp-dag": "dag"}
#: Polishing budget for all pairs together, as a multiple of the global solve's time.
POLISH_FACTOR = 2.0


@dataclass(frozen=True)
class MarginBounds:
    """Certified ``L_ij`` (l2) for the requested class pairs; ``mb[i, j]`` reads one.

    ``source[p]`` says where ``values[p]`` came from: ``"global"`` (``sqrt(2) L``) or
    ``"pair"`` (the pair's own §8 certificate). ``certified`` is true when every value is
    (it is as certified as the global bound it started from).
    """

    classes: int
    pairs: tuple[tuple[int, int], ...]
    values: np.ndarray
    source: tuple[str, ...]
    certified: bool
    global_result: BoundResult
    method: str
    time_s: float
    notes: tuple[str, ...] = field(default=())

    def __getitem__(self, pair: tuple[int, int]) -> float:
        i, j = pair
        key = (min(i, j), max(i, j))
        try:
            return float(self.values[self.pairs.index(key)])
        except ValueError:
            raise KeyError(f"pair {pair} was not computed") from None

    def matrix(self) -> np.ndarray:
        """``K x K`` symmetric matrix of the bounds: 0 on the diagonal, ``sqrt(2) L`` (the
        global fallback, certified) for pairs that were not asked for."""
        fallback = sqrt2_times(self.global_result.bound)
        out = np.full((self.classes, self.classes), fallback)
        np.fill_diagonal(out, 0.0)
        for (i, j), v in zip(self.pairs, self.values):
            out[i, j] = out[j, i] = v
        return out

    def to_dict(self) -> dict:
        return {"classes": self.classes, "method": self.method, "certified": self.certified,
                "global_bound": self.global_result.bound, "time_s": self.time_s,
                "pairs": [{"i": i, "j": j, "bound": float(v), "source": s}
                          for (i, j), v, s in zip(self.pairs, self.values, self.source)],
                "notes": list(self.notes)}


def sqrt2_times(value: float) -> float:
    """An upper bound on ``sqrt(2) * value`` despite rounding (two roundings up)."""
    return round_up(round_up(math.sqrt(2.0)) * value) if math.isfinite(value) else math.inf


def check_pairs(pairs, classes: int) -> tuple[tuple[int, int], ...]:
    """``pairs`` as sorted, distinct ``(i, j)`` with ``i < j``; None: all ``K(K-1)/2``."""
    if classes < 2:
        raise UsageError(f"margin bounds need at least 2 outputs; the network has {classes}")
    if pairs is None:
        return tuple((i, j) for i in range(classes) for j in range(i + 1, classes))
    out = set()
    for pair in pairs:
        try:
            i, j = (int(v) for v in pair)
            ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair)
        except (TypeError, ValueError):
            ok = False
        if not ok or i == j or not (0 <= i < classes and 0 <= j < classes):
            raise UsageError(f"pairs must be (i, j) with distinct classes in 0..{classes - 1}; "
                             f"got {pair!r}")
        out.add((min(i, j), max(i, j)))
    if not out:
        raise UsageError("pairs is empty; pass pairs=None for all of them")
    return tuple(sorted(out))


def difference(net, i: int, j: int):
    """The network ``f_i - f_j`` (one output)."""
    c = np.zeros((1, net.output_dim))
    c[0, i], c[0, j] = 1.0, -1.0
    return net.output_map(c, name=f"{net.name}[{i}-{j}]")


def margin_bounds(model, pairs: Sequence[tuple[int, int]] | None = None, method: str = "auto",
                  time_limit: float | None = None, global_result: BoundResult | None = None,
                  pair_solve: str = "reuse", **options) -> MarginBounds:
    """Certified l2 bounds ``L_ij`` on ``Lip(f_i - f_j)`` for ``pairs`` (None: every pair).

    ``method`` computes the global bound (see :func:`lipverify.bound`), or pass a certified
    ``global_result`` already at hand. ``pair_solve``: ``"reuse"`` (the global multipliers,
    polished; ``time_limit`` caps the polishing, by default twice the global solve's time) or
    ``"full"`` (``method`` on every pair; ``time_limit`` is shared among the pairs).
    """
    if pair_solve not in ("reuse", "full"):
        raise UsageError(f"pair_solve must be 'reuse' or 'full'; got {pair_solve!r}")
    from .. import api
    from ..importers import load

    start = time.perf_counter()
    load_opts, options = api.split_options(options)
    net = load(model, **load_opts)
    pairs = check_pairs(pairs, net.output_dim)
    if global_result is None:
        global_result = api.bound(net, method=method, time_limit=time_limit, **options)
    elif global_result.norm != "l2" or global_result.kind != "upper":
        raise UsageError("margin bounds need an l2 upper bound as global_result; got "
                         f"{global_result.norm} {global_result.kind} ({global_result.method})")
    elif None not in (global_result.sha256, net.provenance.sha256) and \
            global_result.sha256 != net.provenance.sha256:
        raise UsageError("global_result was computed for another model file "
                         f"({global_result.model}); recompute it for {net.name}")
    base = sqrt2_times(global_result.bound)
    values = np.full(len(pairs), base)
    source = ["global"] * len(pairs)
    notes = []
    cert = global_result.certificate
    kind = REUSABLE.get(cert.kind) if cert is not None and cert.ok else None
    if kind is not None and pair_solve == "reuse":
        budget = POLISH_FACTOR * max(global_result.time_s, 0.5) if time_limit is None else (
            max(time_limit - (time.perf_counter() - start), 0.0))
        got = _reuse(net, pairs, cert.body, kind, budget, base)
        notes.append("pairs certified from the global multipliers (one shared forward sweep "
                     "on chains; any pair it misses: x 2, polished for at most "
                     f"{budget:.3g} s in all)")
    else:
        got = []
        for n, (i, j) in enumerate(pairs):
            share = None if time_limit is None else max(
                (time_limit - (time.perf_counter() - start)) / (len(pairs) - n), 0.1)
            r = api.bound(difference(net, i, j), method=global_result.method,
                          **({**options, "time_limit": share} if share else options))
            got.append(r.bound if r.certified else math.inf)
        notes.append(f"pairs bounded by {global_result.method} on each logit difference")
    for p, value in enumerate(got):
        if value < values[p]:
            values[p], source[p] = value, "pair"
    if global_result.method != "naive":  # the naive product of each pair is a third candidate
        for p, value in enumerate(_naive_pairs(net, pairs, budget=max(
                2.0, POLISH_FACTOR * global_result.time_s))):
            if value < values[p]:
                values[p], source[p] = value, "pair (naive)"
    return MarginBounds(net.output_dim, pairs, values, tuple(source), global_result.certified,
                        global_result, global_result.method, time.perf_counter() - start,
                        tuple(notes))


def _naive_pairs(net, pairs, budget: float) -> list[float]:
    """The certified naive product (§6.1) of every ``f_i - f_j`` when all of them fit in
    ``budget`` seconds (timed on the first pair); the last layer's row difference often
    makes it the best of the cheap bounds (on digits_mlp_relu: more samples certified than
    the reused ldlt-fast multipliers)."""
    from .. import api

    start = time.perf_counter()
    out = []
    for i, j in pairs:
        r = api.bound(difference(net, i, j), method="naive")
        out.append(r.bound if r.certified else math.inf)
        if len(out) == 1 and (time.perf_counter() - start) * len(pairs) > budget:
            return [math.inf] * len(pairs)
    return out


def shared_pair_bounds(net, pairs, body: dict) -> list[float]:
    """Every pair of a chain from the global multipliers by one shared forward sweep
    (:meth:`lipverify.certify.chordal.ForwardChordal.output_bounds`): the pair's LMI is the
    global one with the output term ``sigma W_L^T c c^T W_L``, one Rump test each."""
    from dataclasses import replace

    from ..certify.chordal import ForwardChordal
    from ..lmi.chain import ChainLMI

    lmi = ChainLMI.from_network(net, per_neuron=body.get("multipliers", "neuron"))
    w_out = lmi.weights[-1]
    plain = replace(lmi, weights=(*lmi.weights[:-1], np.zeros((0, w_out.shape[1]))),
                    radii=(*lmi.radii[:-1], None))
    params = lmi.project(np.asarray(body["params"], dtype=np.float64))
    if params.shape != (sum(lmi.param_sizes),):
        return [math.inf] * len(pairs)
    rows = np.zeros((len(pairs), w_out.shape[0]))
    for p, (i, j) in enumerate(pairs):
        rows[p, i], rows[p, j] = 1.0, -1.0
    return list(ForwardChordal(plain, params).output_bounds(float(body["rho"]), w_out,
                                                            lmi.radii[-1], rows))


def _reuse(net, pairs, body: dict, kind: str, budget: float, floor: float) -> list[float]:
    """Each pair's certified bound from the global multipliers (x 2), polished (§2, §8).

    The polish comes first and the §8 gate last, once per pair and only when the polished
    ``sqrt(rho*)`` beats ``floor`` (the certified ``sqrt(2) L``): the gate is the costly step
    (measured on mnist-net_256x2: 0.25 s against 0.08 s for one ``rho*``)."""
    from ..certify.gate import certify
    from ..lmi.chain import ChainLMI
    from ..lmi.dag import DagLMI
    from ..solvers.smooth_rho import minimize_rho

    multipliers = body.get("multipliers", "neuron")
    start = 2.0 * np.asarray(body["params"], dtype=np.float64)
    lmi_class = ChainLMI if kind == "chain" else DagLMI
    deadline = time.perf_counter() + budget
    shared = shared_pair_bounds(net, pairs, body) if kind == "chain" else [math.inf] * len(pairs)
    out = []
    for n, (i, j) in enumerate(pairs):
        if math.isfinite(shared[n]):
            out.append(shared[n])
            continue
        lmi = lmi_class.from_network(difference(net, i, j), per_neuron=multipliers)
        params = start
        share = (deadline - time.perf_counter()) / (len(pairs) - n)
        if kind == "chain" and share > 0.05:
            params, rho, _ = minimize_rho(lmi, start, time_limit=0.7 * share)
            if not (math.isfinite(rho) and math.sqrt(rho) < floor):
                out.append(math.inf)
                continue
        cert = certify(lmi, params, deadline)
        out.append(cert.bound if cert.ok else math.inf)
    return out
