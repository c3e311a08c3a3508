"""The one LipSDP pipeline (FORMULATIONS.md §1-§3, §5, §8), for chains and residual DAGs alike:

    start -> solver -> warm start -> polish -> certify -> gap

* **start**: multipliers that are already certifiable: ECLipsE-Fast's closed form on a chain
  (§2b), the anchor on a DAG (§8 step 4).
* **solver**: the interior point (slope QCs, order <= 3000), or a conic solver on the
  chordal / chained form (§3, §5b); a solver that fails or is not installed hands over to
  the structured solver, and the status says so.
* **warm start**: when no solver point was better than the start, the few-variable layer
  problem (§1.3), expanded per neuron.
* **polish**: the structured solver on rho* (§2) from the best point so far.
* **certify**: the single §8 gate (:func:`lipverify.certify.gate.certify`) on the exact
  float64 weights; the reported bound is never worse than the certified start.
* **gap**: the measured optimality gap from a dual bound (a quality figure only).

One :class:`~lipverify.runtime.clock.Clock` serves every stage: each asks for what is left
after a reserve (the measured cost of one certification), so the last certificate fits.
The status is a typed :class:`~lipverify.status.Status`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np

from ..certify.gate import Certificate, certify, certify_if_better
from ..errors import NotApplicableError, SolverError
from ..ir.network import Network
from ..lmi.base import LMI
from ..lmi.chain import node_qcs
from ..numerics import as_numerical_error
from ..results import MethodOutput
from ..runtime.clock import Clock
from ..solvers.choose import BACKENDS, choose_backend, estimate_cone
from ..solvers.sequential import ldlt_fast_params
from ..solvers.smooth_rho import from_large_start, minimize_rho
from ..status import Outcome, Status

#: mu / rho schedules of the structured solver: from scratch, and polishing a solver's point.
SMOOTH_STAGES = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9)
POLISH_STAGES = (1e-6, 1e-7, 1e-8, 1e-9)
#: ``auto`` runs the interior-point solver on slope-QC LMIs up to this order (its dense
#: inverse and n x n Newton matrix cost O(N^3) per iteration; larger LMIs use ``smooth``).
IPM_AUTO_MAX_ORDER = 3000
#: ``auto`` runs the low-rank dual solver on neuron-multiplier slope-QC chains with this many
#: hidden neurons, or above IPM_AUTO_MAX_ORDER (:mod:`lipverify.solvers.lowrank`; measured:
#: 64x32 in 15 s against the interior point's 123 s, 784-1024x8-10 gap 4e-7 in 76 s; on
#: trained nets of 512-1800 neurons the interior point is as fast or faster).
LOWRANK_AUTO_MIN_NEURONS = 2000
#: Residual networks above this order skip the chained conic solve (structured solver only).
CHAINED_MAX_ORDER = 1500
#: The safety net (a conic solve after a stopped interior point) runs on LMIs up to this
#: order, where cvxpy's compilation and the conic solve take seconds, not minutes.
SAFETY_NET_MAX_ORDER = 500
#: The structured solver stage always gets at least this long on a DAG (its start is cheap).
DAG_MIN_SECONDS = 1.0
#: Share of the solver's time the layer warm start may take.
WARM_SHARE = 1 / 3
#: Seconds per (n_k + n_k+1)^3 of one chain certificate (factorisations of each clique, its
#: Schur recursion and a few margin checks), measured on the bench machine: a 3072-2048-1024
#: chain takes 26 s on one core. ``auto`` in :mod:`lipverify.api` uses the same estimate.
CERTIFY_SECONDS_PER_CUBE = 1.6e-10
#: The same for the cliques of a grouped residual LMI (§5c), assembled one at a time and
#: checked in place: measured (default BLAS threads, 2 cores) 25.0 s on resnet_2b (sum of
#: cubes 2.8e11) and 83.7 s on resnet_3b2 (1.18e12), at most 0.9e-10 per cube.
DAG_CERTIFY_SECONDS_PER_CUBE = 0.9e-10


def clique_seconds(sizes, per_cube: float = CERTIFY_SECONDS_PER_CUBE) -> float:
    """Estimated seconds of a clique-wise certificate over consecutive blocks of ``sizes``."""
    return per_cube * sum((a + b) ** 3 for a, b in zip(sizes, sizes[1:]))


#: The time kept for a grouped DAG's final certificate, as a multiple of its estimate (the
#: estimate is the measured mean; a run past its limit is worse than a slightly shorter solve).
RESERVE_FACTOR = 1.25


def grouped_certificate_seconds(lmi: LMI) -> float:
    """Estimated seconds of the clique-wise certificate of a grouped DAG LMI (§5c), 0 for any
    other (measured on resnet_2b: 34 s, estimate 45 s)."""
    if lmi.kind != "dag" or not lmi.grouped:
        return 0.0
    return clique_seconds(lmi.group_sizes, DAG_CERTIFY_SECONDS_PER_CUBE)


def multiplier_kind(per_neuron: bool | str) -> str:
    return per_neuron if isinstance(per_neuron, str) else ("neuron" if per_neuron else "layer")


def certificate_record(cert: Certificate, kind: str, multipliers: str) -> dict:
    """The JSON record :func:`lipverify.save_certificate` writes (certificate kinds registry)."""
    record = {"kind": kind, "multipliers": multipliers, "rho": cert.rho,
              "params": np.asarray(cert.params).tolist(), "theta": cert.theta}
    if kind == "lipsdp-l2":
        record.update(eps=cert.margin, message=cert.message)
    return record


def output(cert: Certificate, status: Status, *, solver: str | None, solver_value,
           details: dict, kind: str = "lipsdp-l2", warnings=()) -> MethodOutput:
    """The method output of a §8 certificate (``certified`` only when the gate passed)."""
    details = {**details, "certificate": certificate_record(
        cert, kind, details.get("multipliers", "neuron"))}
    if not cert.ok:
        status = replace(status, outcome=Outcome.NOT_CERTIFIED, detail=cert.message)
    return MethodOutput(bound=cert.bound, certified=cert.ok, status=status, solver=solver,
                        solver_value=solver_value,
                        margin=cert.margin if kind == "lipsdp-l2" else None, details=details,
                        warnings=tuple(warnings))


@contextmanager
def keep_best(best: Callable[[], MethodOutput | None]):
    """A numerical failure inside the block leaves with the best certified output so far."""
    try:
        yield
    except Exception as exc:
        err = as_numerical_error(exc, "lipsdp")
        if err is None:
            raise
        if err.best is None:
            err.best = best()
        if err is exc:
            raise
        raise err from exc


@dataclass
class Candidates:
    """The start stage and the bookkeeping of every later candidate.

    On a chain each candidate is certified as it comes (a certificate is a few clique
    factorisations), keeping the best certificate. On a DAG a certificate is a dense
    factorisation of the whole LMI, so candidates are ranked by ``rho*`` and only the winner
    is certified (:meth:`final`)."""

    lmi: LMI
    clock: Clock
    certified: Certificate | None = None
    ranked: list = field(default_factory=list)

    @classmethod
    def start(cls, lmi: LMI, clock: Clock) -> Candidates:
        out = cls(lmi, clock)
        if lmi.kind == "chain":
            out.certified = certify(lmi, ldlt_fast_params(lmi), clock.deadline)
        else:
            out.ranked.append((lmi.anchor_rho, lmi.anchor()))
        return out

    @property
    def chain(self) -> bool:
        return self.lmi.kind == "chain"

    def best_params(self) -> np.ndarray:
        return self.certified.params if self.chain else min(self.ranked, key=_rho)[1]

    def best_rho(self) -> float:
        return self.certified.rho if self.chain else min(self.ranked, key=_rho)[0]

    def add(self, params, rho: float | None = None) -> bool:
        """Offer ``params`` (with their ``rho*`` where the caller has it: it only ranks them,
        the certificate computes its own); True when they are now the best candidate."""
        if self.chain:
            before = self.certified
            self.certified = certify_if_better(self.lmi, params, before, self.clock.deadline)
            return self.certified is not before
        rho = self.lmi.rho_star(params) if rho is None else rho
        if not math.isfinite(rho):  # repair by blending toward the anchor (§8 step 4)
            repaired = certify(self.lmi, params)
            params = repaired.params
            rho = self.lmi.rho_star(params) if repaired.ok else math.inf
        if not math.isfinite(rho):
            return False
        best = rho <= self.best_rho()
        self.ranked.append((rho, params))
        return best

    def final(self) -> Certificate:
        """The certificate to report: the best that passes the §8 gate."""
        if self.chain:
            return self.certified
        cert = None
        for _, params in sorted(self.ranked, key=_rho):
            cert = certify(self.lmi, params, self.clock.deadline)
            if cert.ok:
                break
        return cert


def _rho(candidate) -> float:
    return candidate[0]


def use_ipm(lmi: LMI, solver: str, details: dict) -> bool:
    """Whether the interior-point solver takes this LMI (``auto`` or ``ipm`` requested)."""
    from ..solvers.interior import ipm_reason

    if solver not in ("auto", "ipm"):
        return False
    reason = ipm_reason(lmi)
    if reason is None and solver == "auto" and lmi.order > IPM_AUTO_MAX_ORDER:
        reason = f"order {lmi.order} > {IPM_AUTO_MAX_ORDER} (auto limit; --solver ipm forces it)"
    if reason is not None:
        details["ipm"] = f"not used: {reason}"
    return reason is None


def use_lowrank(lmi: LMI, solver: str, details: dict, conv: bool = False) -> bool:
    """Whether the low-rank solver takes this LMI (``auto``: from LOWRANK_AUTO_MIN_NEURONS
    neurons or above IPM_AUTO_MAX_ORDER; ``lowrank`` requested: then an LMI it cannot take is
    an error, not a silent switch)."""
    from ..solvers.lowrank import lowrank_reason

    if solver not in ("auto", "lowrank"):
        return False
    reason = lowrank_reason(lmi)
    if reason is not None and solver == "lowrank":
        raise NotApplicableError(f"solver lowrank cannot solve this problem: {reason}; use "
                                 "--solver auto")
    neurons = sum(qc.n for qc in lmi.qcs)
    if reason is None and solver == "auto" and neurons < LOWRANK_AUTO_MIN_NEURONS and \
            lmi.order <= IPM_AUTO_MAX_ORDER:
        reason = f"{neurons} neurons < {LOWRANK_AUTO_MIN_NEURONS} (the interior point is used)"
    if reason is None and solver == "auto" and conv:
        # measured on cifar_base_kw: no certified point below ldlt-fast's in 240 s (dual
        # gap 0.47); its 3072 + 4096 first layers are too wide to re-solve
        reason = "a convolutional chain (the low-rank dual converges too slowly there)"
    if reason is not None:
        details["lowrank"] = f"not used: {reason}"
    return reason is None


def _has_conv(network: Network) -> bool:
    from .anytime import is_structured

    return is_structured(network)


def run_lowrank(lmi: LMI, details: dict, clock: Clock,
                device: str) -> tuple[Certificate, Status, float | None]:
    """Solver stage, low-rank dual (:mod:`lipverify.solvers.lowrank`), then the §8 gate; the
    gap is the certified bound's against the solver's feasible dual point. With a time
    limit ldlt-fast is certified first (returned if the solve runs out of time or finds
    nothing better)."""
    from ..solvers.lowrank import solve_chain_lowrank

    start = ldlt_fast_params(lmi)
    first, reserve = None, 0.0
    if clock.limit is not None:
        began = clock.elapsed()
        first = certify(lmi, start)
        # the last certificate costs about what this one did (measured on 784-1024x8-10:
        # 11 s against 12 s), so keep 1.25x of it, not 2x of everything so far
        reserve = 1.25 * (clock.elapsed() - began)
    try:
        res = solve_chain_lowrank(lmi, time_limit=clock.left(reserve), device=device)
    except SolverError as exc:  # e.g. a zero output map: its start, saying why
        status = Status(Outcome.FALLBACK, f"ldlt-fast (the low-rank solver failed: {exc})",
                        fallback_from="lowrank")
        cert = first if first is not None else certify(lmi, start, clock.deadline)
        return cert, status.with_gap(None, "no dual point"), None
    details.update(lowrank_iterations=res.iterations, lowrank_rank=res.rank,
                   lowrank_status=res.status, lowrank_polished=res.polished,
                   device=res.device, solve_seconds=res.seconds)
    optimal = res.status == "optimal"
    status = Status.solved("" if optimal else f"low-rank solver: {res.status}",
                           solver_optimal=optimal, timed_out=res.status == "time limit")
    cert = None if res.params is None else certify(lmi, res.params, clock.deadline)
    if cert is None or not cert.ok or first is not None:
        cert, status = prefer_start(lmi, start, first, cert, status, clock, details,
                                    "lowrank_start_better")
    low = math.sqrt(max(res.lower, 0.0))
    if cert.ok and math.isfinite(res.lower):
        details["dual_lower"], details["gap"] = low, max(cert.bound - low, 0.0) / cert.bound
        status = status.with_gap(details["gap"])
    else:
        status = status.with_gap(None, "not certified" if not cert.ok else "no dual point")
    return cert, status, (math.sqrt(res.rho) if res.params is not None else None)


def with_gap(lmi: LMI, cert: Certificate, status: Status, details: dict,
             clock: Clock, network: Network | None = None,
             per_neuron: bool | str | None = None, cost: float = 0.0) -> Status:
    """The gap stage: the optimality gap of the certified point from a dual bound
    (:mod:`lipverify.solvers.gap`), and, given the ``network`` and while time is left, the
    better of that and the trajectory ascent's (:mod:`lipverify.solvers.trajectory`, feasible
    by construction: it needs no converged solve); skipped when less than ``cost`` seconds
    (its estimate) are left of the time limit."""
    import time

    from ..solvers.gap import gap

    if not math.isfinite(cert.rho):
        return status
    if clock.expired(cost):
        return status.with_gap(None, "time limit")
    t0 = time.perf_counter()
    g = gap(lmi, cert.params, cert.rho)
    if network is not None and (g["gap"] is None or g["gap"] > TRAJECTORY_ABOVE_GAP):
        low = trajectory_lower(network, per_neuron, clock)
        if low is not None and (g["lower"] is None or low > g["lower"]):
            up = math.sqrt(cert.rho)
            g = {"lower": min(low, up), "gap": (up - min(low, up)) / up}
            details["dual_from"] = "trajectory ascent"
    details["dual_lower"], details["gap"] = g["lower"], g["gap"]
    details["gap_seconds"] = time.perf_counter() - t0
    return status.with_gap(g["gap"], None if g["gap"] is not None else "no dual bound")


#: The trajectory ascent runs where the gap stage measured no gap or one above this, for at
#: most TRAJECTORY_SECONDS (and never past the time limit), with TRAJECTORY_RANK
#: trajectories (measured, channel multipliers: cifar_base_kw 5.7276 from rank 4, the
#: channel optimum to 6 digits, against 5.6877 from rank 1; resnet_2b 53.47 against 50.85,
#: in about the same time).
TRAJECTORY_ABOVE_GAP = 1e-3
TRAJECTORY_SECONDS = 30.0
TRAJECTORY_RANK = 4


#: Share of the time left the dual start may take (its trajectory ascent stops there),
#: and the smallest LMI order it runs on (below it the structured solver converges anyway).
DUAL_START_SHARE = 0.15
DUAL_START_MIN_ORDER = 2000
#: Trajectories of the dual start, by LMI kind. Measured: cifar_base_kw (a conv chain,
#: channel multipliers) L = 9.85 at the start from rank 1, 6.77 from rank 4 (the optimum's
#: multipliers up to one scale per layer; the channel optimum is 5.7276); resnet_2b 106.3
#: from rank 1 and 106.4 from rank 4 in the same 46 s, so residual nets keep rank 1.
DUAL_START_RANK = {"chain": 4, "dag": 1}


def dual_stage(network: Network, lmi: LMI, per_neuron, cands: Candidates, clock: Clock,
               reserve: float, details: dict) -> bool:
    """Adds the multipliers a dual trajectory implies (:mod:`lipverify.solvers.dag_start`)
    as a candidate start for the structured solver (kept only if its rho* is lowest; a
    chain's are certified first); True when they are now the best. A chain is fitted on its
    network's DAG form, whose multipliers are laid out the same way (one QC per node, in
    order)."""
    import time

    from ..lmi.dag import DagLMI
    from ..solvers.dag_start import dual_start

    t0 = time.perf_counter()
    left = clock.left(reserve)
    until = None if left is None else t0 + DUAL_START_SHARE * left
    try:
        dag = lmi if lmi.kind == "dag" else DagLMI.from_network(network, per_neuron)
        if dag.param_sizes != lmi.param_sizes:
            details["dual_start"] = "not applicable (multiplier layouts differ)"
            return False
        params = dual_start(network, dag, per_neuron, until=until,
                            rank=DUAL_START_RANK[lmi.kind])
    except (NotApplicableError, ArithmeticError, ValueError, np.linalg.LinAlgError) as exc:
        details["dual_start"] = f"failed: {exc}"
        return False
    details["dual_start_seconds"] = time.perf_counter() - t0
    if params is None:
        details["dual_start"] = "not applicable or nothing finite"
        return False
    won = cands.add(params)
    details["dual_start"] = "best start" if won else "not better"
    return won


def trajectory_lower(network: Network, per_neuron, clock: Clock) -> float | None:
    """``sqrt`` of :func:`lipverify.solvers.trajectory.ascent_bound` (None where it does not
    apply: nodes that are not slope-restricted, or nothing found)."""
    import time

    from ..solvers.trajectory import ascent_bound

    until = time.perf_counter() + TRAJECTORY_SECONDS
    if clock.deadline is not None:
        until = min(until, clock.deadline)
    try:
        low = ascent_bound(network, per_neuron, until=until, rank=TRAJECTORY_RANK)
    except (NotApplicableError, ArithmeticError, ValueError, RuntimeError):
        return None
    return math.sqrt(low) if low is not None and low > 0 else None


def prefer_start(lmi: LMI, start, first: Certificate | None, cert: Certificate | None,
                 status: Status, clock: Clock, details: dict,
                 key: str) -> tuple[Certificate, Status]:
    """The solver's certificate, or its start's (``first``, certified here if None) when
    that is lower or the solver's did not certify: never worse than the certified start."""
    if first is None:
        first = certify(lmi, start, clock.deadline)
    if cert is not None and cert.ok and not first.bound < cert.bound:
        return cert, status
    details[key] = True
    name = "anchor" if lmi.kind == "dag" else "ldlt-fast"
    return first, status.with_(note=f"its start ({name}) certified lower")


