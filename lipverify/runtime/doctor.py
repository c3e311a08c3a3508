"""Environment report for ``lipverify doctor``: packages, solvers, licences."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

PACKAGES = (
    "numpy",
    "scipy",
    "cvxpy",
    "clarabel",
    "scs",
    "onnx",
    "onnxruntime",
    "torch",
    "click",
    "rich",
    "pandas",
    "mosek",
)


@dataclass(frozen=True)
class Check:
    component: str
    ok: bool
    detail: str


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def mosek_status() -> Check:
    """Installed and licensed? Probed without solving anything."""
    if _version("mosek") is None:
        return Check("MOSEK", False, "not installed (optional: pip install mosek, needs a licence)")
    try:
        import mosek

        with mosek.Env() as env:
            env.checkoutlicense(mosek.feature.pts)
    except Exception as exc:  # mosek raises its own Error type
        return Check("MOSEK", False, f"installed but no usable licence: {str(exc)[:120]}")
    return Check("MOSEK", True, "installed and licensed")


def report() -> list[Check]:
    checks = [
        Check(
            "python",
            sys.version_info >= (3, 11),
            f"{platform.python_version()} on {platform.machine()}",
        )
    ]
    for pkg in PACKAGES:
        if pkg == "mosek":
            continue
        v = _version(pkg)
        optional = pkg in ("onnxruntime", "pandas")
        checks.append(
            Check(
                pkg,
                v is not None or optional,
                v or ("not installed (optional)" if optional else "MISSING"),
            )
        )
    try:
        import cvxpy

        solvers = ", ".join(sorted(cvxpy.installed_solvers()))
        checks.append(Check("cvxpy solvers", True, solvers))
    except Exception as exc:  # pragma: no cover - broken install
        checks.append(Check("cvxpy solvers", False, str(exc)))
    checks.append(mosek_status())
    try:
        import torch

        dev = "cuda available" if torch.cuda.is_available() else "CPU only"
        checks.append(Check("torch device", True, dev))
    except ImportError:  # pragma: no cover
        pass
    return checks
