"""The Python API: :func:`bound` and :func:`compare` (``lipverify.load`` lives in importers)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version

from .errors import NotApplicableError, UsageError
from .importers import load
from .methods import get_method
from .network import Network
from .results import BoundResult

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
    from contextlib import nullcontext

    from threadpoolctl import threadpool_limits

    order = network.input_dim + sum(n.width for n in network.nodes)
    return threadpool_limits(limits=1, user_api="blas") if order <= SMALL_NETWORK \
        else nullcontext()


def _auto(network: Network, norm: str, options: dict) -> str:
    """Tightest certified method that fits the network and this machine."""
    from .sdp.chain import MAX_CERTIFICATE_BYTES, ChainLMI, dense_certificate_bytes
    from .sdp.dag import DagLMI

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
    >>> from lipverify.activations import SlopeRestricted
    >>> net = lipverify.Network.sequential([np.eye(2), 3 * np.eye(2)],
    ...                                    [SlopeRestricted.named("relu")])
    >>> r = lipverify.bound(net, method="naive")
    >>> r.certified, round(r.bound, 9)
    (True, 3.0)
    """
    if norm not in NORMS:
        raise UsageError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    network = load(model, **options)
    network = network.select_outputs(list(output_rows) if output_rows is not None else None)
    name = method if method != "auto" else _auto(network, norm, options)
    info = get_method(name)
    if norm not in info.norms:
        raise NotApplicableError(
            f"method {name} does not support norm {norm} (supports: {', '.join(info.norms)})"
        )
    start = time.perf_counter()
    with _blas_threads(network):
        out = info.fn(network, norm=norm, **options)
    elapsed = time.perf_counter() - start
    lower = None
    warnings = list(out.warnings)
    status = out.status
    certified = out.certified and info.kind == "upper"
    if isinstance(lower_bound, (int, float)) and not isinstance(lower_bound, bool):
        lower = float(lower_bound)
    elif lower_bound and info.kind != "lower":
        with _blas_threads(network):
            lower = get_method("lower").fn(network, norm=norm).bound
    if lower is not None and info.kind == "upper" and out.bound < lower * (1 - 1e-9):
        certified = False
        status = "unsound"
        warnings.append(f"bound {out.bound:.8g} is below the lower bound {lower:.8g}: a bug")
    details = dict(out.details)
    if method == "auto":
        details["auto_choice"] = name
    return BoundResult(
        model=network.name,
        method=name,
        norm=norm,
        bound=float(out.bound),
        certified=bool(certified and math.isfinite(out.bound)),
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
    for model in models:
        network = load(model, **options)
        for name in methods:
            results.append(bound(network, method=name, norm=norm, **options))
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is optional
        return results
    return pd.DataFrame([r.to_dict() for r in results])