def run_ipm(lmi: LMI, details: dict, clock: Clock) -> tuple[Certificate, Status, float]:
    """Solver stage, interior point (:mod:`lipverify.solvers.interior`), then the §8 gate.
    Its gap comes from its own dual point. With a time limit the start is certified first
    (the bound returned if time runs out), and the solver gets what is left after one more
    certification."""
    from ..solvers.interior import solve_chain_ipm

    start = lmi.anchor() if lmi.kind == "dag" else ldlt_fast_params(lmi)
    first, reserve = None, 0.0
    if clock.limit is not None:
        first = certify(lmi, start)
        reserve = 2.0 * clock.elapsed()
    res = solve_chain_ipm(lmi, start, time_limit=clock.left(reserve))
    details.update(ipm_iterations=res.iterations, solve_seconds=res.seconds,
                   ipm_status=res.status, ipm_algorithm=res.algorithm)
    cert = certify(lmi, res.params, clock.deadline)
    optimal = res.status == "optimal"
    status = Status.solved("" if optimal else f"interior point: {res.status}",
                           solver_optimal=optimal, timed_out=res.status == "time limit")
    if not optimal:  # stopped early: never worse than its certified start
        cert, status = prefer_start(lmi, start, first, cert, status, clock, details,
                                    "ipm_start_better")
    if res.lower is not None and cert.ok:
        low = math.sqrt(max(res.lower, 0.0))
        details["dual_lower"], details["gap"] = low, (cert.bound - low) / cert.bound
        status = status.with_gap(details["gap"])
    elif cert.ok:  # no dual point of its own (stopped early): the gap stage measures it
        status = with_gap(lmi, cert, status, details, clock)
    else:
        status = status.with_gap(None, "not certified")
    return cert, status, math.sqrt(max(res.rho, 0.0))


