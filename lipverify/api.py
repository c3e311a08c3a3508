"""The Python API: :func:`bound` and :func:`compare` (``lipverify.load`` lives in importers)."""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version

import numpy as np

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


def bound(
    model,
    method: str = "auto",
    norm: str = "l2",
    output_rows: Sequence[int] | None = None,
    lower_bound: bool | float = False,
    region=None,
    progress=None,
    started: float | None = None,
    **options,
) -> BoundResult:
    """Bound the Lipschitz constant of ``model`` (a Network, path or nn.Module).

    ``lower_bound=True`` also runs the sampled lower bound and refuses to
    report a "certified" bound below it (that would be a bug: see §6.4).

    ``region``: a :class:`~lipverify.regions.Box` or :class:`~lipverify.regions.Ball` (or
    the box of :func:`~lipverify.regions.read_vnnlib`) makes it a *local* bound (l2), valid
    for pairs of inputs inside the region only: :func:`lipverify.regions.local_bound`, never
    above the global bound; ``lower_bound=True`` adds the sampled local lower bound.

    ``method="auto"`` is anytime (:mod:`lipverify.methods.anytime`): the certified naive bound
    first, then ``ldlt-fast`` and an SDP while the time limit (default 120 s, 300 s on
    convolutional and residual networks) lasts; the smallest certified bound is returned and
    ``details["auto_stages"]`` lists every stage. ``progress(text)`` is told each stage.
    ``auto``'s time limit covers the whole call, loading the model and the sampled lower bound
    included, counted from ``started`` (a ``time.perf_counter()`` value; default: when this
    call begins; the command line passes its own start). With another method the sampled
    lower bound runs after it, in at most 10% more.

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
    output_rows = check_output_rows(output_rows)
    _check_lower_bound(lower_bound)
    started = time.perf_counter() if started is None else float(started)
    if region is not None:
        return _bound_on_region(model, region, method, norm, output_rows, lower_bound, options)
    _check_time_limit(options.get("time_limit"))
    load_opts, options = split_options(options)
    _check_solver(options.get("solver", "auto"))
    _check_device(options.get("device", "auto"))
    network = load(model, **load_opts)
    network = network.select_outputs(list(output_rows) if output_rows is not None else None)
    fell_back: list[str] = []
    sample_lower = isinstance(lower_bound, (bool, np.bool_)) and bool(lower_bound)
    lower = None if isinstance(lower_bound, (bool, np.bool_)) else float(lower_bound)
    if method == "auto" and options.get("time_limit") is None:
        from .methods.anytime import default_time_limit

        options["time_limit"] = default_time_limit(network)
    if method == "auto" and sample_lower:  # first, so that auto can stop once it is tight
        lower = _sampled_lower(network, norm, options, fell_back)
    if method == "auto":  # the stages get what is left of the limit (naive always runs)
        spent = time.perf_counter() - started
        options["time_limit"] = max(options["time_limit"] * (1.0 - AUTO_MARGIN) - spent, 1e-3)
    start = time.perf_counter()
    if method == "auto":
        name, out, notes = _anytime(network, norm, options, progress, lower)
        fell_back += notes
        info = get_method(name)
    else:
        info = get_method(method)
        name = method
        if norm not in info.norms:
            raise NotApplicableError(
                f"method {name} does not support norm {norm} (supports: {', '.join(info.norms)})"
            )
        mine = {k: v for k, v in options.items() if k in info.options.names()}
        info.options.from_dict(mine)  # checks every value before any work
        unused = sorted(k for k in set(options) - set(mine) if options[k] not in (None, "auto"))
        if unused:
            fell_back.append(f"options not used by {name}: {', '.join(unused)}")
        try:
            out = _run(info, network, norm, mine)
        except SolverError as exc:
            best = exc.best if isinstance(exc, NumericalError) else None
            if isinstance(best, MethodOutput):
                exc.best = _result(network, name, info, best, time.perf_counter() - start,
                                   None, norm, output_rows, method, fell_back)
            raise
    elapsed = time.perf_counter() - start
    if sample_lower and method != "auto" and info.kind != "lower":
        lower = _sampled_lower(network, norm, options, fell_back)
    return _result(network, name, info, out, elapsed, lower, norm, output_rows, method,
                   fell_back)


def _sampled_lower(network, norm, options, notes) -> float | None:
    """The sampled lower bound (§6.4) within its share of the time limit, or None (noted)."""
    try:
        return _run(get_method("lower"), network, norm,
                    {"time_limit": lower_time_limit(options.get("time_limit"))}).bound
    except SolverError as exc:
        notes.append(f"sampled lower bound not computed ({exc})")
        return None


def _bound_on_region(model, region, method, norm, output_rows, lower_bound, options):
    """:func:`bound` with ``region``: the local bound of the selected outputs."""
    from .regions import Region, local_bound

    if not isinstance(region, Region):
        raise UsageError(f"region must be a lipverify.Box or lipverify.Ball (a .vnnlib file: "
                         f"lipverify.read_vnnlib(path)[0]); got {type(region).__name__}")
    if norm != "l2":
        raise UsageError(f"local bounds over a region are l2 bounds; norm {norm!r} is not "
                         "supported with region")
    if not isinstance(lower_bound, (bool, np.bool_)):
        raise UsageError("with region, lower_bound is True or False (the sampled local lower "
                         "bound); a known global lower bound does not apply to a region")
    _check_time_limit(options.get("time_limit"))
    load_opts, options = split_options(options)
    _check_solver(options.get("solver", "auto"))
    _check_device(options.get("device", "auto"))
    network = load(model, **load_opts).select_outputs(output_rows)
    result = local_bound(network, region, method, lower=bool(lower_bound), **options)
    return replace(result, output_rows=tuple(output_rows) if output_rows is not None else None)


#: ``auto``'s stages end this share of the limit early: their last step (a certificate, a
#: solver evaluation) is estimated, not known (resnet_2b, 300 s: 2.6 s over without it).
AUTO_MARGIN = 0.02

#: The sampled lower bound beside a bound takes this share of its time limit (inside the
#: limit with ``auto``, after the method otherwise: the whole call stays within limit + 10%),
#: and at most LOWER_MAX_SECONDS without one.
LOWER_SHARE = 0.1
LOWER_MAX_SECONDS = 30.0


def lower_time_limit(limit: float | None) -> float:
    """Seconds for the sampled lower bound run beside a method with time limit ``limit``.

    >>> lower_time_limit(None), lower_time_limit(60.0), lower_time_limit(1.0)
    (30.0, 6.0, 0.5)
    """
    if limit is None:
        return LOWER_MAX_SECONDS
    return min(max(LOWER_SHARE * limit, 0.5), LOWER_MAX_SECONDS)


def _real(value) -> bool:
    """A real number (int, float, numpy scalar), never a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_output_rows(rows) -> list[int] | None:
    """``output_rows`` as a list of ints: None, or a non-empty sequence (list, tuple, range,
    1-D integer array) of integers. A string, a bare number, a bool, a float or a set is a
    ``UsageError`` naming the argument (the range is checked against the network later).

    >>> check_output_rows((0, 3))
    [0, 3]
    """
    if rows is None:
        return None
    hint = "a list of output row indices, e.g. [0, 3], or None"
    if isinstance(rows, np.ndarray):
        if rows.ndim != 1:
            raise UsageError(f"output_rows must be {hint}; got an array of shape {rows.shape}")
        rows = rows.tolist()
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise UsageError(f"output_rows must be {hint}; got {type(rows).__name__} {rows!r}")
    bad = [r for r in rows if not isinstance(r, numbers.Integral) or isinstance(r, np.bool_ | bool)]
    if bad:
        raise UsageError(f"output_rows must be {hint}; {bad[0]!r} ({type(bad[0]).__name__}) is "
                         "not an integer")
    if not rows:
        raise UsageError(f"output_rows is empty; pass {hint}")
    return [int(r) for r in rows]


