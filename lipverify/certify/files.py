"""Certificate files: a bound anyone can re-check without trusting our solver.

``save_certificate`` writes the multipliers, ``rho``, the model's sha256 and the method;
``check_certificate`` re-runs the §8 test from scratch on the model's exact weights (no
solver, no optimisation): it accepts only if ``M(rho, T)`` is provably positive definite.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import LipverifyError, UsageError, check_unique
from ..ir.network import Network
from ..numerics import round_up
from ..results import BoundResult

FORMAT = "lipverify-certificate/1"


@dataclass(frozen=True)
class CheckResult:
    valid: bool
    bound: float
    message: str


def certificate_dict(result: BoundResult) -> dict:
    record = result.certificate
    cert = record.body if record is not None and record.kind in CERTIFICATE_KINDS else None
    if not cert and "lmi_bound" in result.details:  # l_inf: the naive product was tighter
        raise UsageError(
            f"{result.method} reported the naive product (tighter than its l_inf LMI, "
            f"{result.details['lmi_bound']:.6g}), which needs no certificate file: "
            "`lipverify bound --method naive --norm linf` reproduces it"
        )
    if not cert or "params" not in cert and "rows" not in cert:
        raise UsageError(
            f"method {result.method} produces no certificate file; use an SDP-family method "
            "(lipsdp-neuron, lipsdp-layer, ldlt, ldlt-fast)"
        )
    return {
        "format": FORMAT,
        "model_sha256": result.sha256,
        "model": result.model,
        "method": result.method,
        "norm": result.norm,
        "output_rows": None if result.output_rows is None else list(result.output_rows),
        "bound": result.bound,
        "certificate": cert,
        "lipverify_version": result.version,
    }


def save_certificate(result: BoundResult, path: str | Path) -> None:
    """Write ``result``'s certificate to ``path`` as JSON, all or nothing: a temporary file
    beside it, renamed into place. A missing folder or an unwritable path is a
    :class:`UsageError` naming it; no partial file is ever left behind."""
    import os
    from contextlib import suppress

    from ..errors import NumericalError

    try:
        text = json.dumps(certificate_dict(result), allow_nan=False)
    except ValueError:
        raise NumericalError(f"{path}: the certificate of {result.method} holds NaN or Inf "
                             "values; not written") from None
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a directory; give a file name for the certificate")
    if not path.parent.is_dir():
        raise UsageError(f"{path}: cannot write the certificate: the folder {path.parent} "
                         "does not exist")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "x") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        with suppress(OSError):
            tmp.unlink()
        raise UsageError(f"{path}: cannot write the certificate ({exc.strerror or exc})") \
            from None


#: certificate kind -> checker(network, body) -> CheckResult; ``lipverify check`` dispatches
#: here. A new kind is one checker and one entry (register_certificate_kind).
CERTIFICATE_KINDS: dict[str, Callable[[Network, dict], CheckResult]] = {}


def register_certificate_kind(kind: str):
    def deco(fn):
        check_unique("certificate kinds", kind, CERTIFICATE_KINDS.get(kind), fn)
        CERTIFICATE_KINDS[kind] = fn
        return fn

    return deco


def _check_lmi(net: Network, body: dict, dag: bool) -> CheckResult:
    """§8 on the LMI of the chain or (monolithic) DAG, at the stored rho and multipliers."""
    from ..lmi.chain import ChainLMI
    from ..lmi.dag import DagLMI, verify_dag
    from .gate import verify_chain

    per_neuron = body.get("multipliers", "neuron")
    lmi = (DagLMI if dag else ChainLMI).from_network(net, per_neuron=per_neuron)
    rho = float(body["rho"])
    if not (math.isfinite(rho) and rho >= 0):
        return CheckResult(False, math.inf, "invalid rho")
    verify = verify_dag if dag else verify_chain
    if verify(lmi, np.asarray(body["params"], dtype=np.float64), rho):
        bound = round_up(math.sqrt(rho))
        return CheckResult(True, bound, f"valid: L2 <= {bound:.10g}")
    return CheckResult(
        False,
        math.inf,
        "rejected: M(rho, T) is not provably positive "
        "definite (or the multipliers are outside their set)",
    )


@register_certificate_kind("lipsdp-l2")
def check_lipsdp_l2(net: Network, body: dict) -> CheckResult:
    """A chain's LipSDP multipliers and rho (§1-§3, §8)."""
    return _check_lmi(net, body, dag=False)