def solver_stage(lmi: LMI, backend, cands: Candidates, clock: Clock, reserve: float,
                 details: dict, conic: Callable) -> tuple[Status, float | None, bool]:
    """A conic solver on the LMI (``conic(lmi, backend, time_limit)`` -> SolveResult).
    Returns the status, the solver's value and whether its point beat the start."""
    try:
        result = conic(lmi, backend, clock.left(reserve))
    except SolverError as exc:
        return Status(Outcome.CONVERGED, f"{backend.name} failed ({exc}); structured solver "
                      "used"), None, False
    if result.params is None:
        return Status(Outcome.CONVERGED, f"{backend.name} status {result.status}; structured "
                      "solver used"), None, False
    if result.seconds is not None:
        details["solve_seconds"] = result.seconds
    optimal = result.status == "optimal"
    status = Status.solved("" if optimal else f"solver {result.status}", solver_optimal=optimal)
    won = cands.add(lmi.project(result.params))
    if not won and cands.chain:  # a poor (e.g. time-limited) solve
        status = status.with_(note="started from ldlt-fast, which was better")
    return status, result.value, won


def warm_stage(network: Network, lmi: LMI, cands: Candidates, clock: Clock,
               reserve: float, details: dict) -> None:
    """Cold start: solve the few-variable layer problem first, expand it per neuron."""
    if clock.expired(2.0 * reserve):
        return
    if lmi.kind == "chain":
        from ..lmi.chain import ChainLMI

        layer = ChainLMI.from_network(network, per_neuron=False)
        start = layer.project(ldlt_fast_params(layer))
        if not math.isfinite(layer.rho_star(start)):  # a solver start needs no certificate
            start = certify(layer, start).params
    else:
        layer = replace(lmi, qcs=node_qcs(network, False))
        start = layer.anchor()
    lp, rho, _ = minimize_rho(layer, start,
                              time_limit=clock.left(2.0 * reserve, share=WARM_SHARE))
    details["warm_start_bound"] = math.sqrt(rho) if math.isfinite(rho) else None
    if cands.add(np.concatenate([qc.from_layer(p) for qc, p in
                                 zip(lmi.qcs, layer.split(lp))])):
        details["warm_start"] = "lipsdp-layer"


