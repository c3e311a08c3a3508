"""The Python API: :func:`bound` and :func:`compare` (``lipverify.load`` lives in importers)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version

from .certify.record import CertificateRecord
from .errors import LipverifyError, NotApplicableError, NumericalError, SolverError, UsageError
from .importers import load
from .ir.network import Network
from .methods import get_method
from .numerics import as_numerical_error, blas_threads
from .options import LoadOptions, unknown_option
from .results import BoundResult, MethodOutput
from .status import Outcome, Status

NORMS = ("l2", "linf")

#: Default solver time limit (seconds) when ``auto`` chooses an SDP method.
AUTO_TIME_LIMIT = 120.0
#: Above this LMI order ``auto`` uses the closed-form sequential bound.
AUTO_MAX_ORDER = 6000
#: Largest monolithic (residual) LMI ``auto`` hands to a conic solver.
AUTO_MAX_DAG_ORDER = 2000


def lipverify_version() -> str:
    try:
        return version("lipverify")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


#: Networks up to this many neurons run with one BLAS thread: their matrices are too small to
#: gain from threads, and threaded BLAS collapses when cores are shared (measured: 46 s vs 3 s).
SMALL_NETWORK = 2000


def _blas_threads(network: Network):
    order = network.input_dim + sum(n.width for n in network.nodes)
    return blas_threads(1 if order <= SMALL_NETWORK else None)


def _auto(network: Network, norm: str, options: dict) -> str:
    """Tightest certified method that fits the network and this machine."""
    from .lmi.chain import MAX_CERTIFICATE_BYTES, ChainLMI, dense_certificate_bytes
    from .lmi.dag import DagLMI

    order = network.input_dim + sum(n.width for n in network.nodes)
    if not network.is_sequential:  # residual: the monolithic LMI while it stays small
        if order > AUTO_MAX_DAG_ORDER:
            return "naive"
        try:
            DagLMI.from_network(network)
        except (NotApplicableError, MemoryError):
            return "naive"
        return "lipsdp-neuron"
    if dense_certificate_bytes(order) > MAX_CERTIFICATE_BYTES:
        return "naive"
    try:
        ChainLMI.from_network(network)  # every activation has a QC, and it fits
    except (NotApplicableError, MemoryError):
        return "naive"
    if order > AUTO_MAX_ORDER:
        return "ldlt-fast"
    options.setdefault("time_limit", AUTO_TIME_LIMIT)
    return "lipsdp-neuron"


def bound(
    model,
    method: str = "auto",
    norm: str = "l2",
    output_rows: Sequence[int] | None = None,
    lower_bound: bool | float = False,
    **options,
) -> BoundResult:
    """Bound the Lipschitz constant of ``model`` (a Network, path or nn.Module).

    ``lower_bound=True`` also runs the sampled lower bound and refuses to
    report a "certified" bound below it (that would be a bug: see §6.4).

    >>> import numpy as np, lipverify
    >>> from lipverify.ir.activations import SlopeRestricted
    >>> net = lipverify.Network.sequential([np.eye(2), 3 * np.eye(2)],
    ...                                    [SlopeRestricted.named("relu")])
    >>> r = lipverify.bound(net, method="naive")
    >>> r.certified, round(r.bound, 9)
    (True, 3.0)
    """
    if norm not in NORMS:
        raise UsageError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    load_opts, options = split_options(options)
    _check_solver(options.get("solver", "auto"))
    network = load(model, **load_opts)
    network = network.select_outputs(list(output_rows) if output_rows is not None else None)
    name = method if method != "auto" else _auto(network, norm, options)
    chain = [name] + (_auto_fallbacks(network, name) if method == "auto" else [])
    fell_back: list[str] = []
    for k, name in enumerate(chain):
        info = get_method(name)
        if norm not in info.norms:
            raise NotApplicableError(
                f"method {name} does not support norm {norm} (supports: {', '.join(info.norms)})"
            )
        start = time.perf_counter()
        mine = {k: v for k, v in options.items() if k in info.options.names()}
        info.options.from_dict(mine)  # checks every value before any work
        unused = sorted(k for k in set(options) - set(mine) if options[k] not in (None, "auto"))
        if unused and k == 0:
            fell_back.append(f"options not used by {name}: {', '.join(unused)}")
        try:
            out = _run(info, network, norm, mine)
        except SolverError as exc:
            best = exc.best if isinstance(exc, NumericalError) else None
            if method == "auto" and isinstance(best, MethodOutput) and best.certified:
                out = replace(best, warnings=(*best.warnings, f"auto: {name} failed ({exc}); "
                                              "reporting the best certified bound found"))
            elif k + 1 < len(chain):
                fell_back.append(f"auto: {name} failed ({exc}); fell back to {chain[k + 1]}")
                continue
            else:
                if isinstance(best, MethodOutput):
                    exc.best = _result(network, name, info, best, time.perf_counter() - start,
                                       None, norm, output_rows, method, fell_back)
                raise
        break
    elapsed = time.perf_counter() - start
    lower = None
    if isinstance(lower_bound, (int, float)) and not isinstance(lower_bound, bool):
        lower = float(lower_bound)
    elif lower_bound and info.kind != "lower":
        try:
            lower = _run(get_method("lower"), network, norm, {}).bound
        except SolverError as exc:
            fell_back.append(f"sampled lower bound not computed ({exc})")
    return _result(network, name, info, out, elapsed, lower, norm, output_rows, method,
                   fell_back)


def split_options(options: dict) -> tuple[dict, dict]:
    """``(loader options, method options)``; a key no loader and no method takes is a
    ``UsageError`` naming the closest known key and listing them all.

    >>> split_options({"layout": "out-in", "time_limit": 5})
    ({'layout': 'out-in'}, {'time_limit': 5})
    """
    from .methods import method_option_names

    known = (*LoadOptions.names(), *method_option_names())
    for key in options:
        if key not in known:
            raise unknown_option(key, known)
    load_opts = {k: v for k, v in options.items() if k in LoadOptions.names()}
    LoadOptions.from_dict(load_opts)
    return load_opts, {k: v for k, v in options.items() if k not in load_opts}


def _check_solver(solver: str) -> None:
    """An unknown solver is a usage error (exit 2) and an unusable one (not installed, no
    licence) a solver error (exit 5), both before any work: never a silent fallback."""
    from .solvers.choose import BACKENDS

    if solver == "auto":
        return
    if solver not in BACKENDS:
        raise UsageError(f"unknown solver {solver!r}; choose one of: auto, {', '.join(BACKENDS)}")
    ok, why = BACKENDS[solver].availability()
    if not ok:
        usable = [n for n, b in BACKENDS.items() if b.availability()[0]]
        raise SolverError(f"solver {solver} is not usable here: {why}; usable solvers: auto, "
                          f"{', '.join(usable)}")


def _auto_fallbacks(network: Network, name: str) -> list[str]:
    """What ``auto`` tries after ``name`` fails: the closed-form LDL^T bound (chains), then
    the naive product, which needs nothing but certified spectral norms."""
    order = ["ldlt-fast", "naive"] if network.is_sequential else ["naive"]
    return order[order.index(name) + 1:] if name in order else order


def _run(info, network: Network, norm: str, options: dict) -> MethodOutput:
    """Run one method; a numerical failure inside it leaves as a ``NumericalError`` (exit 5)
    that says which method failed and how, never as a raw LinAlgError or ValueError."""
    try:
        with _blas_threads(network):
            return info.fn(network, norm=norm, **options)
    except LipverifyError:
        raise
    except Exception as exc:
        err = as_numerical_error(exc, f"method {info.name}")
        if err is None:
            raise
        raise err from exc


def _result(network, name, info, out: MethodOutput, elapsed: float, lower, norm, output_rows,
            method, notes) -> BoundResult:
    """The frozen record of one method's output; refuses "certified" below a lower bound."""
    warnings = [*notes, *out.warnings]
    status = out.status
    certified = out.certified and info.kind == "upper"
    if lower is not None and info.kind == "upper" and out.bound < lower * (1 - 1e-9):
        certified = False
        status = Status(Outcome.UNSOUND, "below the lower bound")
        warnings.append(f"bound {out.bound:.8g} is below the lower bound {lower:.8g}: a bug")
    details = dict(out.details)
    if method == "auto":
        details["auto_choice"] = name
        if notes:
            details["auto_fallbacks"] = list(notes)
    return BoundResult(
        model=network.name,
        method=name,
        norm=norm,
        bound=float(out.bound),
        kind=info.kind,
        solver=out.solver,
        status=status,
        time_s=elapsed,
        lower_bound=out.bound if info.kind == "lower" else lower,
        layers=tuple(network.widths),
        output_rows=tuple(output_rows) if output_rows is not None else None,
        solver_value=out.solver_value,
        margin=out.margin,
        sha256=network.provenance.sha256,
        details=details,
        warnings=(*network.provenance.notes, *warnings),
        version=lipverify_version(),
        certificate=CertificateRecord.of(details.pop("certificate", None),
                                         bool(certified and math.isfinite(out.bound))),
    )


def compare(
    models: Iterable,
    methods: Sequence[str] = ("naive", "gershgorin", "lower"),
    norm: str = "l2",
    **options,
):
    """Bound every model with every method.

    Returns a pandas DataFrame (one row per model and method) when pandas is
    installed, else a list of :class:`BoundResult` records.
    """
    results = []
    load_opts, _ = split_options(options)
    for model in models:
        network = load(model, **load_opts)
        for name in methods:
            results.append(bound(network, method=name, norm=norm, **options))
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is optional
        return results
    return pd.DataFrame([r.to_dict() for r in results])
