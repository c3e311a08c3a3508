"""Domain exceptions. Every message says what went wrong and what to do next.

Each class carries the CLI exit code it maps to, so the command line and the
library agree on one taxonomy (STYLE.md practice 6).
"""

from __future__ import annotations

from dataclasses import dataclass


class LipverifyError(Exception):
    """Base class of every error lipverify raises on purpose."""

    exit_code = 1


class UsageError(LipverifyError):
    """Bad arguments or options (unknown method, bad norm, bad row list...)."""

    exit_code = 2


class ModelLoadError(LipverifyError):
    """The model file is missing, unreadable, corrupt, or holds invalid weights."""

    exit_code = 3


class UntrustedPickleError(ModelLoadError):
    """Loading the file would unpickle arbitrary objects without the trust flag."""


class AmbiguousLayoutError(ModelLoadError):
    """Weight storage orientation cannot be inferred; pass ``layout=``."""


@dataclass(frozen=True)
class Problem:
    """One offending node of a model graph."""

    name: str
    op_type: str
    why: str

    def __str__(self) -> str:
        return f"{self.name} ({self.op_type}): {self.why}"


class UnsupportedModelError(LipverifyError):
    """The model contains operations we cannot bound; lists all of them at once."""

    exit_code = 4

    def __init__(self, problems: list[Problem] | tuple[Problem, ...], source: str = "model"):
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"{source} cannot be bounded: {len(self.problems)} unsupported or non-Lipschitz "
            f"node(s):\n{lines}\nRun `lipverify ops` for the supported operations."
        )


class NotApplicableError(LipverifyError):
    """The chosen method does not handle this network or norm."""

    exit_code = 4


class SolverError(LipverifyError):
    """A solver is missing, unlicensed, or failed."""

    exit_code = 5


class NumericalError(SolverError):
    """A numerical kernel failed (every eigensolver driver, a NaN or Inf mid-solve).

    ``best`` is the best certified result found before the failure, when there is one
    (a :class:`~lipverify.results.BoundResult` once it leaves :func:`lipverify.bound`).
    """

    def __init__(self, message: str, best=None):
        super().__init__(message)
        self.best = best


def check_unique(registry: str, key, old, new) -> None:
    """Registries refuse a second, different entry under one key (re-importing the module
    that registered it is fine: same module and name)."""
    def ident(fn):
        fn = getattr(fn, "fn", fn)
        return getattr(fn, "__module__", None), getattr(fn, "__qualname__", repr(fn))

    if old is not None and ident(old) != ident(new):
        raise LipverifyError(f"{registry}: {key!r} is already registered by "
                             f"{'.'.join(map(str, ident(old)))}")