def run(network: Network, lmi: LMI, *, per_neuron: bool | str, solver: str, clock: Clock,
        conic: Callable, cone: int, conic_only: bool = False, ipm: bool = True,
        details: dict, device: str = "auto") -> MethodOutput:
    """The pipeline for one l2 LMI (chain or DAG); ``conic`` solves it with a conic backend
    whose largest cone is ``cone`` (``conic_only``: no other solver; ``ipm``: the interior
    point may take it; ``device``: where the low-rank solver runs)."""
    kind = "lipsdp-l2" if lmi.kind == "chain" else "lipsdp-dag"
    if not conic_only and use_lowrank(lmi, solver, details, conv=_has_conv(network)):
        cert, status, value = run_lowrank(lmi, details, clock, device)
        return output(cert, status, solver="lowrank", solver_value=value, details=details,
                      kind=kind)
    if ipm and use_ipm(lmi, solver, details):
        first = dict(details)
        if lmi.kind == "dag":
            first["form"] = "monolithic (§5a), interior point"
        cert, status, value = run_ipm(lmi, first, clock)
        out = output(cert, status, solver="ipm", solver_value=value, details=first, kind=kind)
        if solver != "auto" or out.status.optimal or out.status.timed_out or \
                lmi.order > SAFETY_NET_MAX_ORDER or clock.expired():
            return out
        return safety_net(out, network, lmi, per_neuron=per_neuron, clock=clock, conic=conic,
                          cone=cone, details=details)
    try:
        backend = choose_backend(cone, solver, conic_only=conic_only)
    except SolverError as exc:
        if conic_only:
            raise
        if lmi.kind == "chain":
            return fallback(lmi, exc, details)
        backend, details["conic"] = BACKENDS["smooth"], str(exc)
    cands = Candidates.start(lmi, clock)

    def best() -> MethodOutput | None:
        if not cands.chain:
            return None
        return output(cands.certified, Status(Outcome.FALLBACK, "ldlt-fast",
                                              fallback_from="the SDP stage"),
                      solver=None, solver_value=None, details=details)

    with keep_best(best):
        # what one certification costs: kept in reserve so the last certificate always fits
        # (a DAG's start is not certified: its clique-wise certificate is estimated)
        reserve = max(2.0 * clock.elapsed(), RESERVE_FACTOR * grouped_certificate_seconds(lmi))
        status, value, stages = Status(Outcome.CONVERGED, "structured solver"), None, \
            SMOOTH_STAGES
        if not backend.structured:
            status, value, won = solver_stage(lmi, backend, cands, clock, reserve, details,
                                              conic)
            stages = POLISH_STAGES if won else SMOOTH_STAGES
        dual = (lmi.kind == "dag" or (_has_conv(network) and per_neuron is not True)) and \
            stages is SMOOTH_STAGES and lmi.order >= DUAL_START_MIN_ORDER
        # a conv chain's dual start beats the layer warm start (cifar_base_kw: 6.77 against
        # 7.16, which took 1/3 of the solver's time): the warm start only where it fails.
        # Not with a multiplier per neuron: its fit is dense in the neurons (NN_rul: 5500)
        warm = bool(per_neuron) and stages is SMOOTH_STAGES
        chain_dual = dual and lmi.kind == "chain"
        if warm and not chain_dual:
            warm_stage(network, lmi, cands, clock, reserve, details)
        if dual and not clock.expired(reserve):
            won = dual_stage(network, lmi, per_neuron, cands, clock, reserve, details)
            if warm and chain_dual and not won:
                warm_stage(network, lmi, cands, clock, reserve, details)
        info: dict = {"timed_out": True}
        floor = DAG_MIN_SECONDS if lmi.kind == "dag" else 0.0
        if not clock.expired(reserve) or floor:
            left = clock.left(reserve)
            if chain_dual:
                # from mu = 1e-3 rho, as large DAGs (cifar_base_kw from its dual start:
                # 1.4 s per evaluation against 10 s at 1e-2, whose soft maximum spans most
                # of the spectrum). Only after a dual start: NN_rul's neuron chain gave
                # 382.2 with it and 365.1 without, one run each, within its run-to-run
                # spread (380.3 and 365.1 for the same code): no gain measured there
                stages = from_large_start(stages)
            params, rho, info = minimize_rho(lmi, cands.best_params(), rel_mu=stages,
                                             time_limit=None if left is None
                                             else max(left, floor))
            details["smooth"] = info
            if backend.structured and value is None:
                value = math.sqrt(rho) if math.isfinite(rho) else None
            cands.add(params, rho if lmi.kind == "dag" and math.isfinite(rho) else None)
        cert = cands.final()
        # the dual point costs about two evaluations of the smoothed rho*
        status = with_gap(lmi, cert, status, details, clock, network, per_neuron,
                          cost=2.0 * info.get("evaluation_seconds", 0.0))
        status = status.with_(theta=cert.theta, timed_out=bool(info.get("timed_out")))
        details["seconds_total"] = clock.elapsed()
        return output(cert, status, solver=backend.name, solver_value=value,
                      details=details, kind=kind)


