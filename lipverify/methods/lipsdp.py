"""LipSDP methods (FORMULATIONS.md §1-§3, §8): every bound goes through ``certify_chain``.

``lipsdp-neuron`` / ``lipsdp-layer`` solve the SDP with a backend, then certify; if the
solve fails, times out, or no backend fits, they fall back to the best certified sequential
bound (``ldlt-fast``) and say so in ``status``. ``ldlt-fast`` / ``ldlt`` choose multipliers
layer by layer (§2b) and certify them the same way.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..errors import NotApplicableError, SolverError
from ..network import Network
from ..results import MethodOutput
from ..sdp import linf
from ..sdp.backends import choose_backend, estimate_cone
from ..sdp.certificate import Certificate, certify_chain
from ..sdp.chain import ChainLMI
from ..sdp.dag import DagLMI, certify_dag, solve_dag
from ..sdp.sequential import ldlt_fast_params, ldlt_params
from ..sdp.smooth import minimize_rho
from ..sdp.solve import solve_chain, solve_linf
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


def _chain(network: Network, per_neuron: bool) -> ChainLMI:
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
        return _lipsdp_dag(network, per_neuron, solver, time_limit)
    lmi = _chain(network, per_neuron)
    details = {"order": lmi.order, "form": form, "multipliers": "neuron" if per_neuron else "layer"}
    cone = estimate_cone(lmi.sizes) if form == "chordal" else lmi.order
    start = time.perf_counter()
    try:
        backend = choose_backend(cone, solver)
    except SolverError as exc:
        return _fallback(lmi, exc, details)
    solver_value, status = None, "optimal"
    fast = certify_chain(lmi, ldlt_fast_params(lmi))
    start_cert, stages = fast, SMOOTH_STAGES
    if backend.structured:
        status = "converged (structured solver; optimality gap not computed)"
    else:
        try:
            result = solve_chain(lmi, backend, time_limit, form)
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
            solved = certify_chain(lmi, result.params)
            if solved.bound <= fast.bound:
                start_cert, stages = solved, POLISH_STAGES
            else:  # a poor (e.g. time-limited) solve
                status += "; started from ldlt-fast, which was better"
    if per_neuron and stages is SMOOTH_STAGES:
        # cold start: solve the few-variable layer problem first, expand it per neuron
        budget = None if time_limit is None else max(time_limit / 3.0, 1.0)
        layer = _chain(network, False)
        lp, _, _ = minimize_rho(layer, certify_chain(layer, ldlt_fast_params(layer)).params,
                                time_limit=budget)
        warm = certify_chain(lmi, np.concatenate(
            [qc.from_layer(p) for qc, p in zip(lmi.qcs, layer.split(lp))]))
        if warm.bound < start_cert.bound:
            start_cert = warm
            details["warm_start"] = "lipsdp-layer"
    remaining = None if time_limit is None else max(time_limit - (time.perf_counter() - start), 1)
    params, rho, info = minimize_rho(lmi, start_cert.params, rel_mu=stages, time_limit=remaining)
    details["smooth"] = info
    if backend.structured:
        solver_value = math.sqrt(rho)
    # report the best certificate: never worse than the start it polished
    cert = min(certify_chain(lmi, params), start_cert, key=lambda c: c.bound)
    if cert.theta > 0:
        status += f"; repaired (theta={cert.theta:.3g})"
    if info.get("timed_out"):
        status += "; time limit reached, best certified iterate"
    return _output(
        cert, status=status, solver=backend.name, solver_value=solver_value, details=details
    )


def _lipsdp_dag(network: Network, per_neuron: bool, solver: str, time_limit) -> MethodOutput:
    """Residual / skip-connection networks: the monolithic LMI of §5a, certified (§8)."""
    lmi = DagLMI.from_network(network, per_neuron)
    details = {"order": lmi.order, "form": "monolithic (§5a)",
               "multipliers": "neuron" if per_neuron else "layer"}
    backend = choose_backend(lmi.order, solver, conic_only=True)
    params, status = solve_dag(lmi, backend, time_limit)
    if params is None:
        params, status = lmi.anchor(), f"{backend.name} status {status}; anchor multipliers"
    bound, params, rho, theta = certify_dag(lmi, params)
    if theta > 0:
        status += f"; repaired (theta={theta:.3g})"
    ok = math.isfinite(bound)
    details["certificate"] = {"kind": "lipsdp-dag", "multipliers": details["multipliers"],
                              "rho": rho, "theta": theta,
                              "params": params.tolist()}
    return MethodOutput(bound=bound, certified=ok, status=status if ok else "not certified",
                        solver=backend.name, details=details)


#: mu / rho schedules of the structured solver: from scratch, and polishing a solver's point.
SMOOTH_STAGES = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9)
POLISH_STAGES = (1e-6, 1e-7, 1e-8, 1e-9)


@register_method(
    "lipsdp-neuron",
    norms=("l2", "linf"),
    summary="LipSDP with one multiplier per neuron (§1.3), "
    "chordal form (§3), certified (§8). Tightest; needs an SDP solver.",
)
def lipsdp_neuron(network: Network, *, norm: str = "l2", **options) -> MethodOutput:
    return _lipsdp(network, per_neuron=True, norm=norm, **options)


@register_method(
    "lipsdp-layer",
    norms=("l2", "linf"),
    summary="LipSDP with one multiplier per layer (§1.3): fewer variables, looser; certified.",
)
def lipsdp_layer(network: Network, *, norm: str = "l2", **options) -> MethodOutput:
    return _lipsdp(network, per_neuron=False, norm=norm, **options)


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
        result = solve_linf(lmi, backend, time_limit)
        statuses.add(result.status)
        cert = linf.best_blend(lmi, result.params)
        ok = ok and cert.ok
        rows.append(cert.bound)
        certs.append({"rho": cert.bound, "params": cert.params.tolist()})
    status = "optimal" if statuses == {"optimal"} else "solver " + ",".join(sorted(statuses))
    return MethodOutput(
        bound=max(rows),
        certified=ok,
        status=status if ok else "not certified",
        solver=backend.name,
        details={
            "per_row": rows,
            "certificate": {
                "kind": "lipsdp-linf",
                "multipliers": "neuron" if per_neuron else "layer",
                "rows": certs,
            },
        },
    )