@register_certificate_kind("lipsdp-dag")
def check_lipsdp_dag(net: Network, body: dict) -> CheckResult:
    """A residual network's multipliers on the monolithic LMI (§5a, §8)."""
    return _check_lmi(net, body, dag=True)


@register_certificate_kind("lipsdp-wide")
def check_lipsdp_wide(net: Network, body: dict) -> CheckResult:
    """One hidden layer: the reduced LipSDP matrix K(rho, t) of lipsdp-wide (§1.2, §8)."""
    from ..methods.wide import WideForm

    form = WideForm.from_network(net, body.get("multipliers", "neuron"))
    rho = float(body["rho"])
    s = np.asarray(body["params"], dtype=np.float64)
    if s.shape != (form.n_groups,):
        return CheckResult(False, math.inf, f"expected {form.n_groups} multipliers, got "
                                            f"{s.size}")
    if form.verify(s, rho):
        bound = round_up(math.sqrt(rho))
        return CheckResult(True, bound, f"valid: L2 <= {bound:.10g}")
    return CheckResult(False, math.inf, "rejected: the reduced matrix K(rho, t) is not "
                                        "provably positive definite")


@register_certificate_kind("lipsdp-spectral")
def check_lipsdp_spectral(net: Network, body: dict) -> CheckResult:
    """A conv chain's channel multipliers on the per-frequency LMI (§7 [derived], §8)."""
    from ..lmi.spectral import SpectralLMI
    from .spectral import check

    lmi = SpectralLMI.from_network(net)
    params = np.asarray(body["params"], dtype=np.float64)
    rho = float(body["rho"])
    if params.shape != (lmi.n_params,):
        return CheckResult(False, math.inf, f"expected {lmi.n_params} channel multipliers, "
                                            f"got {params.size}")
    if check(lmi, params, rho):
        bound = round_up(math.sqrt(rho))
        return CheckResult(True, bound, f"valid: L2 <= {bound:.10g}")
    return CheckResult(False, math.inf, "rejected: the per-frequency LMI is not provably "
                                        "positive semidefinite (or a multiplier is negative)")


@register_certificate_kind("lipsdp-linf")
def check_lipsdp_linf(net: Network, body: dict) -> CheckResult:
    """One bordered l_inf LMI per output row (§1.4, §8); the bound is the largest row's."""
    from ..lmi.chain import ChainLMI
    from ..lmi.linf import verify_linf

    per_neuron = body.get("multipliers", "neuron")
    worst = 0.0
    if len(body["rows"]) != net.output_dim:
        return CheckResult(False, math.inf, "one certificate per output row is required")
    for j, row in enumerate(body["rows"]):
        lmi = ChainLMI.from_network(net.select_outputs([j]), per_neuron=per_neuron)
        r = float(row["rho"])
        if not verify_linf(lmi, np.asarray(row["params"], dtype=np.float64), r):
            return CheckResult(False, math.inf, f"rejected at output row {j}")
        worst = max(worst, r)
    return CheckResult(True, worst, f"valid: Linf <= {worst:.10g}")


#: The largest certificate file read (bytes); a larger one is refused before parsing.
MAX_CERTIFICATE_FILE_BYTES = 256 * 2**20
#: The deepest nesting of JSON arrays and objects a certificate may hold (a real one: 4).
MAX_CERTIFICATE_DEPTH = 16
#: The most multipliers in one ``params`` list, and the most ``rows`` of an l_inf certificate.
MAX_CERTIFICATE_PARAMS = 20_000_000
MAX_CERTIFICATE_ROWS = 1_000_000
#: Multiplier structures a checker accepts (``multipliers``: see ChainLMI.from_network).
MULTIPLIER_KINDS = ("neuron", "layer", "channel")


