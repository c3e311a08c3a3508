"""Registry of bound methods: name -> function with a fixed contract.

A method is ``fn(network, *, norm, **options) -> MethodOutput``. Register it
with :func:`register_method`; ``lipverify methods`` lists the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UsageError, check_unique
from ..options import NoOptions, Options
from ..results import MethodOutput

MethodFn = Callable[..., MethodOutput]


@dataclass(frozen=True)
class MethodInfo:
    name: str
    fn: MethodFn
    norms: tuple[str, ...]
    #: "upper" (a certified bound), "estimate" (neither bound nor lower bound), "lower".
    kind: str
    summary: str
    #: the frozen options record the method takes (:mod:`lipverify.options`)
    options: type[Options] = NoOptions


METHODS: dict[str, MethodInfo] = {}


def register_method(name: str, *, norms=("l2",), kind="upper", summary="",
                    options: type[Options] = NoOptions):
    """Register ``fn(network, *, norm, **options)``; ``options`` declares what it takes."""

    def deco(fn: MethodFn) -> MethodFn:
        check_unique("methods", name, METHODS.get(name), fn)
        METHODS[name] = MethodInfo(name, fn, tuple(norms), kind, summary, options)
        return fn

    return deco


def get_method(name: str) -> MethodInfo:
    _load_builtin()
    if name not in METHODS:
        raise UsageError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def list_methods() -> list[MethodInfo]:
    _load_builtin()
    return list(METHODS.values())


def method_option_names() -> tuple[str, ...]:
    """Every option some registered method takes (for typo detection across methods)."""
    return tuple(dict.fromkeys(n for m in list_methods() for n in m.options.names()))


def _load_builtin() -> None:
    # imported for their registration side effects
    from . import baselines, gershgorin_lmi, lipsdp, lower, spectral, split, wide  # noqa: F401
