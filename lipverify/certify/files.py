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


def check_certificate(network: Network, cert: dict | str | Path) -> CheckResult:
    """Re-verify a certificate for ``network``. Never raises on a bad certificate: says why."""
    if not isinstance(cert, dict):
        try:
            cert = json.loads(Path(cert).read_text())
        except (OSError, ValueError) as exc:
            return CheckResult(False, math.inf, f"unreadable certificate: {exc}")
    try:
        if cert.get("format") != FORMAT:
            return CheckResult(False, math.inf, f"not a {FORMAT} file")
        sha = network.provenance.sha256
        if cert.get("model_sha256") and sha and cert["model_sha256"] != sha:
            return CheckResult(
                False,
                math.inf,
                "the certificate is for a different model file "
                f"(sha256 {cert['model_sha256'][:12]}... != {sha[:12]}...)",
            )
        net = network.select_outputs(cert.get("output_rows"))
        body = cert["certificate"]
        checker = CERTIFICATE_KINDS.get(body["kind"])
        if checker is None:
            return CheckResult(False, math.inf, f"unknown certificate kind {body['kind']!r}; "
                               f"known: {', '.join(CERTIFICATE_KINDS)}")
        return checker(net, body)
    except (KeyError, TypeError, ValueError, LipverifyError) as exc:
        return CheckResult(False, math.inf, f"malformed certificate: {exc}")