def _brief(value) -> str:
    """A value for a one-line message: its type, and a short repr for scalars."""
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _depth(obj) -> int:
    """Nesting depth of JSON arrays and objects, iteratively (no recursion to exhaust)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > MAX_CERTIFICATE_DEPTH:
                return deepest
            items = node.values() if isinstance(node, dict) else node
            stack.extend((v, depth + 1) for v in items if isinstance(v, (dict, list)))
    return deepest


def _check_rho_params(body: dict, where: str) -> str | None:
    rho = body.get("rho")
    if not (_is_number(rho) and rho >= 0):
        what = "missing" if "rho" not in body else f"got {_brief(rho)}"
        return f"{where}rho: expected a finite number >= 0, {what}"
    params = body.get("params")
    if not isinstance(params, list):
        what = "missing" if "params" not in body else f"got {_brief(params)}"
        return f"{where}params: expected a list of finite numbers, {what}"
    if len(params) > MAX_CERTIFICATE_PARAMS:
        return f"{where}params: {len(params)} values, over the limit of {MAX_CERTIFICATE_PARAMS}"
    bad = next((i for i, v in enumerate(params) if not _is_number(v)), None)
    if bad is not None:
        return f"{where}params[{bad}]: expected a finite number, got {_brief(params[bad])}"
    return None


def certificate_problem(cert) -> str | None:
    """What makes ``cert`` (a parsed certificate file) unusable, field by field; None: its
    shape is right (whether its numbers certify anything is the checker's business)."""
    if not isinstance(cert, dict):
        return f"the top level is {_brief(cert)}, not a JSON object"
    depth = _depth(cert)
    if depth > MAX_CERTIFICATE_DEPTH:
        return f"nested more than {MAX_CERTIFICATE_DEPTH} levels deep"
    fmt = cert.get("format")
    if fmt != FORMAT:
        return f"not a {FORMAT} file (format: " + (
            "missing)" if "format" not in cert else f"{_brief(fmt)})")
    sha = cert.get("model_sha256")
    if sha is not None and not isinstance(sha, str):
        return f"model_sha256: expected a hex string or null, got {_brief(sha)}"
    rows = cert.get("output_rows")
    if rows is not None and not (
        isinstance(rows, list) and rows
        and all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in rows)
    ):
        return f"output_rows: expected null or a list of row indices, got {_brief(rows)}"
    body = cert.get("certificate")
    if not isinstance(body, dict):
        what = "missing" if "certificate" not in cert else f"got {_brief(body)}"
        return f"certificate: expected a JSON object, {what}"
    kind = body.get("kind")
    if not isinstance(kind, str):
        what = "missing" if "kind" not in body else f"got {_brief(kind)}"
        return f"certificate.kind: expected a string, {what}"
    mult = body.get("multipliers", "neuron")
    if not (isinstance(mult, bool) or mult in MULTIPLIER_KINDS):
        return (f"certificate.multipliers: expected one of {', '.join(MULTIPLIER_KINDS)}, "
                f"got {_brief(mult)}")
    if "rows" in body or kind == "lipsdp-linf":
        rows = body.get("rows")
        if not isinstance(rows, list) or not rows:
            what = "missing" if "rows" not in body else f"got {_brief(rows)}"
            return f"certificate.rows: expected a non-empty list of objects, {what}"
        if len(rows) > MAX_CERTIFICATE_ROWS:
            return f"certificate.rows: {len(rows)} rows, over the limit of {MAX_CERTIFICATE_ROWS}"
        for j, row in enumerate(rows):
            where = f"certificate.rows[{j}]"
            if not isinstance(row, dict):
                return f"{where}: expected a JSON object with rho and params, got {_brief(row)}"
            problem = _check_rho_params(row, where + ".")
            if problem:
                return problem
        return None
    return _check_rho_params(body, "certificate.")


