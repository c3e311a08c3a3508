"""LipSDP methods (FORMULATIONS.md §1-§3, §8): every bound goes through the §8 gate.

``lipsdp-neuron`` / ``lipsdp-layer`` / ``lipsdp-channel`` run the one LipSDP pipeline of
:mod:`lipverify.methods.pipeline` (start -> solver -> polish -> certify -> gap) on the chain or
DAG LMI of the network; if no solver fits, they fall back to the certified sequential bound
(``ldlt-fast``) and say so in the status. ``ldlt-fast`` / ``ldlt`` choose multipliers layer by
layer (§2b) and certify them the same way.
"""

from __future__ import annotations

from dataclasses import replace

from ..certify.gate import certify
from ..errors import NotApplicableError, SolverError
from ..ir.network import Network
from ..lmi.chain import ChainLMI
from ..lmi.dag import DagLMI
from ..lmi.linf import LinfRowLMI
from ..options import SDPOptions, SolverOptions, TimeOptions
from ..results import MethodOutput
from ..runtime.clock import Clock
from ..solvers.choose import choose_backend
from ..solvers.conic import solve_banded, solve_chain, solve_dag, solve_linf
from ..solvers.sequential import ldlt_fast_params, ldlt_params
from ..status import Outcome, Status
from . import pipeline, register_method
from .pipeline import (
    CERTIFY_SECONDS_PER_CUBE,
    CHAINED_MAX_ORDER,
    DAG_CERTIFY_SECONDS_PER_CUBE,
    clique_seconds,
    fallback,
    multiplier_kind,
    output,
)


def _with_fallback(backend, cone: int) -> list:
    """``backend``, then SCS when it is a different usable solver that fits (IPMs can fail
    numerically where ADMM still returns a usable point)."""
    try:
        scs = choose_backend(cone, "scs")
    except SolverError:
        return [backend]
    return [backend] if scs.name == backend.name else [backend, scs]


def _chain(network: Network, per_neuron: bool | str) -> ChainLMI:
    return ChainLMI.from_network(network, per_neuron=per_neuron)




#: A first certificate estimated under this many seconds runs even past a smaller time limit
#: (the overrun is negligible, and its bound is usually far below naive).
MIN_OVERRUN_SECONDS = 1.0


def certificate_seconds(network: Network) -> float:
    """Estimated seconds of one §8 certificate: the chain's cliques (§3), a residual
    network's cliques over its groups (§5c), or its monolithic LMI (§5a) when it has one
    group only."""
    from ..lmi.dag import network_groups

    sizes = network.widths
    if network.is_sequential:
        return clique_seconds(sizes[:-1])
    groups = network_groups(network)
    if len(groups) > 2:
        return clique_seconds(groups, DAG_CERTIFY_SECONDS_PER_CUBE)
    return CERTIFY_SECONDS_PER_CUBE * float(sum(sizes[:-1])) ** 3


def _naive_instead(network: Network, why: str, out: MethodOutput | None = None) -> MethodOutput:
    """The certified naive bound (``out`` when already computed), saying why."""
    from .baselines import naive

    out = naive(network, norm="l2") if out is None else out
    return replace(out, status=Status(Outcome.FALLBACK, f"naive ({why})", fallback_from="lipsdp"),
                   warnings=(*out.warnings, f"{why}; reporting the certified naive bound"))


def _lipsdp(network: Network, *, per_neuron: bool | str, norm: str, **options) -> MethodOutput:
    """LipSDP with a time limit never overruns it before its first certificate and never
    reports more than the certified naive bound (both cost seconds at most); without a time
    limit it reports the SDP's own certificate whatever it is."""
    limit = options.get("time_limit")
    cost = certificate_seconds(network)
    if norm == "l2" and limit is not None and cost > max(limit, MIN_OVERRUN_SECONDS):
        out = _naive_instead(network, f"its first certificate would take about {cost:.3g} s, "
                                      f"over the {limit:g} s time limit")
        return replace(out, status=out.status.with_(timed_out=True))
    out = _lipsdp_run(network, per_neuron=per_neuron, norm=norm, **options)
    if norm == "l2" and limit is not None:
        from .baselines import naive

        floor = naive(network, norm="l2")
        if floor.certified and not out.bound <= floor.bound:
            return _naive_instead(network, f"the SDP's certified {out.bound:.6g} is above the "
                                           f"naive product", floor)
    return out


