"""LipSDP methods (FORMULATIONS.md §1-§3, §8): every bound goes through ``certify_chain``.

``lipsdp-neuron`` / ``lipsdp-layer`` solve the SDP with a backend, then certify; if the
solve fails, times out, or no backend fits, they fall back to the best certified sequential
bound (``ldlt-fast``) and say so in ``status``. ``ldlt-fast`` / ``ldlt`` choose multipliers
layer by layer (§2b) and certify them the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np

from ..certify.gate import Certificate, certify, certify_chain, certify_if_better
from ..errors import NotApplicableError, SolverError
from ..ir.network import Network
from ..lmi import linf
from ..lmi.chain import ChainLMI
from ..lmi.dag import DagLMI, solve_dag
from ..numerics import as_numerical_error
from ..options import SDPOptions, SolverOptions
from ..results import MethodOutput
from ..runtime.clock import Clock
from ..solvers.choose import BACKENDS, choose_backend, estimate_cone
from ..solvers.conic import solve_chain, solve_linf
from ..solvers.sequential import ldlt_fast_params, ldlt_params
from ..solvers.smooth_rho import minimize_rho
from . import register_method


def _output(
    cert: Certificate, *, status: str, solver: str | None, solver_value, details, warnings=()
) -> MethodOutput:
    details = {
        **details,
        "certificate": {
            "kind": "lipsdp-l2",
            "multipliers": details.get("multipliers", "neuron"),
            "rho": cert.rho,
            "params": cert.params.tolist(),
            "theta": cert.theta,
            "eps": cert.margin,
            "message": cert.message,
        },
    }
    return MethodOutput(
        bound=cert.bound,
        certified=cert.ok,
        status=status if cert.ok else f"not certified: {cert.message}",
        solver=solver,
        solver_value=solver_value,
        margin=cert.margin,
        details=details,
        warnings=tuple(warnings),
    )


def _fallback(lmi: ChainLMI, exc: Exception, details: dict) -> MethodOutput:
    """No solver fits or runs: the certified ldlt-fast bound, saying so."""
    cert = certify_chain(lmi, ldlt_fast_params(lmi))
    return _output(
        cert,
        status=f"fallback ldlt-fast: {exc}",
        solver=None,
        solver_value=None,
        details=details,
        warnings=(f"SDP not solved ({exc}); reporting the certified ldlt-fast bound",),
    )


@contextmanager
def _keep_best(best: Callable[[], MethodOutput]):
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


def _with_fallback(backend, cone: int) -> list:
    """``backend``, then SCS when it is a different usable solver that fits (IPMs can fail
    numerically where ADMM still returns a usable point)."""
    try:
        scs = choose_backend(cone, "scs")
    except SolverError:
        return [backend]
    return [backend] if scs.name == backend.name else [backend, scs]


def _with_gap(lmi, params, rho: float, status: str, details: dict,
              clock: Clock | None = None) -> str:
    """Measure the optimality gap from a dual bound (:mod:`lipverify.solvers.gap`); a quality
    figure only, never part of the certificate (skipped when the time limit is reached)."""
    from ..solvers.gap import gap

    if not math.isfinite(rho):
        return status
    if clock is not None and clock.expired():
        text = "optimality gap not computed: time limit"
        return status.replace("optimality gap not computed", text) \
            if "optimality gap not computed" in status else f"{status}; {text}"
    start = time.perf_counter()
    g = gap(lmi, params, rho)
    details["dual_lower"], details["gap"] = g["lower"], g["gap"]
    details["gap_seconds"] = time.perf_counter() - start
    gap_text = "optimality gap not computed" if g["gap"] is None \
        else f"optimality gap {g['gap']:.2e}"
    if "optimality gap not computed" in status:
        return status.replace("optimality gap not computed", gap_text)
    return f"{status}; {gap_text}"


def _feasible(lmi: ChainLMI, params) -> np.ndarray:
    """``params`` projected, if strictly feasible (finite rho*); else their certified repair.
    A solver start needs no certificate."""
    p = lmi.project(params)
    return p if math.isfinite(lmi.rho_star(p)) else certify_chain(lmi, p).params


def _kind(per_neuron: bool | str) -> str:
    return per_neuron if isinstance(per_neuron, str) else ("neuron" if per_neuron else "layer")


def _chain(network: Network, per_neuron: bool | str) -> ChainLMI:
    return ChainLMI.from_network(network, per_neuron=per_neuron)


def _lipsdp(
    network: Network,
    *,
    per_neuron: bool,
    norm: str,
    solver: str = "auto",
    time_limit: float | None = None,
    form: str = "chordal",
    **_,
) -> MethodOutput:
    if norm != "l2":
        return lipsdp_linf(network, per_neuron=per_neuron, solver=solver, time_limit=time_limit)
    if not network.is_sequential:
        return _lipsdp_dag(network, per_neuron, solver, time_limit, form)
    lmi = _chain(network, per_neuron)
    details = {"order": lmi.order, "form": form, "multipliers": _kind(per_neuron)}
    clock = Clock(time_limit)
    if _use_ipm(lmi, solver, details):
        return _lipsdp_ipm(lmi, details, clock)
    cone = estimate_cone(lmi.sizes) if form == "chordal" else lmi.order
    try:
        backend = choose_backend(cone, solver)
    except SolverError as exc:
        return _fallback(lmi, exc, details)
    solver_value, status = None, "optimal"
    fast = certify_chain(lmi, ldlt_fast_params(lmi))
    with _keep_best(lambda: _output(fast, status="ldlt-fast (the SDP stage failed)",
                                    solver=None, solver_value=None, details=details)):
        # what one certification costs: kept in reserve so the last certificate always fits
        reserve = 2.0 * clock.elapsed()
        start_cert, stages = fast, SMOOTH_STAGES
        if backend.structured:
            status = "converged (structured solver; optimality gap not computed)"
        else:
            try:
                result = solve_chain(lmi, backend, clock.left(reserve), form)
            except SolverError as exc:
                result = None
                status = f"{backend.name} failed ({exc}); structured solver used"
            if result is None or result.params is None:
                if result is not None:
                    status = f"{backend.name} status {result.status}; structured solver used"
            else:
                solver_value = result.value
                status = "optimal" if result.status == "optimal" else f"solver {result.status}"
                details["solve_seconds"] = result.seconds
                solved = certify_chain(lmi, result.params, clock.deadline)
                if solved.bound <= fast.bound:
                    start_cert, stages = solved, POLISH_STAGES
                else:  # a poor (e.g. time-limited) solve
                    status += "; started from ldlt-fast, which was better"
        if per_neuron and stages is SMOOTH_STAGES and not clock.expired(2.0 * reserve):
            # cold start: solve the few-variable layer problem first, expand it per neuron
            layer = _chain(network, False)
            lp, _, _ = minimize_rho(layer, _feasible(layer, ldlt_fast_params(layer)),
                                    time_limit=clock.left(2.0 * reserve, share=1 / 3))
            warm = certify_if_better(lmi, np.concatenate(
                [qc.from_layer(p) for qc, p in zip(lmi.qcs, layer.split(lp))]), start_cert,
                clock.deadline)
            if warm is not start_cert:
                start_cert = warm
                details["warm_start"] = "lipsdp-layer"
        info = {"timed_out": True}
        params = None
        if not clock.expired(reserve):
            params, rho, info = minimize_rho(lmi, start_cert.params, rel_mu=stages,
                                             time_limit=clock.left(reserve))
            details["smooth"] = info
            if backend.structured:
                solver_value = math.sqrt(rho) if math.isfinite(rho) else None
        # report the best certificate: never worse than the start it polished
        cert = start_cert
        if params is not None:
            cert = certify_if_better(lmi, params, start_cert, clock.deadline)
        status = _with_gap(lmi, cert.params, cert.rho, status, details, clock)
        if cert.theta > 0:
            status += f"; repaired (theta={cert.theta:.3g})"
        if info.get("timed_out"):
            status += "; time limit reached, best certified iterate"
        details["seconds_total"] = clock.elapsed()
        return _output(
            cert, status=status, solver=backend.name, solver_value=solver_value, details=details
        )


#: ``auto`` runs the interior-point solver on slope-QC LMIs up to this order (its dense
#: inverse and n x n Newton matrix cost O(N^3) per iteration; larger LMIs use ``smooth``).
IPM_AUTO_MAX_ORDER = 3000


def _use_ipm(lmi, solver: str, details: dict) -> bool:
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


def _dag_output(bound, params, rho, theta, *, status, solver, solver_value, details):
    """A residual-network result with its monolithic (§5a) certificate record."""
    ok = math.isfinite(bound)
    details["certificate"] = {"kind": "lipsdp-dag", "multipliers": details["multipliers"],
                              "rho": rho, "theta": theta, "params": np.asarray(params).tolist()}
    return MethodOutput(bound=bound, certified=ok, status=status if ok else "not certified",
                        solver=solver, solver_value=solver_value, details=details)


def _lipsdp_ipm(lmi, details: dict, clock: Clock) -> MethodOutput:
    """The interior-point solver (:mod:`lipverify.solvers.interior`), then the §8
    certificate of its multipliers on the exact weights.
    Its optimality gap comes from its own dual point.
    With a time limit the start is certified first (the bound returned if time runs out) and
    the solver gets what is left after one more certification."""
    from ..solvers.interior import solve_chain_ipm

    dag = lmi.kind == "dag"
    start = lmi.anchor() if dag else ldlt_fast_params(lmi)
    first, reserve = None, 0.0
    if clock.limit is not None:
        first = certify(lmi, start)
        reserve = 2.0 * clock.elapsed()
    res = solve_chain_ipm(lmi, start, time_limit=clock.left(reserve))
    details.update(ipm_iterations=res.iterations, solve_seconds=res.seconds,
                   ipm_status=res.status, ipm_algorithm=res.algorithm)
    cert = certify(lmi, res.params, clock.deadline)
    status = "optimal" if res.status == "optimal" else f"interior point: {res.status}"
    if res.status != "optimal":  # stopped early: never worse than its certified start
        if first is None:
            first = certify(lmi, start, clock.deadline)
        if first.bound < cert.bound:
            cert, details["ipm_start_better"] = first, True
            status += f"; its start ({'anchor' if dag else 'ldlt-fast'}) certified lower"
    if res.lower is not None and cert.ok:
        low = math.sqrt(max(res.lower, 0.0))
        details["dual_lower"], details["gap"] = low, (cert.bound - low) / cert.bound
        status += f"; optimality gap {details['gap']:.2e}"
    else:
        status += "; optimality gap not computed"
    if res.status == "time limit":
        status += "; time limit reached, best certified iterate"
    solver_value = math.sqrt(res.rho)
    if dag:
        return _dag_output(cert.bound, cert.params, cert.rho, cert.theta, status=status,
                           solver="ipm", solver_value=solver_value, details=details)
    return _output(cert, status=status, solver="ipm", solver_value=solver_value,
                   details=details)


#: Residual networks above this order skip the chained conic solve (structured solver only).
CHAINED_MAX_ORDER = 1500


def _lipsdp_dag(network: Network, per_neuron: bool, solver: str, time_limit,
                form: str = "chordal") -> MethodOutput:
    """Residual / skip-connection networks (§5). The chained LMI (§5b) with a conic backend
    when its cones fit one, else (or after it, as a polish) the structured solver on rho*;
    ``form="full"`` solves the monolithic LMI (§5a) instead, for checking. Whatever finds the
    multipliers, the certificate is the §8 check of the monolithic LMI."""
    from ..lmi.banded import max_cone, solve_chained

    start = time.perf_counter()
    lmi = DagLMI.from_network(network, per_neuron)
    monolithic = form in ("full", "monolithic")
    details = {"order": lmi.order, "form": "monolithic (§5a)" if monolithic else "chained (§5b)",
               "multipliers": _kind(per_neuron)}
    if not monolithic and _use_ipm(lmi, solver, details):
        details["form"] = "monolithic (§5a), interior point"
        return _lipsdp_ipm(lmi, details, Clock(time_limit))
    # the chained cones need one SVD per node to size; above CHAINED_MAX_ORDER the conic
    # route would be too slow anyway, so go straight to the structured solver
    cone = lmi.order if monolithic or lmi.order > CHAINED_MAX_ORDER else max_cone(lmi)
    details["max_cone"] = cone
    # candidates (rho*, params) are compared by rho* and only the winner is certified (each
    # certificate is a few dense Cholesky factorisations of the whole LMI)
    cands = [(lmi.rho_star(anchor := lmi.anchor()), anchor)]
    status, solver_name, solver_value, stages = "anchor", "smooth", None, SMOOTH_STAGES

    def add(params) -> float:
        rho = lmi.rho_star(params)
        if not math.isfinite(rho):  # repair by blending toward the anchor (§8 step 4)
            repaired = certify(lmi, params)
            params = repaired.params
            rho = lmi.rho_star(params) if repaired.ok else math.inf
        if math.isfinite(rho):
            cands.append((rho, params))
        return rho

    try:
        backend = choose_backend(cone, solver, conic_only=monolithic)
    except SolverError as exc:
        if monolithic:
            raise
        backend, details["conic"] = BACKENDS["smooth"], str(exc)
    if not backend.structured:
        solve = solve_dag if monolithic else solve_chained
        try:
            params, conic_status = solve(lmi, backend, time_limit)
        except SolverError as exc:
            params, conic_status = None, str(exc)
        solver_name = backend.name
        if params is not None:
            status = "optimal" if conic_status == "optimal" else f"solver {conic_status}"
            if add(lmi.project(params)) <= min(c[0] for c in cands):
                stages = POLISH_STAGES
        else:
            status = f"{backend.name} status {conic_status}; structured solver used"
    else:
        status = "converged (structured solver; optimality gap not computed)"
    if per_neuron and stages is SMOOTH_STAGES:  # cold start: layer multipliers first
        from dataclasses import replace

        from ..lmi.chain import node_qcs

        layer = replace(lmi, qcs=node_qcs(network, False))
        budget = None if time_limit is None else max(time_limit / 3.0, 1.0)
        lp, _, _ = minimize_rho(layer, layer.anchor(), time_limit=budget)
        if add(np.concatenate([qc.from_layer(p) for qc, p in zip(lmi.qcs, layer.split(lp))])) \
                <= min(c[0] for c in cands):
            details["warm_start"] = "lipsdp-layer"
    remaining = None if time_limit is None else max(time_limit - (time.perf_counter() - start), 1)
    first = min(cands, key=lambda c: c[0])[1]
    params, rho, info = minimize_rho(lmi, first, rel_mu=stages, time_limit=remaining)
    details["smooth"] = info
    if solver_value is None and backend.structured:
        solver_value = math.sqrt(rho) if math.isfinite(rho) else None
    cands.append((rho, params))
    for _, cand in sorted(cands, key=lambda c: c[0]):
        cert = certify(lmi, cand)
        if cert.ok:
            break
    bound, params, rho, theta = cert.bound, cert.params, cert.rho, cert.theta
    status = _with_gap(lmi, params, rho, status, details)
    if theta > 0:
        status += f"; repaired (theta={theta:.3g})"
    if info.get("timed_out"):
        status += "; time limit reached, best certified iterate"
    return _dag_output(bound, params, rho, theta, status=status, solver=solver_name,
                       solver_value=solver_value, details=details)


#: mu / rho schedules of the structured solver: from scratch, and polishing a solver's point.
SMOOTH_STAGES = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9)
POLISH_STAGES = (1e-6, 1e-7, 1e-8, 1e-9)


@register_method(
    "lipsdp-neuron",
    norms=("l2", "linf"),
    summary="LipSDP with one multiplier per neuron (§1.3), "
    "chordal form (§3), certified (§8). Tightest; needs an SDP solver.",
    options=SDPOptions,
)
def lipsdp_neuron(network: Network, *, norm: str = "l2", **options) -> MethodOutput:
    return _lipsdp(network, per_neuron=True, norm=norm, **options)


@register_method(
    "lipsdp-layer",
    norms=("l2", "linf"),
    summary="LipSDP with one multiplier per layer (§1.3): fewer variables, looser; certified.",
    options=SDPOptions,
)
def lipsdp_layer(network: Network, *, norm: str = "l2", **options) -> MethodOutput:
    return _lipsdp(network, per_neuron=False, norm=norm, **options)


@register_method(
    "lipsdp-channel",
    summary="LipSDP with one multiplier per conv output channel (§7), per neuron elsewhere: "
    "between neuron and layer in tightness, far fewer variables on CNNs; certified.",
    options=SDPOptions,
)
def lipsdp_channel(network: Network, *, norm: str = "l2", **options) -> MethodOutput:
    if norm != "l2":
        raise NotApplicableError("lipsdp-channel supports the l2 norm only")
    return _lipsdp(network, per_neuron="channel", norm=norm, **options)


@register_method("lipsdp-network", summary="REFUSED: coupled multipliers are unsound (§1.3).")
def lipsdp_network(network: Network, **_) -> MethodOutput:
    raise NotApplicableError(
        "LipSDP-Network (coupled neuron multipliers) is not sound for incremental constraints: "
        "it can return values below the true Lipschitz constant (FORMULATIONS.md §1.3, e.g. 1.0 "
        "for a network whose constant is 2.83). Use lipsdp-neuron instead."
    )


@register_method(
    "ldlt-fast",
    summary="ECLipsE-Fast closed-form multipliers (§2b), generalised "
    "soundly to any slopes; certified. No SDP: milliseconds.",
)
def ldlt_fast(network: Network, *, norm: str = "l2", **_) -> MethodOutput:
    lmi = _chain(network, True)
    cert = certify_chain(lmi, ldlt_fast_params(lmi))
    return _output(cert, status="ok", solver=None, solver_value=None, details={"order": lmi.order})


@register_method(
    "ldlt",
    summary="ECLipsE per-layer SDPs of order 2 n_k (§2b); certified. "
    "Between ldlt-fast and lipsdp-neuron in cost and tightness.",
    options=SolverOptions,
)
def ldlt(
    network: Network,
    *,
    norm: str = "l2",
    solver: str = "auto",
    time_limit: float | None = None,
    **_,
) -> MethodOutput:
    lmi = _chain(network, True)
    cone = 2 * max(lmi.sizes[1:])
    try:
        backend = choose_backend(cone, solver, conic_only=True)
    except SolverError as exc:
        return _fallback(lmi, exc, {"order": lmi.order})
    cert = certify_chain(lmi, ldlt_params(lmi, backend, time_limit))
    return _output(
        cert, status="ok", solver=backend.name, solver_value=None, details={"order": lmi.order}
    )


def lipsdp_linf(
    network: Network,
    *,
    per_neuron: bool,
    solver: str = "auto",
    time_limit: float | None = None,
    **_,
) -> MethodOutput:
    """§1.4 per output row, solved by a conic backend and certified on the bordered matrix
    (§8); the reported bound is the max over rows (l_inf -> l_inf)."""
    rows, ok, statuses, certs = [], True, set(), []
    backend = None
    for j in range(network.output_dim):
        lmi = _chain(network.select_outputs([j]), per_neuron)
        if backend is None:
            backend = choose_backend(lmi.order + 1, solver, conic_only=True)
        params, row_status = None, "no solver"
        for be in _with_fallback(backend, lmi.order + 1):
            try:
                result = solve_linf(lmi, be, time_limit)
                params, row_status = result.params, f"{be.name} {result.status}"
                break
            except SolverError as exc:  # next solver; else the polished start, certified
                row_status = f"{be.name} failed ({exc}); structured start"
        statuses.add(row_status)
        cert = linf.best_blend(lmi, params)
        ok = ok and cert.ok
        rows.append(cert.bound)
        certs.append({"rho": cert.bound, "params": cert.params.tolist()})
    status = "optimal" if all(s.endswith(" optimal") for s in statuses) \
        else "solver " + ",".join(sorted(statuses))
    from .baselines import naive

    plain = naive(network, norm="linf")
    if ok and plain.certified and plain.bound < max(rows):
        # the l_inf LMI is not always below the row-sum product (§1.4): never report worse
        return MethodOutput(
            bound=plain.bound, certified=True, status=f"naive product (tighter than the "
            f"l_inf LMI's certified {max(rows):.6g}; {status})", solver=backend.name,
            details={"per_row": rows, "lmi_bound": max(rows), **plain.details})
    return MethodOutput(
        bound=max(rows),
        certified=ok,
        status=status if ok else "not certified",
        solver=backend.name,
        details={
            "per_row": rows,
            "certificate": {
                "kind": "lipsdp-linf",
                "multipliers": _kind(per_neuron),
                "rows": certs,
            },
        },
    )