def _check_lower_bound(value) -> None:
    if isinstance(value, (bool, np.bool_)):
        return
    if not (_real(value) and math.isfinite(value) and value >= 0):
        raise UsageError(f"lower_bound must be True, False or a finite number >= 0 (a known "
                         f"lower bound); got {value!r}")


def _check_time_limit(value) -> None:
    """``time_limit``: None or a finite positive number of seconds, whichever method runs."""
    if value is not None and not (_real(value) and math.isfinite(value) and value > 0):
        raise UsageError(f"bad value {value!r} for time_limit: expected a positive number "
                         "of seconds (finite) or None")


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


def _check_device(device) -> None:
    """A device that is not one of DEVICES is a usage error, and cuda without a GPU visible
    to torch a solver error (exit 5), before any work: never a silent CPU run."""
    if device != "auto":  # auto is always usable (and torch need not be imported for it)
        from .solvers.lowrank import resolve_device

        resolve_device(device)


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


def _anytime(network: Network, norm: str, options: dict, progress, lower=None):
    """``auto``: :func:`lipverify.methods.anytime.run_stages` with each stage's own options
    checked and passed; returns ``(method, output, notes)``, the stages in the details."""
    from .methods.anytime import run_stages

    used: set[str] = set()

    def run(name: str, opts: dict) -> MethodOutput:
        info = get_method(name)
        mine = {k: v for k, v in opts.items() if k in info.options.names()}
        info.options.from_dict(mine)
        used.update(mine)
        return _run(info, network, norm, mine)

    name, out, stages, notes = run_stages(network, norm, options, run, progress, lower)
    unused = sorted(k for k in set(options) - used if options[k] not in (None, "auto"))
    if unused:
        notes.insert(0, f"options not used by auto's stages: {', '.join(unused)}")
    details = {**out.details, "auto_stages": [s.to_dict() for s in stages]}
    return name, replace(out, details=details), notes


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
    if isinstance(models, (str, bytes)) or not isinstance(models, Iterable):
        raise UsageError(f"models must be a list of models (paths, Networks or modules); got "
                         f"{type(models).__name__} {models!r}")
    if isinstance(methods, (str, bytes)) or not isinstance(methods, Iterable):
        raise UsageError(f"methods must be a list of method names, e.g. ['naive', 'lower']; got "
                         f"{methods!r}")
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