def read_certificate(path: str | Path) -> dict:
    """A certificate file, parsed and checked against the schema of
    :func:`certificate_problem`. A file that is not a regular file (a FIFO, a device), is
    over :data:`MAX_CERTIFICATE_FILE_BYTES`, is not UTF-8 JSON or has the wrong shape is a
    :class:`~lipverify.errors.ModelLoadError` naming the file and the field."""
    from ..errors import ModelLoadError
    from ..runtime.files import read_regular_text, shown

    text = read_regular_text(path, what="certificate file", max_bytes=MAX_CERTIFICATE_FILE_BYTES)
    try:
        cert = json.loads(text)
    except RecursionError:
        raise ModelLoadError(f"{shown(path)}: malformed certificate: nested too deeply "
                             f"(more than {MAX_CERTIFICATE_DEPTH} levels)") from None
    except ValueError as exc:  # JSONDecodeError, or an integer of too many digits
        why = " ".join(str(exc).split())[:160]
        raise ModelLoadError(f"{shown(path)}: not a JSON certificate ({why})") from None
    problem = certificate_problem(cert)
    if problem:
        raise ModelLoadError(f"{shown(path)}: malformed certificate: {problem}")
    return cert


def check_certificate(network: Network, cert: dict | str | Path) -> CheckResult:
    """Re-verify a certificate for ``network``. Never raises on a bad certificate: says why.

    ``cert`` is a parsed certificate (a dict) or the path of a certificate file; anything
    else, an unreadable file, or one of the wrong shape is ``valid=False`` with a one-line
    message naming the file (for a path) and the offending field.

    >>> check_certificate(None, 42).message
    'certificate: expected a dict or a path to a certificate file, got int'
    """
    import os

    from ..runtime.files import shown

    prefix = ""
    if isinstance(cert, (str, bytes, os.PathLike)):
        prefix = f"{shown(cert)}: "
        try:
            cert = read_certificate(cert)
        except LipverifyError as exc:
            return CheckResult(False, math.inf, str(exc))
        except (OSError, ValueError, MemoryError) as exc:
            return CheckResult(False, math.inf, f"{prefix}unreadable certificate: {exc}")
    elif not isinstance(cert, dict):
        return CheckResult(False, math.inf, "certificate: expected a dict or a path to a "
                           f"certificate file, got {type(cert).__name__}")
    problem = certificate_problem(cert)
    if problem:
        return CheckResult(False, math.inf, f"{prefix}malformed certificate: {problem}")
    try:
        sha = network.provenance.sha256
        if cert.get("model_sha256") and sha and cert["model_sha256"] != sha:
            return CheckResult(
                False,
                math.inf,
                f"{prefix}the certificate is for a different model file "
                f"(sha256 {cert['model_sha256'][:12]}... != {sha[:12]}...)",
            )
        net = network.select_outputs(cert.get("output_rows"))
        body = cert["certificate"]
        checker = CERTIFICATE_KINDS.get(body["kind"])
        if checker is None:
            return CheckResult(False, math.inf,
                               f"{prefix}unknown certificate kind {_brief(body['kind'])}; "
                               f"known: {', '.join(CERTIFICATE_KINDS)}")
        result = checker(net, body)
    except LipverifyError as exc:
        first = (str(exc).splitlines() or [""])[0]
        return CheckResult(False, math.inf, f"{prefix}malformed certificate: {first}")
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, ArithmeticError,
            MemoryError, np.linalg.LinAlgError) as exc:
        first = (str(exc).splitlines() or [""])[0][:200]
        return CheckResult(False, math.inf,
                           f"{prefix}malformed certificate: {type(exc).__name__}: {first}")
    if not result.valid and prefix:
        return CheckResult(False, result.bound, prefix + result.message)
    return result