def _lipsdp_run(
    network: Network,
    *,
    per_neuron: bool | str,
    norm: str,
    solver: str = "auto",
    time_limit: float | None = None,
    form: str = "chordal",
    device: str = "auto",
    **_,
) -> MethodOutput:
    if norm != "l2":
        return lipsdp_linf(network, per_neuron=per_neuron, solver=solver, time_limit=time_limit)
    clock = Clock(time_limit)
    if network.is_sequential:
        lmi = _chain(network, per_neuron)
        details = {"order": lmi.order, "form": form, "multipliers": multiplier_kind(per_neuron)}
        return pipeline.run(network, lmi, per_neuron=per_neuron, solver=solver, clock=clock,
                            conic=lambda m, be, tl: solve_chain(m, be, tl, form),
                            cone=pipeline.estimate_chain_cone(lmi, form), details=details,
                            device=device)
    # residual / skip networks (§5): the chained LMI (§5b) for the conic solvers, the
    # monolithic one (§5a) with form="full" (for checking); the certificate is always §5a's
    from ..lmi.banded import max_cone

    lmi = DagLMI.from_network(network, per_neuron)
    monolithic = form in ("full", "monolithic")
    details = {"order": lmi.order, "form": "monolithic (§5a)" if monolithic else "chained (§5b)",
               "multipliers": multiplier_kind(per_neuron)}
    # sizing the chained cones takes one SVD per node; above CHAINED_MAX_ORDER the conic
    # route would be too slow anyway, so go straight to the structured solver
    cone = lmi.order if monolithic or lmi.order > CHAINED_MAX_ORDER else max_cone(lmi)
    details["max_cone"] = cone
    return pipeline.run(network, lmi, per_neuron=per_neuron, solver=solver, clock=clock,
                        ipm=not monolithic, conic=solve_dag if monolithic else solve_banded,
                        cone=cone, conic_only=monolithic, details=details)


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
    options=TimeOptions,
)
def ldlt_fast(network: Network, *, norm: str = "l2", time_limit: float | None = None,
              **_) -> MethodOutput:
    lmi = _chain(network, True)
    cert = certify(lmi, ldlt_fast_params(lmi), Clock(time_limit).deadline)
    return output(cert, Status(), solver=None, solver_value=None, details={"order": lmi.order})


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
        return fallback(lmi, exc, {"order": lmi.order})
    cert = certify(lmi, ldlt_params(lmi, backend, time_limit))
    return output(cert, Status(), solver=backend.name, solver_value=None,
                  details={"order": lmi.order})


def lipsdp_linf(
    network: Network,
    *,
    per_neuron: bool,
    solver: str = "auto",
    time_limit: float | None = None,
    **_,
) -> MethodOutput:
    """§1.4 per output row (the ``linf-row`` LMI kind), solved by a conic backend and
    certified by the §8 gate on the bordered matrix; the reported bound is the max over rows
    (l_inf -> l_inf). One clock covers every row."""
    rows, ok, statuses, certs = [], True, set(), []
    backend, clock = None, Clock(time_limit)
    for j in range(network.output_dim):
        row = LinfRowLMI.from_network(network.select_outputs([j]), per_neuron)
        if backend is None:
            backend = choose_backend(row.order, solver, conic_only=True)
        params, row_status = None, "no solver"
        share = 1.0 / (network.output_dim - j)  # an equal share of what is left per row
        for be in _with_fallback(backend, row.order):
            try:
                result = solve_linf(row.chain, be, clock.left(share=share))
                params, row_status = result.params, f"{be.name} {result.status}"
                break
            except SolverError as exc:  # next solver; else the polished start, certified
                row_status = f"{be.name} failed ({exc}); structured start"
        statuses.add(row_status)
        cert = certify(row, params, clock.deadline)
        ok = ok and cert.ok
        rows.append(cert.bound)
        certs.append({"rho": cert.bound, "params": cert.params.tolist()})
    optimal = all(s.endswith(" optimal") for s in statuses)
    status = Status(Outcome.OPTIMAL) if optimal else \
        Status(Outcome.STOPPED, "solver " + ",".join(sorted(statuses)))
    from .baselines import naive

    plain = naive(network, norm="linf")
    if ok and plain.certified and plain.bound < max(rows):
        # the l_inf LMI is not always below the row-sum product (§1.4): never report worse
        return MethodOutput(
            bound=plain.bound, certified=True, status=status.with_(
                note=f"naive product reported: tighter than the l_inf LMI's certified "
                f"{max(rows):.6g}"), solver=backend.name,
            details={"per_row": rows, "lmi_bound": max(rows), **plain.details})
    return MethodOutput(
        bound=max(rows),
        certified=ok,
        status=status if ok else Status(Outcome.NOT_CERTIFIED),
        solver=backend.name,
        details={
            "per_row": rows,
            "certificate": {
                "kind": "lipsdp-linf",
                "multipliers": multiplier_kind(per_neuron),
                "rows": certs,
            },
        },
    )
