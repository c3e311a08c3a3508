"""The certificate a :class:`~lipverify.results.BoundResult` holds; ``certified`` derives from it.

``kind`` names an entry of the certificate-kinds registry
(:data:`lipverify.certify.files.CERTIFICATE_KINDS`: multipliers anyone can re-check with
``lipverify check``) or :data:`DIRECT`: a bound proved by the rounding analysis of its own
computation (the naive product of certified norms, a product of certified segments), with
nothing further to re-check. ``body`` is the kind's JSON payload (multipliers, rho, ...).

>>> c = CertificateRecord("lipsdp-l2", True, {"rho": 4.0, "params": [1.0, 2.0]})
>>> CertificateRecord.from_dict(c.to_dict()) == c
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: the kind of a bound certified by its own rounding analysis (no multipliers to re-check)
DIRECT = "direct"


@dataclass(frozen=True)
class CertificateRecord:
    kind: str
    #: the §8 check (or the method's rounding analysis) passed on the exact float64 weights
    ok: bool
    body: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "ok": self.ok, "body": dict(self.body)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CertificateRecord:
        return cls(str(d["kind"]), bool(d["ok"]), dict(d.get("body") or {}))

    @classmethod
    def of(cls, body: dict[str, Any] | None, ok: bool) -> CertificateRecord | None:
        """From a method's certificate payload (``None``: a direct bound when ``ok``)."""
        if body:
            return cls(str(body.get("kind", DIRECT)), ok, dict(body))
        return cls(DIRECT, True) if ok else None