def safety_net(out: MethodOutput, network: Network, lmi: LMI, *, per_neuron, clock: Clock,
               conic: Callable, cone: int, details: dict) -> MethodOutput:
    """The interior point stopped above the gap tolerance: where a conic solver takes the
    problem, run the pipeline again with it (solve, polish, certify, gap) and report the
    better certified bound, saying what happened."""
    try:
        choose_backend(cone, "auto", conic_only=True)
    except SolverError:
        return out
    second = run(network, lmi, per_neuron=per_neuron, solver="auto", clock=clock, conic=conic,
                 cone=cone, conic_only=True, ipm=False,
                 details={**details, "ipm_stopped": str(out.status)})
    if second.certified and (not out.certified or second.bound < out.bound):
        return replace(second, status=second.status.with_(fallback_from="ipm"))
    return out


def fallback(lmi: LMI, exc: Exception, details: dict) -> MethodOutput:
    """No solver fits or runs: the certified ldlt-fast bound, saying so."""
    cert = certify(lmi, ldlt_fast_params(lmi))
    return output(cert, Status(Outcome.FALLBACK, f"ldlt-fast ({exc})"), solver=None,
                  solver_value=None, details=details,
                  warnings=(f"SDP not solved ({exc}); reporting the certified ldlt-fast bound",))


def estimate_chain_cone(lmi: LMI, form: str) -> int:
    return estimate_cone(lmi.sizes) if form == "chordal" else lmi.order
